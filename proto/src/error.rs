//! What can go wrong with a frame: the codes the broker answers with ([`ErrorCode`], in an
//! `err` frame via [`FrameError`]) and a server frame a client cannot decode ([`DecodeError`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::topic::TopicError;

/// Every reason the broker can refuse a frame. The wire form (`snake_case`) is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not valid JSON / MessagePack, not an object, or a field missing or of the wrong type.
    BadFrame,
    /// An `op` the broker does not know.
    UnknownOp,
    /// A topic name that is not valid (syntax, length, depth).
    BadTopic,
    /// A `+` or `#` in a topic published to.
    WildcardTopic,
    /// A publish to a `$` topic, which belong to the broker.
    ReservedTopic,
    /// A subscription filter that is not valid.
    BadFilter,
    /// A frame larger than the broker's limit.
    TooLarge,
    /// More subscriptions than the broker allows one client.
    TooManySubs,
    /// A `hello` name or kind that is not valid.
    BadName,
    /// A `hello` name already used by a client that is online.
    NameTaken,
    /// A second `hello` on the same connection.
    AlreadyNamed,
    /// A retained `pub` past the broker's limits on retained values (it is still delivered).
    RetainedFull,
    /// A retained `pub` whose value could not be made durable (it was delivered and is held in
    /// memory, but a restart may lose it).
    StoreFailed,
    /// Credentials (a `hello` token) that the broker does not accept; the connection closes
    /// (code 1008).
    AuthFailed,
    /// A `pub`, `sub` or `hello` name outside the client's permissions; the connection stays.
    Forbidden,
}

impl ErrorCode {
    /// Every code, for metrics and documentation.
    pub const ALL: [ErrorCode; 15] = [
        Self::BadFrame,
        Self::UnknownOp,
        Self::BadTopic,
        Self::WildcardTopic,
        Self::ReservedTopic,
        Self::BadFilter,
        Self::TooLarge,
        Self::TooManySubs,
        Self::BadName,
        Self::NameTaken,
        Self::AlreadyNamed,
        Self::RetainedFull,
        Self::StoreFailed,
        Self::AuthFailed,
        Self::Forbidden,
    ];

    /// The wire form, such as `bad_topic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnknownOp => "unknown_op",
            Self::BadTopic => "bad_topic",
            Self::WildcardTopic => "wildcard_topic",
            Self::ReservedTopic => "reserved_topic",
            Self::BadFilter => "bad_filter",
            Self::TooLarge => "too_large",
            Self::TooManySubs => "too_many_subs",
            Self::BadName => "bad_name",
            Self::NameTaken => "name_taken",
            Self::AlreadyNamed => "already_named",
            Self::RetainedFull => "retained_full",
            Self::StoreFailed => "store_failed",
            Self::AuthFailed => "auth_failed",
            Self::Forbidden => "forbidden",
        }
    }

    /// The code for a topic name that failed validation.
    pub fn for_topic(err: &TopicError) -> Self {
        match err {
            TopicError::WildcardInName => Self::WildcardTopic,
            TopicError::Reserved => Self::ReservedTopic,
            _ => Self::BadTopic,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client frame the broker refuses: what goes back in the `err` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The offending frame's `id`, when it could be read.
    pub id: Option<u64>,
    /// Why.
    pub code: ErrorCode,
    /// Details for a human.
    pub message: String,
}

impl FrameError {
    /// A refusal of the frame with `id`.
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

/// A server frame a client could not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a server frame in JSON.
    #[error("invalid JSON frame: {0}")]
    Json(#[from] serde_json::Error),
    /// Not a server frame in MessagePack.
    #[error("invalid MessagePack frame: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
}
