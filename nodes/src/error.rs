//! The one error type of this crate.

use proto::{ErrorCode, TopicError};

use crate::node::BoxError;

/// Everything that can go wrong talking to a broker or running a node.
///
/// Expected conditions are variants of their own ([`Error::TimedOut`], [`Error::NoResponders`],
/// [`Error::Closed`], [`Error::Broker`]) so that callers can match on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker address is not a `ws://` URL.
    #[error("invalid broker URL {url:?}: {reason}")]
    BadUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection or the WebSocket handshake failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The broker address.
        url: String,
        /// The WebSocket library's reason.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// Nothing came back in time: the broker's `ok`, a reply to a request, or the handshake.
    #[error("timed out")]
    TimedOut,
    /// The reply window of a request closed without a single reply: nobody answered.
    #[error("no responders: nobody replied within the window")]
    NoResponders,
    /// The connection is closed (or, inside a node, not established at the moment).
    #[error("connection closed")]
    Closed,
    /// The broker refused a frame with an `err`.
    #[error("broker refused: {code}: {message}")]
    Broker {
        /// The stable reason, such as `name_taken`.
        code: ErrorCode,
        /// Details for a human.
        message: String,
    },
    /// A topic name or filter is not valid.
    #[error("{0}")]
    Topic(#[from] TopicError),
    /// The source of broker addresses ended without ever giving one.
    #[error("no broker address to connect to")]
    NoBroker,
    /// A node stopped itself with [`Context::fail`](crate::Context::fail), its `setup` failed,
    /// or its task ended abnormally.
    #[error("node {name} failed: {reason}")]
    Failed {
        /// The node's name.
        name: String,
        /// The reason the node gave, or what failed (`setup`).
        reason: String,
        /// The error behind it, when there is one: what `setup` returned, or why the task
        /// ended. Kept whole so that the chain can be read (`{:#}` with anyhow).
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// The broker's error code, when the broker refused something.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
