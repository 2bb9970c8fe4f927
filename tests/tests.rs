//! End-to-end tests: the real `breadboard` binary, real sockets, real clients.

mod bench;
mod broker;
mod clients;
mod common;
mod dashboard;
