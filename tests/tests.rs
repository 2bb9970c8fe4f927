//! End-to-end tests: the real `breadboard` binary, real sockets, real clients.

mod auth;
mod bench;
mod broker;
mod circuit;
mod clients;
mod cluster;
mod cluster_view;
mod common;
mod dashboard;
mod lan;
mod nats_cluster;
mod peer;
mod tls;
mod tools;
