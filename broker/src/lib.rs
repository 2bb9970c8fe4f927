//! The breadboard broker: routes topic-addressed WebSocket frames between clients.
//!
//! Parts:
//! - [`listener`]: the accept loop; tells WebSocket upgrades from plain HTTP on one port, by the
//!   request [`head`].
//! - `session`: one task per client, reading its frames (decoded with `proto`) and acting on
//!   them; its `writer` drains the client's outbox into the socket.
//! - [`router`]: the subscription index ([`trie`]), the [`retained`] values, names online
//!   (presence).
//! - [`outbox`]: each client's bounded outgoing queue ([`Outbox`](outbox::Outbox)), its byte
//!   budget and encoding, the frames in it, and the hand-over to the writer.
//! - [`store`]: retained values and presence on disk (redb, group commit), so that a
//!   restarted or crashed broker comes back with them.
//! - `http`: the dashboard, `/metrics`, `/healthz`.
//! - [`metrics`]: the counters behind `/metrics` and `$SYS/broker/stats`.
//! - `read_ahead`: a socket reader whose large buffer exists only while the connection is busy,
//!   so that idle connections stay small.
//!
//! ```text
//!  TcpListener ─► listener ─┬─ HTTP GET ─► http (dashboard, /metrics, /healthz)
//!                           └─ WebSocket ─► session ─► Router ─► Outbox of each subscriber
//!                                                        │        └─► its writer ─► socket
//!                                                        └─► store (retained, presence)
//! ```
//!
//! Start one with [`run`] (or [`Broker::open`], then [`Broker::serve`], to have the data
//! directory opened before a port is bound); the caller binds the listener and owns the
//! shutdown token.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod head;
mod http;
pub mod listener;
pub mod metrics;
pub mod outbox;
mod read_ahead;
pub mod retained;
pub mod router;
mod session;
pub mod store;
pub mod tls;
pub mod trie;
mod writer;

pub use config::Config;
pub use listener::{run, Broker};

/// What can stop a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The data directory cannot be used (locked by another broker, unreadable, corrupt).
    #[error("data store: {0}")]
    Store(#[from] store::StoreError),
    /// The auth file cannot be used.
    #[error(transparent)]
    Auth(#[from] auth::AuthFileError),
    /// The cluster cannot be joined (its options are wrong; NATS being down is not an error).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// The broker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
