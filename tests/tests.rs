//! End-to-end tests: the real `breadboard` binary, real sockets, real clients.

mod broker;
mod common;
