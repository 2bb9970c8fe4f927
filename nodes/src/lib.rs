//! breadboard's nodes: the API to write one, the runtime that runs one, and the built-in kinds.
//! No command-line parsing here: the CLI turns flags into the plain option structs below.
//!
//! Parts:
//! - [`client`]: an async WebSocket client of the broker ([`Client`]): hello, subscribe,
//!   publish awaiting the broker's `ok`, delivered [`Messages`], ping, and NATS-style
//!   request/reply over one wildcard inbox, over `ws://` or `wss://`, with a token when the
//!   broker asks for one. The CLI tools use it too. Inside: the handle (`client/mod.rs`), the
//!   task owning the socket (`connection.rs`), the one place frames are encoded and decoded
//!   (`codec.rs`), the request/reply multiplexer (`mux.rs`), the receivers (`messages.rs`), the
//!   topic conversions (`into_topic.rs`), the TCP or TLS stream under the WebSocket
//!   ([`client::stream`]) and whom TLS trusts ([`client::tls`]: public CAs, a CA file, or a
//!   pinned certificate fingerprint).
//! - [`node`]: the [`Node`] trait, Arduino-style (`setup` once, `on_message` per message,
//!   `on_timer` per period), and the [`Context`] its hooks act through.
//! - [`runtime`]: runs a node against a broker ([`runtime::run`], [`runtime::spawn`]):
//!   connects speaking MessagePack, says `hello`, reconnects with capped exponential backoff,
//!   restores subscriptions; the broker's address comes from a replaceable
//!   [`runtime::BrokerSource`]: a fixed URL, or the brokers the `discovery` crate finds (whose
//!   advertised certificate fingerprint is pinned unless the node was told whom to trust).
//! - [`kinds`]: the built-in kinds (clock, pin, buzzer), each with its plain options struct.
//! - [`backoff`]: the reconnection delays.
//! - `error`: [`Error`], what can go wrong, and [`Result`].
//!
//! ```text
//!  your Node ──hooks──► Context ──► Client ══ WebSocket (MessagePack) ══► broker
//!      ▲                                │
//!      └──── runtime: messages, timer ◄─┘   (reconnects, re-subscribes, never re-runs setup)
//! ```
//!
//! Data shapes of the built-in circuit (all plain JSON values):
//! `clock/tick` carries the tick number (`0`), a pin replies with its bits (`[1, 0, 1]`),
//! `pin/<name>/state` holds the level (`0` or `1`, retained), and `buzzer/<name>/buzz` carries
//! the name of the pin that went high (`"pin-1"`).

pub mod backoff;
pub mod client;
mod error;
pub mod kinds;
pub mod node;
pub mod peer;
pub mod runtime;

pub use client::{
    BrokerUrl, Client, ConnectOptions, IntoTopicFilter, IntoTopicName, Messages, Replies, TlsTrust,
};
pub use error::{Error, Result};
pub use node::{AnyNode, BoxError, Context, HookResult, Node, Output};
pub use proto::{Encoding, ErrorCode, TopicFilter, TopicName};

/// A delivered message, as a node or a client receives it: `topic`, `data` (a JSON value),
/// `from` (the publisher's name), `reply` (set for a request), `retained`.
pub type Message = proto::Message<'static>;

/// The broker address a node uses when none is given.
pub const DEFAULT_BROKER: &str = "ws://127.0.0.1:8765";
