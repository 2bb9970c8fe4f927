//! The broker's behaviour over real sockets: `broker::run` in this process on a loopback port
//! chosen by the OS ([`harness::Broker`]), raw WebSocket and HTTP clients built from
//! `serde_json` values. What is about the `breadboard` binary itself (flags, signals, the
//! process) is tested in the root package's `tests/`.
//!
//! Every receive is bounded by [`harness::WAIT`]. That a frame was *not* delivered is shown by
//! order, not by waiting: the broker answers a client in the order it queued frames for it, and
//! a message is queued to every subscriber before its publisher's `ok`. So once a publisher has
//! its `ok`, a subscriber whose next frame is the `pong` of a `ping` sent after that has been
//! sent nothing else (see [`harness::assert_quiet`]).

mod auth;
mod bad_input;
mod cluster;
mod harness;
mod http;
mod limits;
mod presence;
mod routing;
mod slow_consumers;
