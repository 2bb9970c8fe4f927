//! The objects that travel over the wire, one per WebSocket message, tagged by `op`.
//!
//! Client to broker ([`ClientFrame`]): `hello`, `sub`, `unsub`, `pub`, `ping`.
//! Broker to client ([`ServerFrame`]): `msg`, `ok`, `pong`, `err`.
//! Any client frame with an `id` is answered with that `id` (`ok`, `pong` or `err`); a frame
//! without one is answered only when it fails.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::topic::{TopicError, TopicFilter, TopicName};

/// Longest node name or kind, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// A frame sent by a client to the broker.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientFrame {
    /// Names the client. Optional; a named client gets a presence entry under `$SYS/nodes/<name>`.
    Hello {
        /// Unique among the clients online; one topic level.
        name: String,
        /// What the client is (`pin`, `clock`, `sub`...); free text, one topic level.
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
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
    Pub(Publish),
    /// Asks for a `pong`; a liveness check at the application level.
    Ping {
        /// Correlates the broker's answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// The body of a `pub` frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Publish {
    /// Where to publish; no wildcards, no `$`.
    pub topic: TopicName,
    /// Any JSON value; `null` when absent.
    pub data: Value,
    /// Keep this as the topic's last value, replayed to later subscribers (`null` clears it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
    /// Where responders should publish their answer (request/reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<TopicName>,
    /// Correlates the broker's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// A client frame borrowing from the bytes it was decoded from, as
/// [`decode_client_ref`](crate::decode_client_ref) returns it. The same frame as
/// [`ClientFrame`], except that a JSON `pub` keeps its `data` as the text it arrived as, so the
/// broker can hand it to JSON subscribers without decoding and re-encoding it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrameRef<'a> {
    /// See [`ClientFrame::Hello`].
    Hello {
        /// See [`ClientFrame::Hello`].
        name: String,
        /// See [`ClientFrame::Hello`].
        kind: Option<String>,
        /// See [`ClientFrame::Hello`].
        id: Option<u64>,
    },
    /// See [`ClientFrame::Sub`].
    Sub {
        /// See [`ClientFrame::Sub`].
        topic: TopicFilter,
        /// See [`ClientFrame::Sub`].
        id: Option<u64>,
    },
    /// See [`ClientFrame::Unsub`].
    Unsub {
        /// See [`ClientFrame::Unsub`].
        topic: TopicFilter,
        /// See [`ClientFrame::Unsub`].
        id: Option<u64>,
    },
    /// See [`ClientFrame::Pub`].
    Pub(PublishRef<'a>),
    /// See [`ClientFrame::Ping`].
    Ping {
        /// See [`ClientFrame::Ping`].
        id: Option<u64>,
    },
}

impl ClientFrameRef<'_> {
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

    /// The owned frame, with any raw `data` parsed into a [`Value`].
    pub fn into_owned(self) -> ClientFrame {
        match self {
            Self::Hello { name, kind, id } => ClientFrame::Hello { name, kind, id },
            Self::Sub { topic, id } => ClientFrame::Sub { topic, id },
            Self::Unsub { topic, id } => ClientFrame::Unsub { topic, id },
            Self::Pub(p) => ClientFrame::Pub(Publish {
                topic: p.topic.into_name(),
                data: p.data.into_value(),
                retain: p.retain,
                reply: p.reply.map(TopicName::into_name),
                id: p.id,
            }),
            Self::Ping { id } => ClientFrame::Ping { id },
        }
    }
}

/// The body of a `pub` frame, borrowing its topics and `data` when it can. See [`Publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRef<'a> {
    /// See [`Publish::topic`].
    pub topic: TopicName<Cow<'a, str>>,
    /// See [`Publish::data`].
    pub data: Data<'a>,
    /// See [`Publish::retain`].
    pub retain: bool,
    /// See [`Publish::reply`].
    pub reply: Option<TopicName<Cow<'a, str>>>,
    /// See [`Publish::id`].
    pub id: Option<u64>,
}

/// JSON text, as a publisher sent it, that is known to parse into a [`Value`].
///
/// Only [`decode_client_ref`](crate::decode_client_ref) makes one, from text whose syntax
/// serde_json checked (or, for a string without escapes, the quick reader), after checking that
/// it holds nothing that parsing into a `Value` could refuse (see `codec::passes_as_is`); that
/// is what lets [`RawJson::to_value`] be infallible.
#[derive(Debug, Clone, Copy)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    /// `null`: what a `pub` without `data` publishes.
    pub(crate) const NULL: RawJson<'static> = RawJson("null");

    pub(crate) fn new_unchecked(text: &'a str) -> Self {
        Self(text)
    }

    /// The text, without surrounding whitespace.
    pub fn get(self) -> &'a str {
        self.0
    }

    /// Whether the value is `null`.
    pub fn is_null(self) -> bool {
        self.get() == "null"
    }

    /// The value, parsed.
    pub fn to_value(self) -> Value {
        // Checked at construction: the text parses. Null keeps this free of panics regardless.
        let parsed = serde_json::from_str(self.get());
        debug_assert!(
            parsed.is_ok(),
            "raw JSON that does not parse: {}",
            self.get()
        );
        parsed.unwrap_or(Value::Null)
    }
}

impl PartialEq for RawJson<'_> {
    /// Equal when they hold the same value (not necessarily the same text).
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

/// MessagePack bytes of one value, as a publisher sent them, that are known to convert to a
/// [`Value`] and back without a change that matters (see `scan_msgpack::plain_value`): what
/// lets [`RawMsgPack::to_value`] be infallible, and MessagePack subscribers get the bytes as is.
#[derive(Debug, Clone, Copy)]
pub struct RawMsgPack<'a>(&'a [u8]);

impl<'a> RawMsgPack<'a> {
    /// `nil`: what a `pub` without `data` publishes.
    pub(crate) const NULL: RawMsgPack<'static> = RawMsgPack(&[0xc0]);

    pub(crate) fn new_unchecked(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn get(self) -> &'a [u8] {
        self.0
    }

    /// Whether the value is `nil`.
    pub fn is_null(self) -> bool {
        self.0 == [0xc0]
    }

    /// The value, decoded.
    pub fn to_value(self) -> Value {
        // Checked at construction: the bytes convert. Null keeps this free of panics regardless.
        let decoded = rmp_serde::from_slice(self.0);
        debug_assert!(decoded.is_ok(), "raw MessagePack that does not convert");
        decoded.unwrap_or(Value::Null)
    }
}

impl PartialEq for RawMsgPack<'_> {
    /// Equal when they hold the same value (not necessarily the same bytes).
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.to_value() == other.to_value()
    }
}

/// A published value as decoded: what a publisher sent, kept as is (JSON text or MessagePack
/// bytes) when it can be, or a [`Value`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data<'a> {
    /// The text a JSON publisher sent, borrowed from its frame.
    Raw(RawJson<'a>),
    /// The bytes a MessagePack publisher sent, borrowed from its frame.
    RawMsgPack(RawMsgPack<'a>),
    /// A decoded value (when what was sent could not pass as is).
    Value(Value),
}

impl Data<'_> {
    /// A borrowed view, to route and encode.
    pub fn as_ref(&self) -> DataRef<'_> {
        match self {
            Self::Raw(raw) => DataRef::Raw(*raw),
            Self::RawMsgPack(raw) => DataRef::RawMsgPack(*raw),
            Self::Value(v) => DataRef::Value(v),
        }
    }

    /// The value, parsing raw text or bytes.
    pub fn into_value(self) -> Value {
        match self {
            Self::Raw(raw) => raw.to_value(),
            Self::RawMsgPack(raw) => raw.to_value(),
            Self::Value(v) => v,
        }
    }
}

/// A published value as the broker routes and encodes it, borrowed.
///
/// Serializes as the value it holds. Raw text is written as is only by human-readable
/// serializers, which for the frames means serde_json; any other serializer (MessagePack) gets
/// the text parsed into a [`Value`], never the text as a string. Raw MessagePack is always
/// decoded into a [`Value`] to serialize (the encoders write it as is without serde).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DataRef<'a> {
    /// See [`Data::Raw`].
    Raw(RawJson<'a>),
    /// See [`Data::RawMsgPack`].
    RawMsgPack(RawMsgPack<'a>),
    /// A value.
    Value(&'a Value),
}

impl DataRef<'_> {
    /// Whether the value is `null` (what clears a retained value).
    pub fn is_null(self) -> bool {
        match self {
            Self::Raw(raw) => raw.is_null(),
            Self::RawMsgPack(raw) => raw.is_null(),
            Self::Value(v) => v.is_null(),
        }
    }

    /// The value, parsing raw text.
    pub fn to_value(self) -> Value {
        match self {
            Self::Raw(raw) => raw.to_value(),
            Self::RawMsgPack(raw) => raw.to_value(),
            Self::Value(v) => v.clone(),
        }
    }
}

impl<'a> From<&'a Value> for DataRef<'a> {
    fn from(v: &'a Value) -> Self {
        Self::Value(v)
    }
}

impl Serialize for DataRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(serializer),
            // Only serde_json can write raw text; the message encoder writes it without serde
            // (`encode_msg_text`), so this copy is off the usual path.
            Self::Raw(raw) if serializer.is_human_readable() => {
                RawValue::from_string(raw.0.to_owned())
                    .map_err(serde::ser::Error::custom)?
                    .serialize(serializer)
            }
            Self::Raw(raw) => raw.to_value().serialize(serializer),
            // rmp_serde cannot write raw bytes either; `encode_msg` writes them without serde.
            Self::RawMsgPack(raw) => raw.to_value().serialize(serializer),
        }
    }
}

/// A frame sent by the broker to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame {
    /// A message delivered to a subscriber.
    Msg(Message),
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
        message: String,
    },
}

/// A delivered message, as a client decodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The topic it was published on.
    pub topic: TopicName,
    /// The published value.
    #[serde(default)]
    pub data: Value,
    /// The publisher's `hello` name, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Where to answer, for a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<TopicName>,
    /// True only when replayed from the retained store at subscribe time.
    #[serde(default)]
    pub retained: bool,
}

/// A delivered message as the broker encodes it, borrowing from what it already holds.
/// Serializes to exactly the same object as [`ServerFrame::Msg`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MsgRef<'a> {
    /// Always `"msg"`.
    pub op: &'static str,
    /// See [`Message::topic`].
    pub topic: &'a str,
    /// See [`Message::data`].
    pub data: DataRef<'a>,
    /// See [`Message::from`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    /// See [`Message::reply`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<&'a str>,
    /// See [`Message::retained`].
    pub retained: bool,
}

impl<'a> MsgRef<'a> {
    /// A live (not retained) message.
    pub fn new(
        topic: &'a str,
        data: impl Into<DataRef<'a>>,
        from: Option<&'a str>,
        reply: Option<&'a str>,
    ) -> Self {
        Self {
            op: "msg",
            topic,
            data: data.into(),
            from,
            reply,
            retained: false,
        }
    }
}

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
}

impl ErrorCode {
    /// Every code, for metrics and documentation.
    pub const ALL: [ErrorCode; 11] = [
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

    /// The `err` frame that tells the client.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Err {
            id: self.id,
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// Checks a `hello` name or kind: one topic level, printable, at most [`MAX_NAME_BYTES`].
///
/// # Errors
/// A message saying what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes long, the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.starts_with('$') {
        return Err("name may not start with '$'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control() || c.is_whitespace())
    {
        return Err(format!("name may not contain {c:?}"));
    }
    Ok(())
}
