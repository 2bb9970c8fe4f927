//! [`Data`]: a published value, as a frame carries it.
//!
//! A value usually passes through the broker untouched: a JSON publisher's `data` reaches JSON
//! subscribers as the text it was sent as, a MessagePack publisher's as its bytes. So `Data`
//! holds either what was sent (borrowed from the frame, known to convert to a [`Value`]) or a
//! [`Value`]; the encoders write what was sent as is wherever the encoding is the same.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::encoding::Encoding;

/// A published value: any JSON value, as sent or decoded.
///
/// Equality is by value: `Data` holding the text `[1, 2]` equals `Data` holding `[1,2]`.
#[derive(Clone)]
pub struct Data<'a>(pub(crate) Repr<'a>);

/// What a [`Data`] holds.
#[derive(Debug, Clone)]
pub(crate) enum Repr<'a> {
    /// The text a JSON publisher sent, borrowed from its frame.
    Json(RawJson<'a>),
    /// The bytes a MessagePack publisher sent, borrowed from its frame.
    MsgPack(RawMsgPack<'a>),
    /// A value: decoded (when what was sent could not pass as is) or given.
    Value(Cow<'a, Value>),
}

impl<'a> Data<'a> {
    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        match &self.0 {
            Repr::Json(raw) => raw.is_null(),
            Repr::MsgPack(raw) => raw.is_null(),
            Repr::Value(v) => v.is_null(),
        }
    }

    /// The value (parsed, when it is held as sent).
    pub fn to_value(&self) -> Value {
        match &self.0 {
            Repr::Json(raw) => raw.to_value(),
            Repr::MsgPack(raw) => raw.to_value(),
            Repr::Value(v) => v.as_ref().clone(),
        }
    }

    /// The value, without a copy when it is held as one.
    pub fn into_value(self) -> Value {
        match self.0 {
            Repr::Value(v) => v.into_owned(),
            _ => self.to_value(),
        }
    }

    /// The same value, borrowed: cheap whatever it holds.
    pub fn as_ref(&self) -> Data<'_> {
        Data(match &self.0 {
            Repr::Json(raw) => Repr::Json(*raw),
            Repr::MsgPack(raw) => Repr::MsgPack(*raw),
            Repr::Value(v) => Repr::Value(Cow::Borrowed(v.as_ref())),
        })
    }

    /// The same value, owning it (what was held as sent is parsed).
    pub fn into_owned(self) -> Data<'static> {
        Data(Repr::Value(Cow::Owned(self.into_value())))
    }

    /// The encoding of the frame it is held as sent in, if it is (rather than as a [`Value`]):
    /// subscribers of that encoding get those very bytes.
    pub fn sent_as(&self) -> Option<Encoding> {
        match self.0 {
            Repr::Json(_) => Some(Encoding::Json),
            Repr::MsgPack(_) => Some(Encoding::MsgPack),
            Repr::Value(_) => None,
        }
    }

    /// The value as JSON text: the very text sent when it was sent as JSON, else written from
    /// the value. What the cluster bridge carries between brokers.
    pub fn to_json(&self) -> Cow<'a, str> {
        match &self.0 {
            Repr::Json(raw) => Cow::Borrowed(raw.0),
            // A `Value` always writes: its keys are strings.
            _ => Cow::Owned(serde_json::to_string(&self.to_value()).unwrap_or_default()),
        }
    }

    /// The JSON text as it was sent, if it is held so.
    pub(crate) fn as_json(&self) -> Option<&'a str> {
        match self.0 {
            Repr::Json(raw) => Some(raw.0),
            _ => None,
        }
    }

    /// The MessagePack bytes as they were sent, if they are held so.
    pub(crate) fn as_msgpack(&self) -> Option<&'a [u8]> {
        match self.0 {
            Repr::MsgPack(raw) => Some(raw.0),
            _ => None,
        }
    }

    /// Roughly how many bytes the value takes encoded, to size a buffer up front.
    pub(crate) fn size_hint(&self) -> usize {
        match &self.0 {
            Repr::Json(raw) => raw.0.len(),
            Repr::MsgPack(raw) => raw.0.len(),
            Repr::Value(v) => match v.as_ref() {
                Value::String(s) => s.len() + 8,
                _ => 64,
            },
        }
    }
}

impl From<Value> for Data<'_> {
    fn from(v: Value) -> Self {
        Data(Repr::Value(Cow::Owned(v)))
    }
}

impl<'a> From<&'a Value> for Data<'a> {
    fn from(v: &'a Value) -> Self {
        Data(Repr::Value(Cow::Borrowed(v)))
    }
}

impl Default for Data<'_> {
    /// `null`: what a `pub` without `data` publishes, and what clears a retained value.
    fn default() -> Self {
        Data(Repr::Value(Cow::Owned(Value::Null)))
    }
}

impl PartialEq for Data<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Json(a), Repr::Json(b)) if a.0 == b.0 => true,
            (Repr::MsgPack(a), Repr::MsgPack(b)) if a.0 == b.0 => true,
            (Repr::Value(a), Repr::Value(b)) => a == b,
            _ => self.to_value() == other.to_value(),
        }
    }
}

impl PartialEq<Value> for Data<'_> {
    fn eq(&self, other: &Value) -> bool {
        match &self.0 {
            Repr::Value(v) => v.as_ref() == other,
            _ => &self.to_value() == other,
        }
    }
}

impl fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Json(raw) => write!(f, "Data(json {})", raw.0),
            Repr::MsgPack(raw) => write!(f, "Data(msgpack {:?})", raw.0),
            Repr::Value(v) => write!(f, "Data({v})"),
        }
    }
}

impl fmt::Display for Data<'_> {
    /// As compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Value(v) => write!(f, "{v}"),
            _ => write!(f, "{}", self.to_value()),
        }
    }
}

impl Serialize for Data<'_> {
    /// As the value it holds. Raw text is written as is only by human-readable serializers
    /// (serde_json); any other (MessagePack) gets it parsed, never the text as a string. Raw
    /// MessagePack is decoded to serialize: the encoders write it as is without serde.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Value(v) => v.serialize(serializer),
            Repr::Json(raw) if serializer.is_human_readable() => {
                RawValue::from_string(raw.0.to_owned())
                    .map_err(serde::ser::Error::custom)?
                    .serialize(serializer)
            }
            Repr::Json(raw) => raw.to_value().serialize(serializer),
            Repr::MsgPack(raw) => raw.to_value().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Data<'static> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Data::from)
    }
}

/// JSON text, as a publisher sent it, that is known to parse into a [`Value`].
///
/// Only the JSON decoder makes one, from text whose syntax serde_json checked (or, for a string
/// without escapes, the quick reader), after checking that it holds nothing that parsing into a
/// `Value` could refuse: what lets [`RawJson::to_value`] be infallible.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    const NULL: RawJson<'static> = RawJson("null");

    /// Text the caller has checked parses (see the type's documentation).
    pub(crate) fn new_unchecked(text: &'a str) -> Self {
        Self(text)
    }

    fn is_null(self) -> bool {
        self.0 == "null"
    }

    fn to_value(self) -> Value {
        // Checked at construction: the text parses. Null keeps this free of panics regardless.
        let parsed = serde_json::from_str(self.0);
        debug_assert!(parsed.is_ok(), "raw JSON that does not parse: {}", self.0);
        parsed.unwrap_or(Value::Null)
    }
}

/// MessagePack bytes of one value, as a publisher sent them, that are known to convert to a
/// [`Value`] and back without a change that matters (see `codec::msgpack::plain_value`): what
/// lets [`RawMsgPack::to_value`] be infallible, and MessagePack subscribers get the bytes as is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawMsgPack<'a>(&'a [u8]);

impl<'a> RawMsgPack<'a> {
    const NULL: RawMsgPack<'static> = RawMsgPack(&[0xc0]);

    /// Bytes the caller has checked convert (see the type's documentation).
    pub(crate) fn new_unchecked(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    fn is_null(self) -> bool {
        self.0 == [0xc0]
    }

    fn to_value(self) -> Value {
        // Checked at construction: the bytes convert. Null keeps this free of panics regardless.
        let decoded = rmp_serde::from_slice(self.0);
        debug_assert!(decoded.is_ok(), "raw MessagePack that does not convert");
        decoded.unwrap_or(Value::Null)
    }
}

/// What a server frame's `data` can be: a [`Value`] (as clients hold it) or [`Data`] (as the
/// broker does). Sealed: the encoders rely on seeing it as [`Data`].
pub trait AsData: Serialize + sealed::Sealed {
    /// The value as [`Data`], borrowed.
    fn as_data(&self) -> Data<'_>;
}

impl AsData for Value {
    fn as_data(&self) -> Data<'_> {
        Data::from(self)
    }
}

impl AsData for Data<'_> {
    fn as_data(&self) -> Data<'_> {
        self.as_ref()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for serde_json::Value {}
    impl Sealed for super::Data<'_> {}
}

impl<'a> Data<'a> {
    /// Text a JSON publisher sent, kept as is.
    pub(crate) fn json_unchecked(raw: RawJson<'a>) -> Self {
        Data(Repr::Json(raw))
    }

    /// Bytes a MessagePack publisher sent, kept as is.
    pub(crate) fn msgpack_unchecked(raw: RawMsgPack<'a>) -> Self {
        Data(Repr::MsgPack(raw))
    }
}

impl Data<'_> {
    /// `null` as if a JSON publisher had sent it: what a JSON `pub` without `data` carries.
    pub(crate) const JSON_NULL: Data<'static> = Data(Repr::Json(RawJson::NULL));
    /// `nil` as if a MessagePack publisher had sent it.
    pub(crate) const MSGPACK_NULL: Data<'static> = Data(Repr::MsgPack(RawMsgPack::NULL));
}
