//! What both encodings decode a client frame into before any rule is checked: a flat,
//! permissive [`Envelope`], then checked field by field in one place ([`validate`]), so that
//! every refusal has a precise [`ErrorCode`] and keeps the frame's `id` whenever it can be read,
//! whichever encoding and whichever reader (quick or serde) it came through. Unknown fields are
//! ignored, which leaves room to grow the protocol.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::data::Data;
use crate::error::{ErrorCode, FrameError};
use crate::frame::{ClientFrame, Publish};
use crate::name::check_name;
use crate::topic::{TopicFilter, TopicName};

/// A client frame as it arrives. `D` is how `data` is read: a `Value`, or the text or bytes it
/// was sent as.
#[derive(Deserialize)]
pub(crate) struct Envelope<'a, D> {
    #[serde(borrow, default)]
    pub op: Option<Cow<'a, str>>,
    #[serde(default)]
    pub id: Option<u64>,
    // Strings are borrowed from the frame unless they hold escapes.
    #[serde(borrow, default)]
    pub topic: Option<Cow<'a, str>>,
    #[serde(default = "none")]
    pub data: Option<D>,
    #[serde(default)]
    pub retain: Option<bool>,
    #[serde(borrow, default)]
    pub reply: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub token: Option<Cow<'a, str>>,
}

impl<'a, D> Envelope<'a, D> {
    pub(crate) fn map_data<E>(self, f: impl FnOnce(D) -> E) -> Envelope<'a, E> {
        Envelope {
            op: self.op,
            id: self.id,
            topic: self.topic,
            data: self.data.map(f),
            retain: self.retain,
            reply: self.reply,
            name: self.name,
            kind: self.kind,
            token: self.token,
        }
    }
}

/// An envelope's fields as plain values, to compare envelopes in tests: the six strings (`op`,
/// `topic`, `reply`, `name`, `kind`, `token`), `id`, `retain`, and `data` as the test wants it.
#[cfg(test)]
pub(crate) type PlainEnvelope<T> = ([Option<String>; 6], Option<u64>, Option<bool>, Option<T>);

#[cfg(test)]
impl<D> Envelope<'_, D> {
    /// The fields as plain values, `data` turned by `data` (`None` for data that means null).
    pub(crate) fn plain<T>(&self, data: impl Fn(&D) -> Option<T>) -> PlainEnvelope<T> {
        let text = |s: &Option<Cow<'_, str>>| s.as_deref().map(str::to_owned);
        let strings = [
            &self.op,
            &self.topic,
            &self.reply,
            &self.name,
            &self.kind,
            &self.token,
        ];
        (
            strings.map(text),
            self.id,
            self.retain,
            self.data.as_ref().and_then(data),
        )
    }
}

impl<D> Default for Envelope<'_, D> {
    fn default() -> Self {
        Self {
            op: None,
            id: None,
            topic: None,
            data: None,
            retain: None,
            reply: None,
            name: None,
            kind: None,
            token: None,
        }
    }
}

fn none<D>() -> Option<D> {
    None
}

/// Fills a field once, for the quick readers; a second time is not plain (serde refuses
/// duplicate fields).
pub(crate) fn set<T>(field: &mut Option<T>, value: T) -> Option<()> {
    match field {
        Some(_) => None,
        None => {
            *field = Some(value);
            Some(())
        }
    }
}

/// Only the `id`, to answer a frame that could not be decoded as a whole.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

/// An encoding's serde library, as the ordinary path reads with it.
pub(crate) trait Serde {
    /// Whether the bytes hold an object (a map), judging by their start.
    fn is_object(bytes: &[u8]) -> bool;

    /// Reads a `T`; the error says what is wrong, naming the encoding.
    fn read<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String>;
}

/// The ordinary path of an encoding: its serde library reads an [`Envelope`] of `Value` data.
/// The fallback of the quick readers, and the reference they are held to.
pub(crate) fn decode_value<S: Serde>(bytes: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    // serde would read a struct from an array of its fields in order; frames are objects.
    if !S::is_object(bytes) {
        return Err(FrameError::new(
            None,
            ErrorCode::BadFrame,
            "a frame must be an object (a JSON object or a MessagePack map)",
        ));
    }
    let env: Envelope<'_, Value> = S::read(bytes).map_err(|message| {
        let id = S::read::<IdOnly>(bytes).ok().and_then(|i| i.id);
        FrameError::new(id, ErrorCode::BadFrame, message)
    })?;
    validate(env, |data| Data::from(data.unwrap_or(Value::Null)))
}

/// Checks every rule on a decoded envelope; `data` turns its `data` into [`Data`]. The one place
/// frames are validated, whichever way they were read.
pub(crate) fn validate<'a, D>(
    env: Envelope<'a, D>,
    data: impl FnOnce(Option<D>) -> Data<'a>,
) -> Result<ClientFrame<'a>, FrameError> {
    let id = env.id;
    let missing = |field: &str, op: &str| {
        FrameError::new(
            id,
            ErrorCode::BadFrame,
            format!("'{op}' needs a '{field}' field"),
        )
    };
    let Some(op) = env.op else {
        return Err(FrameError::new(
            id,
            ErrorCode::BadFrame,
            "missing field 'op'",
        ));
    };
    match op.as_ref() {
        "pub" => {
            let topic = env.topic.ok_or_else(|| missing("topic", "pub"))?;
            let topic = TopicName::checked(topic).map_err(|e| {
                FrameError::new(id, ErrorCode::for_topic(&e), format!("topic: {e}"))
            })?;
            let reply = env.reply.map(TopicName::checked).transpose().map_err(|e| {
                FrameError::new(id, ErrorCode::for_topic(&e), format!("reply: {e}"))
            })?;
            Ok(ClientFrame::Pub(Publish {
                topic,
                data: data(env.data),
                retain: env.retain.unwrap_or(false),
                reply,
                id,
            }))
        }
        op @ ("sub" | "unsub") => {
            let topic = env.topic.ok_or_else(|| missing("topic", op))?;
            let topic = TopicFilter::new(topic.into_owned())
                .map_err(|e| FrameError::new(id, ErrorCode::BadFilter, format!("filter: {e}")))?;
            Ok(if op == "sub" {
                ClientFrame::Sub { topic, id }
            } else {
                ClientFrame::Unsub { topic, id }
            })
        }
        "hello" => {
            let name = env.name.ok_or_else(|| missing("name", "hello"))?;
            check_name(&name)
                .map_err(|e| FrameError::new(id, ErrorCode::BadName, e.to_string()))?;
            if let Some(kind) = &env.kind {
                check_name(kind)
                    .map_err(|e| FrameError::new(id, ErrorCode::BadName, format!("kind: {e}")))?;
            }
            Ok(ClientFrame::Hello {
                name,
                kind: env.kind,
                token: env.token,
                id,
            })
        }
        "ping" => Ok(ClientFrame::Ping { id }),
        other => Err(FrameError::new(
            id,
            ErrorCode::UnknownOp,
            format!("unknown op {other:?} (expected hello, sub, unsub, pub or ping)"),
        )),
    }
}
