//! The objects that travel over the wire, one per WebSocket message, tagged by `op`.
//!
//! Client to broker ([`ClientFrame`]): `hello`, `sub`, `unsub`, `pub`, `ping`.
//! Broker to client ([`ServerFrame`]): `msg`, `ok`, `pong`, `err`.
//! Any client frame with an `id` is answered with that `id` (`ok`, `pong` or `err`); a frame
//! without one is answered only when it fails.
//!
//! Frames borrow what they can from the bytes they were decoded from (`'a`) and become owned
//! with `into_owned`; a delivered [`Message`] carries its `data` as a [`Value`] (what clients
//! decode) or as [`Data`] (what the broker encodes, passing on a publisher's bytes as they were).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::Data;
use crate::error::{ErrorCode, FrameError};
use crate::topic::{TopicFilter, TopicName};

/// A frame sent by a client to the broker.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientFrame<'a> {
    /// Names the client. Optional; a named client gets a presence entry under `$SYS/nodes/<name>`.
    Hello {
        /// Unique among the clients online; one topic level.
        name: Cow<'a, str>,
        /// What the client is (`pin`, `clock`, `sub`...); free text, one topic level.
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<Cow<'a, str>>,
        /// Credentials, for a client that could not send them with the upgrade request (see
        /// the broker's auth file). Never echoed, never logged.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<Cow<'a, str>>,
        /// Correlates the broker's answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Starts delivering messages whose topic matches `topic` (a filter).
    Sub {
        /// The filter.
        topic: TopicFilter,
        /// Correlates the broker's answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Stops a subscription made with the same filter string.
    Unsub {
        /// The filter, exactly as subscribed.
        topic: TopicFilter,
        /// Correlates the broker's answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Publishes a message.
    Pub(Publish<'a>),
    /// Asks for a `pong`; a liveness check at the application level.
    Ping {
        /// Correlates the broker's answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ClientFrame<'_> {
    /// The `id` the broker answers with, if the frame carries one.
    pub fn id(&self) -> Option<u64> {
        match self {
            Self::Hello { id, .. }
            | Self::Sub { id, .. }
            | Self::Unsub { id, .. }
            | Self::Ping { id } => *id,
            Self::Pub(p) => p.id,
        }
    }

    /// The same frame, owning everything (data held as sent is parsed).
    pub fn into_owned(self) -> ClientFrame<'static> {
        match self {
            Self::Hello {
                name,
                kind,
                token,
                id,
            } => ClientFrame::Hello {
                name: Cow::Owned(name.into_owned()),
                kind: kind.map(|k| Cow::Owned(k.into_owned())),
                token: token.map(|t| Cow::Owned(t.into_owned())),
                id,
            },
            Self::Sub { topic, id } => ClientFrame::Sub { topic, id },
            Self::Unsub { topic, id } => ClientFrame::Unsub { topic, id },
            Self::Pub(p) => ClientFrame::Pub(p.into_owned()),
            Self::Ping { id } => ClientFrame::Ping { id },
        }
    }
}

/// The body of a `pub` frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Publish<'a> {
    /// Where to publish; no wildcards, no `$`.
    pub topic: TopicName<Cow<'a, str>>,
    /// Any JSON value; `null` when absent.
    pub data: Data<'a>,
    /// Keep this as the topic's last value, replayed to later subscribers (`null` clears it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
    /// Where responders should publish their answer (request/reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<TopicName<Cow<'a, str>>>,
    /// Correlates the broker's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

impl<'a> Publish<'a> {
    /// A plain publish of `data` on `topic`: not retained, no reply topic, no `id`.
    pub fn new(topic: impl Into<TopicName<Cow<'a, str>>>, data: impl Into<Data<'a>>) -> Self {
        Self {
            topic: topic.into(),
            data: data.into(),
            retain: false,
            reply: None,
            id: None,
        }
    }

    /// The same publish, owning everything.
    pub fn into_owned(self) -> Publish<'static> {
        Publish {
            topic: self.topic.into_owned(),
            data: self.data.into_owned(),
            retain: self.retain,
            reply: self.reply.map(TopicName::into_owned),
            id: self.id,
        }
    }
}

/// A frame sent by the broker to a client. `D` is how a message's `data` is held: a [`Value`]
/// as clients decode it, or [`Data`] as the broker encodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
#[serde(bound(deserialize = "D: Deserialize<'de> + Default"))]
pub enum ServerFrame<'a, D = Value> {
    /// A message delivered to a subscriber.
    Msg(Message<'a, D>),
    /// The frame with this `id` succeeded.
    Ok {
        /// The `id` of the client frame.
        id: u64,
    },
    /// The answer to a `ping`.
    Pong {
        /// The `id` of the `ping`.
        id: u64,
    },
    /// A client frame failed; the connection stays usable.
    Err {
        /// The `id` of the failed frame, when it had one and it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// A stable, machine-readable reason.
        code: ErrorCode,
        /// A human-readable explanation.
        message: Cow<'a, str>,
    },
}

/// A delivered message. `D` is how its `data` is held (see [`ServerFrame`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de> + Default"))]
pub struct Message<'a, D = Value> {
    /// The topic it was published on.
    pub topic: TopicName<Cow<'a, str>>,
    /// The published value.
    #[serde(default)]
    pub data: D,
    /// The publisher's `hello` name, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Cow<'a, str>>,
    /// Where to answer, for a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<TopicName<Cow<'a, str>>>,
    /// True only when replayed from the retained store at subscribe time.
    #[serde(default)]
    pub retained: bool,
}

impl FrameError {
    /// The `err` frame that tells the client.
    pub fn to_frame(&self) -> ServerFrame<'_> {
        ServerFrame::Err {
            id: self.id,
            code: self.code,
            message: Cow::Borrowed(&self.message),
        }
    }
}
