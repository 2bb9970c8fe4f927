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
    /// The broker address is not a `ws://` or `wss://` URL.
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
    /// The TLS handshake failed: the certificate is not trusted (unknown issuer, a name that
    /// does not match, expired), or the port does not speak TLS.
    #[error("TLS with {url} failed: {source}")]
    Tls {
        /// The broker address.
        url: String,
        /// rustls's reason.
        #[source]
        source: std::io::Error,
    },
    /// The broker showed a certificate other than the pinned one: its key changed, or another
    /// machine answers in its place.
    #[error(
        "the broker at {url} shows certificate sha256:{found}, not the pinned sha256:{expected} \
         (its key changed, or this is not that broker)"
    )]
    FingerprintMismatch {
        /// The broker address.
        url: String,
        /// The pin, 64 hex digits.
        expected: String,
        /// What the broker showed, 64 hex digits.
        found: String,
    },
    /// The address and the trust disagree: a trust of its own (a CA, a fingerprint) with a
    /// plain `ws://` address, which would send everything in clear; or `wss://` with none.
    #[error("{url}: {}", if *.tls { "wss:// needs a TLS trust" } else { "a CA or a fingerprint was given, but this is a ws:// address (no TLS): use wss://" })]
    NotTls {
        /// The broker address.
        url: String,
        /// Whether the address is `wss://`.
        tls: bool,
    },
    /// The CA file cannot be used.
    #[error("CA file {}: {reason}", .path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA certificate cannot be used as a root of trust.
    #[error("bad CA certificate: {0}")]
    BadCa(String),
    /// A certificate fingerprint as given is not one.
    #[error("{text:?} is not a SHA-256 fingerprint: {reason}")]
    BadFingerprint {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token has characters an HTTP header cannot carry.
    #[error("the token cannot be sent: it has characters an HTTP header cannot carry")]
    BadToken,
    /// The broker refused the credentials on the upgrade (HTTP 401): none given, or wrong.
    #[error("the broker at {url} refused the credentials (HTTP 401): give a valid token (--token or BREADBOARD_TOKEN)")]
    Unauthorized {
        /// The broker address.
        url: String,
    },
    /// The broker answered the upgrade with another HTTP status (403 for a refused `Origin`,
    /// 400 for plain HTTP to a TLS port...).
    #[error("the broker at {url} refused the WebSocket upgrade: HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Refused {
        /// The broker address.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body, which says why.
        body: String,
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
