//! The two encodings of the frames: JSON (WebSocket text frames) and MessagePack with named
//! fields (WebSocket binary frames). Both carry exactly the same objects.
//!
//! Client frames are decoded through a flat, permissive envelope ([`Envelope`]) and then checked
//! field by field, so that every refusal has a precise [`ErrorCode`] and keeps the frame's `id`
//! whenever it can be read. Unknown fields are ignored, which leaves room to grow the protocol.
//!
//! A JSON `pub` can keep its `data` as the text it arrived as ([`decode_client_ref`]), so that
//! the broker writes that text into the `msg` for JSON subscribers instead of decoding it into a
//! `Value` and encoding it again. The text is kept only when parsing it could not have failed
//! (`passes_as_is`); otherwise the frame is decoded the ordinary way, so what is accepted and
//! refused, and with which error, is the same either way.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::frame::{
    check_name, ClientFrame, ClientFrameRef, Data, DataRef, ErrorCode, FrameError, MsgRef,
    PublishRef, RawJson, RawMsgPack, ServerFrame,
};
use crate::topic::{TopicFilter, TopicName};
use crate::{scan, scan_msgpack};

/// How a frame is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON, in WebSocket text frames: the public contract for external tools.
    Json,
    /// MessagePack with named fields (maps), in WebSocket binary frames: what nodes speak.
    MsgPack,
}

impl Encoding {
    /// Both encodings, in a fixed order (for per-encoding caches).
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// A small index, `0` for JSON and `1` for MessagePack.
    pub fn index(self) -> usize {
        match self {
            Self::Json => 0,
            Self::MsgPack => 1,
        }
    }

    /// The lower-case name used in flags and DNS-SD records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MsgPack => "msgpack",
        }
    }
}

/// A client frame as it arrives, before any rule is checked. `D` is how `data` is read: a
/// [`Value`], or (JSON only) the raw text.
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
        }
    }
}

/// An envelope's fields as plain values, to compare envelopes in tests: the five strings (`op`,
/// `topic`, `reply`, `name`, `kind`), `id`, `retain`, and `data` as the test wants it.
#[cfg(test)]
pub(crate) type PlainEnvelope<T> = ([Option<String>; 5], Option<u64>, Option<bool>, Option<T>);

#[cfg(test)]
impl<D> Envelope<'_, D> {
    /// The fields as plain values, `data` turned by `data` (`None` for data that means null).
    pub(crate) fn plain<T>(&self, data: impl Fn(&D) -> Option<T>) -> PlainEnvelope<T> {
        let text = |s: &Option<Cow<'_, str>>| s.as_deref().map(str::to_owned);
        let strings = [&self.op, &self.topic, &self.reply, &self.name, &self.kind];
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
        }
    }
}

fn none<D>() -> Option<D> {
    None
}

/// Only the `id`, to answer a frame that could not be decoded as a whole.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8], enc: Encoding) -> Result<T, String> {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}")),
        Encoding::MsgPack => {
            rmp_serde::from_slice(bytes).map_err(|e| format!("invalid MessagePack: {e}"))
        }
    }
}

fn to_bytes<T: Serialize + ?Sized>(value: &T, enc: Encoding) -> Vec<u8> {
    to_bytes_sized(value, enc, 128)
}

/// [`to_bytes`] into a buffer of `capacity` to start with.
fn to_bytes_sized<T: Serialize + ?Sized>(value: &T, enc: Encoding, capacity: usize) -> Vec<u8> {
    // Neither encoder can fail on these types: they write into a Vec, and every map key
    // (struct fields, `serde_json::Value` objects) is a string.
    let mut out = Vec::with_capacity(capacity);
    match enc {
        Encoding::Json => {
            serde_json::to_writer(&mut out, value).expect("JSON encoding of a frame cannot fail")
        }
        Encoding::MsgPack => rmp_serde::encode::write_named(&mut out, value)
            .expect("MessagePack encoding of a frame cannot fail"),
    }
    out
}

/// Whether the encoded value is an object (a map), judging by its first byte.
fn is_object(bytes: &[u8], enc: Encoding) -> bool {
    match enc {
        Encoding::Json => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{'),
        // fixmap, map 16, map 32
        Encoding::MsgPack => bytes
            .first()
            .is_some_and(|b| matches!(b, 0x80..=0x8f | 0xde | 0xdf)),
    }
}

/// Decodes and validates a frame sent by a client.
///
/// # Errors
/// A [`FrameError`] with the code to send back: [`ErrorCode::BadFrame`] for anything that is not
/// a well-formed object, [`ErrorCode::UnknownOp`], or the code of the rule the frame breaks.
pub fn decode_client(bytes: &[u8], enc: Encoding) -> Result<ClientFrame, FrameError> {
    decode(bytes, enc, false).map(ClientFrameRef::into_owned)
}

/// Decodes and validates a frame sent by a client, keeping a `pub`'s `data` as it arrived, JSON
/// text ([`Data::Raw`]) or MessagePack bytes ([`Data::RawMsgPack`]), when it can. Accepts and
/// refuses exactly what [`decode_client`] does, with the same errors.
///
/// # Errors
/// As [`decode_client`].
pub fn decode_client_ref(bytes: &[u8], enc: Encoding) -> Result<ClientFrameRef<'_>, FrameError> {
    decode(bytes, enc, true)
}

/// [`decode_client_ref`] for a JSON frame already known to be UTF-8 (a WebSocket text frame).
///
/// # Errors
/// As [`decode_client`].
pub fn decode_client_text(text: &str) -> Result<ClientFrameRef<'_>, FrameError> {
    decode_text(text).unwrap_or_else(|| decode(text.as_bytes(), Encoding::Json, false))
}

/// The raw path of a JSON frame: `None` for anything it does not take as is (a malformed frame,
/// data that might not parse), which the ordinary path then decides and words the error for.
fn decode_text(text: &str) -> Option<Result<ClientFrameRef<'_>, FrameError>> {
    if !is_object(text.as_bytes(), Encoding::Json) {
        return None;
    }
    // The usual frame is read by hand (`scan`); anything unusual by serde.
    let env = match scan::envelope(text) {
        Some(env) => env,
        None => serde_json::from_str::<Envelope<'_, &RawValue>>(text)
            .ok()?
            .map_data(RawValue::get),
    };
    if !env.data.is_none_or(passes_as_is) {
        return None;
    }
    Some(validate(env, |data| {
        Data::Raw(data.map_or(RawJson::NULL, RawJson::new_unchecked))
    }))
}

fn decode(bytes: &[u8], enc: Encoding, raw: bool) -> Result<ClientFrameRef<'_>, FrameError> {
    // serde would read a struct from an array of its fields in order; frames are objects.
    if !is_object(bytes, enc) {
        return Err(FrameError::new(
            None,
            ErrorCode::BadFrame,
            "a frame must be an object (a JSON object or a MessagePack map)",
        ));
    }
    if raw && enc == Encoding::Json {
        // Text read as `str` is not checked for UTF-8 string by string; one check of the
        // whole frame costs less.
        if let Some(decoded) = std::str::from_utf8(bytes).ok().and_then(decode_text) {
            return decoded;
        }
    }
    if raw && enc == Encoding::MsgPack {
        // The usual frame is read by hand (`scan_msgpack`); anything else by rmp_serde below.
        if let Some(env) = scan_msgpack::envelope(bytes) {
            return validate(env, |data| {
                Data::RawMsgPack(data.map_or(RawMsgPack::NULL, RawMsgPack::new_unchecked))
            });
        }
    }
    let env: Envelope<'_, Value> = from_bytes(bytes, enc).map_err(|message| {
        let id = from_bytes::<IdOnly>(bytes, enc).ok().and_then(|i| i.id);
        FrameError::new(id, ErrorCode::BadFrame, message)
    })?;
    validate(env, |data| Data::Value(data.unwrap_or(Value::Null)))
}

/// Whether JSON text that serde_json accepted as a raw value is sure to parse into a [`Value`]
/// too. Reading a raw value checks the syntax but, unlike parsing, not `\u` escapes (lone
/// surrogates), numbers (an exponent or a long mantissa can overflow an `f64`) or nesting depth
/// (limited to 128), so text with any of those is not passed as is. One pass over the bytes, no
/// allocation: far cheaper than the parse it saves.
fn passes_as_is(text: &str) -> bool {
    /// A number longer than this (digits, sign, point) might not fit an `f64`.
    const MAX_NUMBER: usize = 64;
    /// Deeper than this is left to the parser and its limit.
    const MAX_DEPTH: usize = 64;
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // The syntax is already checked: every string ends, every escape is complete.
                loop {
                    let Some(at) = memchr::memchr2(b'"', b'\\', &bytes[i + 1..]) else {
                        return false;
                    };
                    i += 1 + at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    if bytes[i + 1] == b'u' {
                        return false;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'-' | b'+' | b'.' | b'0'..=b'9' | b'e' | b'E')
                {
                    i += 1;
                    if matches!(bytes[i], b'e' | b'E') {
                        return false;
                    }
                }
                if i + 1 - start > MAX_NUMBER {
                    return false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// Checks every rule on a decoded envelope; `data` turns its `data` into [`Data`]. The one place
/// frames are validated, whichever way `data` was read.
fn validate<'a, D>(
    env: Envelope<'a, D>,
    data: impl FnOnce(Option<D>) -> Data<'a>,
) -> Result<ClientFrameRef<'a>, FrameError> {
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
            Ok(ClientFrameRef::Pub(PublishRef {
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
                ClientFrameRef::Sub { topic, id }
            } else {
                ClientFrameRef::Unsub { topic, id }
            })
        }
        "hello" => {
            let name = env.name.ok_or_else(|| missing("name", "hello"))?;
            check_name(&name).map_err(|m| FrameError::new(id, ErrorCode::BadName, m))?;
            if let Some(kind) = &env.kind {
                check_name(kind)
                    .map_err(|m| FrameError::new(id, ErrorCode::BadName, format!("kind: {m}")))?;
            }
            Ok(ClientFrameRef::Hello {
                name: name.into_owned(),
                kind: env.kind.map(Cow::into_owned),
                id,
            })
        }
        "ping" => Ok(ClientFrameRef::Ping { id }),
        other => Err(FrameError::new(
            id,
            ErrorCode::UnknownOp,
            format!("unknown op {other:?} (expected hello, sub, unsub, pub or ping)"),
        )),
    }
}

/// Encodes a frame a client sends.
pub fn encode_client(frame: &ClientFrame, enc: Encoding) -> Vec<u8> {
    to_bytes(frame, enc)
}

/// Encodes a frame the broker sends.
pub fn encode_server(frame: &ServerFrame, enc: Encoding) -> Vec<u8> {
    to_bytes(frame, enc)
}

/// Encodes a delivered message without copying what the broker holds.
pub fn encode_msg(msg: &MsgRef<'_>, enc: Encoding) -> Vec<u8> {
    match (msg.data, enc) {
        (DataRef::RawMsgPack(data), Encoding::MsgPack) => {
            return encode_msgpack_around(msg, data.get())
        }
        (DataRef::Raw(_), Encoding::Json) => return encode_msg_text(msg).into_bytes(),
        _ => {}
    }
    // Room for the fields and the value, as far as it can be told cheaply: most messages are
    // encoded without growing the buffer.
    let strings = [msg.topic, msg.from.unwrap_or(""), msg.reply.unwrap_or("")];
    let data = match msg.data {
        DataRef::Raw(raw) => raw.get().len(),
        DataRef::RawMsgPack(raw) => raw.get().len(),
        DataRef::Value(Value::String(s)) => s.len() + 8,
        DataRef::Value(_) => 64,
    };
    let capacity = 64 + data + strings.iter().map(|s| s.len()).sum::<usize>();
    to_bytes_sized(msg, enc, capacity)
}

/// A `msg` in MessagePack around `data`, bytes a MessagePack publisher sent: the fields written
/// one by one, in the order and form rmp_serde gives them (a map of named fields), and the bytes
/// as they are.
fn encode_msgpack_around(msg: &MsgRef<'_>, data: &[u8]) -> Vec<u8> {
    let optional = [("from", msg.from), ("reply", msg.reply)];
    let fields = 4 + optional.iter().filter(|(_, v)| v.is_some()).count() as u32;
    let strings = [
        msg.op,
        msg.topic,
        msg.from.unwrap_or(""),
        msg.reply.unwrap_or(""),
    ];
    // Each string's header takes at most 5 bytes; the keys take 30 with theirs.
    let capacity = 5 + 30 + data.len() + 1 + strings.iter().map(|s| s.len() + 5).sum::<usize>();
    let mut out = Vec::with_capacity(capacity);
    written(rmp::encode::write_map_len(&mut out, fields));
    if msg.op == "msg" {
        // "op": "msg", "topic": as rmp writes them (fixstr markers), in one copy.
        out.extend_from_slice(b"\xa2op\xa3msg\xa5topic");
    } else {
        written(rmp::encode::write_str(&mut out, "op"));
        written(rmp::encode::write_str(&mut out, msg.op));
        written(rmp::encode::write_str(&mut out, "topic"));
    }
    written(rmp::encode::write_str(&mut out, msg.topic));
    written(rmp::encode::write_str(&mut out, "data"));
    out.extend_from_slice(data);
    for (key, value) in optional {
        if let Some(value) = value {
            written(rmp::encode::write_str(&mut out, key));
            written(rmp::encode::write_str(&mut out, value));
        }
    }
    written(rmp::encode::write_str(&mut out, "retained"));
    written(rmp::encode::write_bool(&mut out, msg.retained));
    out
}

/// Takes the result of a write into a `Vec`, which cannot fail: it grows as needed.
fn written<T, E>(result: Result<T, E>) {
    debug_assert!(result.is_ok(), "a write into a Vec failed");
}

/// Encodes a delivered message as JSON text, ready for a WebSocket text frame (a `String`: it
/// needs no second UTF-8 check).
///
/// The usual message, raw JSON `data` from a JSON publisher and strings that need no escaping,
/// is written piece by piece into a string of exactly its length, which then becomes a frame
/// without a copy. Anything else goes through serde. Both give the same bytes as
/// [`encode_msg`] (a property test holds them to it).
pub fn encode_msg_text(msg: &MsgRef<'_>) -> String {
    // serde_json escapes exactly these; a string without them is written as is, in quotes.
    let plain = |s: &str| !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    let DataRef::Raw(data) = msg.data else {
        return serde_json::to_string(msg).expect("JSON encoding of a frame cannot fail");
    };
    let strings = [Some(msg.op), Some(msg.topic), msg.from, msg.reply];
    if !strings.into_iter().flatten().all(plain) {
        return serde_json::to_string(msg).expect("JSON encoding of a frame cannot fail");
    }
    let data = data.get();
    let retained = if msg.retained {
        r#","retained":true}"#
    } else {
        r#","retained":false}"#
    };
    let optional = |name: &str, value: Option<&str>| value.map_or(0, |v| name.len() + v.len() + 1);
    let len = r#"{"op":"","topic":"","data":"#.len()
        + msg.op.len()
        + msg.topic.len()
        + data.len()
        + optional(r#","from":""#, msg.from)
        + optional(r#","reply":""#, msg.reply)
        + retained.len();
    let mut out = String::with_capacity(len);
    for piece in [
        r#"{"op":""#,
        msg.op,
        r#"","topic":""#,
        msg.topic,
        r#"","data":"#,
        data,
    ] {
        out.push_str(piece);
    }
    for (name, value) in [(r#","from":""#, msg.from), (r#","reply":""#, msg.reply)] {
        if let Some(value) = value {
            out.push_str(name);
            out.push_str(value);
            out.push('"');
        }
    }
    out.push_str(retained);
    debug_assert_eq!(out.len(), len);
    out
}

/// Decodes a frame sent by the broker (the client side of the protocol).
///
/// # Errors
/// A message saying why the bytes are not a valid server frame.
pub fn decode_server(bytes: &[u8], enc: Encoding) -> Result<ServerFrame, String> {
    from_bytes(bytes, enc)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::frame::{Message, Publish};

    fn decode_json(s: &str) -> Result<ClientFrame, FrameError> {
        decode_client(s.as_bytes(), Encoding::Json)
    }

    fn code(s: &str) -> (Option<u64>, ErrorCode) {
        let e = decode_json(s).unwrap_err();
        (e.id, e.code)
    }

    #[test]
    fn decodes_the_documented_examples() {
        assert_eq!(
            decode_json(r#"{"op":"hello","name":"pin-1","kind":"pin"}"#).unwrap(),
            ClientFrame::Hello {
                name: "pin-1".into(),
                kind: Some("pin".into()),
                id: None
            }
        );
        assert_eq!(
            decode_json(r#"{"op":"sub","topic":"pin/+/state","id":1}"#).unwrap(),
            ClientFrame::Sub {
                topic: TopicFilter::new("pin/+/state").unwrap(),
                id: Some(1)
            }
        );
        assert_eq!(
            decode_json(
                r#"{"op":"pub","topic":"clock/tick","data":{"n":[1,2]},"retain":false,"reply":"_inbox/c1/7","id":3}"#
            )
            .unwrap(),
            ClientFrame::Pub(Publish {
                topic: TopicName::new("clock/tick").unwrap(),
                data: json!({"n":[1,2]}),
                retain: false,
                reply: Some(TopicName::new("_inbox/c1/7").unwrap()),
                id: Some(3)
            })
        );
        assert_eq!(
            decode_json(r#"{"op":"ping","id":4}"#).unwrap(),
            ClientFrame::Ping { id: Some(4) }
        );
    }

    #[test]
    fn pub_without_data_publishes_null() {
        let ClientFrame::Pub(p) = decode_json(r#"{"op":"pub","topic":"a"}"#).unwrap() else {
            panic!("not a pub");
        };
        assert_eq!(p.data, Value::Null);
        assert!(!p.retain);
    }

    #[test]
    fn refusals_have_stable_codes_and_keep_the_id() {
        assert_eq!(code("{not json"), (None, ErrorCode::BadFrame));
        assert_eq!(code("[1,2]"), (None, ErrorCode::BadFrame));
        // An array holding a frame's fields in order is still not an object.
        assert_eq!(code(r#"["ping",7]"#), (None, ErrorCode::BadFrame));
        let array = rmp_serde::to_vec(&("ping", 8)).unwrap();
        assert_eq!(
            decode_client(&array, Encoding::MsgPack).unwrap_err().code,
            ErrorCode::BadFrame
        );
        assert_eq!(code(r#"{"id":5}"#), (Some(5), ErrorCode::BadFrame));
        assert_eq!(
            code(r#"{"op":"jump","id":6}"#),
            (Some(6), ErrorCode::UnknownOp)
        );
        assert_eq!(
            code(r#"{"op":"pub","id":7}"#),
            (Some(7), ErrorCode::BadFrame)
        );
        assert_eq!(
            code(r#"{"op":"pub","topic":"a//b","id":8}"#),
            (Some(8), ErrorCode::BadTopic)
        );
        assert_eq!(
            code(r#"{"op":"pub","topic":"a/+","id":9}"#),
            (Some(9), ErrorCode::WildcardTopic)
        );
        assert_eq!(
            code(r#"{"op":"pub","topic":"$SYS/x","id":10}"#),
            (Some(10), ErrorCode::ReservedTopic)
        );
        assert_eq!(
            code(r#"{"op":"sub","topic":"a/#/b","id":11}"#),
            (Some(11), ErrorCode::BadFilter)
        );
        assert_eq!(
            code(r#"{"op":"hello","name":"a/b","id":12}"#),
            (Some(12), ErrorCode::BadName)
        );
        assert_eq!(
            code(r#"{"op":"pub","topic":"a","reply":"x/#","id":13}"#),
            (Some(13), ErrorCode::WildcardTopic)
        );
        // A field of the wrong type fails the frame, but the id is still read.
        assert_eq!(
            code(r#"{"op":"pub","topic":"a","retain":"yes","id":14}"#),
            (Some(14), ErrorCode::BadFrame)
        );
        assert_eq!(
            code(r#"{"op":"pub","topic":7}"#),
            (None, ErrorCode::BadFrame)
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            decode_json(r#"{"op":"ping","id":1,"future":"field"}"#).unwrap(),
            ClientFrame::Ping { id: Some(1) }
        );
    }

    #[test]
    fn bad_messagepack_is_a_bad_frame() {
        for bytes in [&[0xc1u8][..], &[0x92, 0x01][..], &[][..], &[0xde, 0xff][..]] {
            let e = decode_client(bytes, Encoding::MsgPack).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadFrame, "{bytes:?}");
        }
    }

    #[test]
    fn msg_ref_encodes_like_a_server_msg() {
        let data = json!({"level": 1});
        let r = MsgRef::new("pin/p/state", &data, Some("p"), None);
        let frame = ServerFrame::Msg(Message {
            topic: TopicName::new("pin/p/state").unwrap(),
            data: data.clone(),
            from: Some("p".into()),
            reply: None,
            retained: false,
        });
        assert_eq!(
            encode_msg_text(&r).as_bytes(),
            encode_msg(&r, Encoding::Json)
        );
        for enc in Encoding::ALL {
            assert_eq!(encode_msg(&r, enc), encode_server(&frame, enc));
            assert_eq!(decode_server(&encode_msg(&r, enc), enc).unwrap(), frame);
        }
        assert_eq!(
            String::from_utf8(encode_msg(&r, Encoding::Json)).unwrap(),
            r#"{"op":"msg","topic":"pin/p/state","data":{"level":1},"from":"p","retained":false}"#
        );
    }

    /// A plain `pub` of `data` on `topic`, as a client encodes it.
    fn encoded_pub(topic: &str, data: &Value, enc: Encoding) -> Vec<u8> {
        let frame = ClientFrame::Pub(Publish {
            topic: TopicName::new(topic).unwrap(),
            data: data.clone(),
            retain: false,
            reply: None,
            id: None,
        });
        encode_client(&frame, enc)
    }

    #[test]
    fn raw_msgpack_is_written_around_like_rmp_serde_writes_the_value() {
        let data = json!({"n": [1, -2, 2.5, "x"], "ok": true});
        let bytes = encoded_pub("a/b", &data, Encoding::MsgPack);
        let Ok(ClientFrameRef::Pub(p)) = decode_client_ref(&bytes, Encoding::MsgPack) else {
            panic!("not a pub");
        };
        // Any `op`, not only the usual one, and both optional fields.
        for op in ["msg", "other"] {
            let with = |data| MsgRef {
                op,
                retained: true,
                ..MsgRef::new("a/b", data, Some("me"), Some("_inbox/1"))
            };
            assert_eq!(
                encode_msg(&with(p.data.as_ref()), Encoding::MsgPack),
                rmp_serde::to_vec_named(&with(DataRef::Value(&data))).unwrap(),
                "{op}"
            );
        }
    }

    #[test]
    fn err_frame_omits_absent_id() {
        let e = FrameError::new(None, ErrorCode::BadFrame, "x").to_frame();
        assert_eq!(
            String::from_utf8(encode_server(&e, Encoding::Json)).unwrap(),
            r#"{"op":"err","code":"bad_frame","message":"x"}"#
        );
    }

    fn pub_ref(s: &str) -> PublishRef<'_> {
        match decode_client_ref(s.as_bytes(), Encoding::Json).unwrap() {
            ClientFrameRef::Pub(p) => p,
            other => panic!("not a pub: {other:?}"),
        }
    }

    #[test]
    fn json_data_is_kept_as_sent() {
        let p = pub_ref(r#"{"op":"pub","topic":"a","data": {"b": [1, 2.5], "a":"x\n"} ,"id":1}"#);
        let Data::Raw(raw) = p.data else {
            panic!("not raw: {:?}", p.data);
        };
        assert_eq!(raw.get(), r#"{"b": [1, 2.5], "a":"x\n"}"#);
        let msg = MsgRef::new("a", p.data.as_ref(), None, None);
        assert_eq!(
            encode_msg_text(&msg),
            r#"{"op":"msg","topic":"a","data":{"b": [1, 2.5], "a":"x\n"},"retained":false}"#
        );
    }

    #[test]
    fn missing_and_null_data_are_raw_null() {
        for s in [
            r#"{"op":"pub","topic":"a"}"#,
            r#"{"op":"pub","topic":"a","data":null}"#,
        ] {
            let p = pub_ref(s);
            assert!(matches!(p.data, Data::Raw(_)), "{s}");
            assert!(p.data.as_ref().is_null(), "{s}");
            assert_eq!(p.data.into_value(), Value::Null);
        }
        let p = pub_ref(r#"{"op":"pub","topic":"a","data":"null"}"#);
        assert!(!p.data.as_ref().is_null());
    }

    #[test]
    fn messagepack_gets_raw_data_parsed_never_as_text() {
        let p = pub_ref(r#"{"op":"pub","topic":"a","data":{"x":[1,-2,0.1,true,null]}}"#);
        assert!(matches!(p.data, Data::Raw(_)));
        let value = json!({"x":[1,-2,0.1,true,null]});
        let raw = MsgRef::new("a", p.data.as_ref(), Some("p"), None);
        let parsed = MsgRef::new("a", &value, Some("p"), None);
        assert_eq!(
            encode_msg(&raw, Encoding::MsgPack),
            encode_msg(&parsed, Encoding::MsgPack)
        );
    }

    #[test]
    fn data_that_might_not_parse_takes_the_value_path() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let cases = [
            r#"{"op":"pub","topic":"a","data":1e400,"id":1}"#.to_string(),
            format!(
                r#"{{"op":"pub","topic":"a","data":1{},"id":2}}"#,
                "0".repeat(400)
            ),
            r#"{"op":"pub","topic":"a","data":"\ud800","id":3}"#.to_string(),
            r#"{"op":"pub","topic":"a","data":"\u00e9\ud83d\ude00","id":4}"#.to_string(),
            format!(r#"{{"op":"pub","topic":"a","data":{deep},"id":5}}"#),
            r#"{"op":"pub","topic":"a","data":[1e3, 2E-2, 0.5e+1],"id":6}"#.to_string(),
            r#"{"op":"pub","topic":"a","data":[1,],"id":7}"#.to_string(),
            r#"{"op":"pub","topic":"a","data":1.7976931348623157e308,"id":8}"#.to_string(),
        ];
        for s in &cases {
            let by_ref = decode_client_ref(s.as_bytes(), Encoding::Json);
            if let Ok(ClientFrameRef::Pub(p)) = &by_ref {
                assert!(matches!(p.data, Data::Value(_)), "{s}");
            }
            assert_eq!(
                by_ref.map(ClientFrameRef::into_owned),
                decode_client(s.as_bytes(), Encoding::Json),
                "{s}"
            );
        }
    }

    #[test]
    fn passes_as_is_spots_what_might_not_parse() {
        for ok in [
            "1",
            "-0",
            "0.1",
            "[true,false,null]",
            r#"{"e":"E \" 1e9"}"#,
            r#""\\u""#,
        ] {
            assert!(passes_as_is(ok), "{ok}");
        }
        let long = "1".repeat(65);
        let deep = "[".repeat(65);
        for not in ["1e5", "-2E-3", r#""\u0041""#, &long, &deep] {
            assert!(!passes_as_is(not), "{not}");
        }
    }

    fn data() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn topic() -> impl Strategy<Value = TopicName> {
        prop::collection::vec("[a-z0-9_-]{1,6}", 1..5)
            .prop_map(|l| TopicName::new(l.join("/")).unwrap())
    }

    fn filter() -> impl Strategy<Value = TopicFilter> {
        prop::collection::vec(prop_oneof!["[a-z]{1,4}", Just("+".to_string())], 1..5)
            .prop_map(|l| TopicFilter::new(l.join("/")).unwrap())
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        let id = prop::option::of(any::<u64>());
        prop_oneof![
            (
                "[a-z][a-z0-9-]{0,10}",
                prop::option::of("[a-z]{1,8}"),
                id.clone()
            )
                .prop_map(|(name, kind, id)| ClientFrame::Hello { name, kind, id }),
            (filter(), id.clone()).prop_map(|(topic, id)| ClientFrame::Sub { topic, id }),
            (filter(), id.clone()).prop_map(|(topic, id)| ClientFrame::Unsub { topic, id }),
            (
                topic(),
                data(),
                any::<bool>(),
                prop::option::of(topic()),
                id.clone()
            )
                .prop_map(|(topic, data, retain, reply, id)| ClientFrame::Pub(
                    Publish {
                        topic,
                        data,
                        retain,
                        reply,
                        id
                    }
                )),
            id.prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    fn server_frame() -> impl Strategy<Value = ServerFrame> {
        prop_oneof![
            (
                topic(),
                data(),
                prop::option::of("[a-z0-9-]{1,8}"),
                prop::option::of(topic()),
                any::<bool>()
            )
                .prop_map(|(topic, data, from, reply, retained)| ServerFrame::Msg(
                    Message {
                        topic,
                        data,
                        from,
                        reply,
                        retained
                    }
                )),
            any::<u64>().prop_map(|id| ServerFrame::Ok { id }),
            any::<u64>().prop_map(|id| ServerFrame::Pong { id }),
            (
                prop::option::of(any::<u64>()),
                prop::sample::select(ErrorCode::ALL.to_vec()),
                "\\PC{0,20}"
            )
                .prop_map(|(id, code, message)| ServerFrame::Err { id, code, message }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in client_frame()) {
            for enc in Encoding::ALL {
                let bytes = encode_client(&frame, enc);
                prop_assert_eq!(decode_client(&bytes, enc), Ok(frame.clone()));
            }
        }

        #[test]
        fn server_frames_round_trip(frame in server_frame()) {
            for enc in Encoding::ALL {
                let bytes = encode_server(&frame, enc);
                prop_assert_eq!(decode_server(&bytes, enc), Ok(frame.clone()));
            }
        }

        #[test]
        fn raw_data_encodes_like_its_value(
            data in data(),
            topic in topic(),
            from in prop::option::of("[a-z0-9-]{1,8}"),
        ) {
            let frame = ClientFrame::Pub(Publish { topic, data, retain: false, reply: None, id: None });
            let bytes = encode_client(&frame, Encoding::Json);
            let Ok(ClientFrameRef::Pub(p)) = decode_client_ref(&bytes, Encoding::Json) else {
                panic!("not a pub");
            };
            let Ok(ClientFrame::Pub(owned)) = decode_client(&bytes, Encoding::Json) else {
                panic!("not a pub");
            };
            let raw = MsgRef::new(p.topic.as_str(), p.data.as_ref(), from.as_deref(), None);
            let parsed = MsgRef::new(owned.topic.as_str(), &owned.data, from.as_deref(), None);
            for enc in Encoding::ALL {
                prop_assert_eq!(
                    decode_server(&encode_msg(&raw, enc), enc),
                    decode_server(&encode_msg(&parsed, enc), enc)
                );
            }
            prop_assert_eq!(encode_msg_text(&raw).into_bytes(), serde_json::to_vec(&raw).unwrap());
            // MessagePack gets the very bytes the Value path writes.
            prop_assert_eq!(
                encode_msg(&raw, Encoding::MsgPack),
                encode_msg(&parsed, Encoding::MsgPack)
            );
        }

        #[test]
        fn raw_msgpack_data_is_delivered_like_its_value(
            data in data(),
            from in prop::option::of("[a-z0-9-]{1,8}"),
            reply in prop::option::of("[a-z_/0-9]{1,12}"),
            retained in any::<bool>(),
        ) {
            let bytes = encoded_pub("t", &data, Encoding::MsgPack);
            let Ok(ClientFrameRef::Pub(p)) = decode_client_ref(&bytes, Encoding::MsgPack) else {
                panic!("not a pub");
            };
            prop_assert!(matches!(p.data, Data::RawMsgPack(_)), "{:?}", p.data);
            let with = |data| MsgRef { retained, ..MsgRef::new("t", data, from.as_deref(), reply.as_deref()) };
            let (raw, parsed) = (with(p.data.as_ref()), with(DataRef::Value(&data)));
            // The publisher wrote what rmp_serde writes: the very same bytes come out.
            prop_assert_eq!(encode_msg(&raw, Encoding::MsgPack), encode_msg(&parsed, Encoding::MsgPack));
            prop_assert_eq!(encode_msg_text(&raw), encode_msg_text(&parsed));
            prop_assert_eq!(p.data.into_value(), data);
        }

        #[test]
        fn msg_text_is_byte_for_byte_what_serde_writes(
            data in data(),
            // Plain strings take the fast path; any string may need escapes and take serde's.
            topic in prop_oneof!["[a-z_/0-9é]{1,12}", any::<String>()],
            from in prop::option::of(prop_oneof!["[a-z0-9-]{1,8}", any::<String>()]),
            reply in prop::option::of(prop_oneof!["[a-z_/0-9]{1,12}", any::<String>()]),
            retained in any::<bool>(),
        ) {
            // The data as a JSON publisher sends it, raw when it can pass as is.
            let frame = format!(r#"{{"op":"pub","topic":"t","data":{data}}}"#);
            let Ok(ClientFrameRef::Pub(p)) = decode_client_ref(frame.as_bytes(), Encoding::Json) else {
                panic!("not a pub: {frame}");
            };
            let msg = MsgRef {
                retained,
                ..MsgRef::new(&topic, p.data.as_ref(), from.as_deref(), reply.as_deref())
            };
            // serde's own output, not `encode_msg` (which writes raw data the same quick way).
            prop_assert_eq!(encode_msg_text(&msg).into_bytes(), serde_json::to_vec(&msg).unwrap());
        }

        #[test]
        fn raw_data_in_any_layout_matches_the_value_path(data in data(), pretty in any::<bool>()) {
            // Text as a person or another library might write it: spaces, newlines.
            let text = if pretty {
                serde_json::to_string_pretty(&data).unwrap()
            } else {
                serde_json::to_string(&data).unwrap()
            };
            let frame = format!("{{ \"op\": \"pub\", \"data\": {text} , \"topic\": \"t\" }}");
            let by_ref = decode_client_ref(frame.as_bytes(), Encoding::Json).unwrap();
            let ClientFrameRef::Pub(p) = &by_ref else { panic!("not a pub") };
            let raw = MsgRef::new("t", p.data.as_ref(), None, None);
            let parsed = MsgRef::new("t", &data, None, None);
            for enc in Encoding::ALL {
                prop_assert_eq!(
                    decode_server(&encode_msg(&raw, enc), enc),
                    decode_server(&encode_msg(&parsed, enc), enc)
                );
            }
            prop_assert_eq!(by_ref.into_owned(), decode_client(frame.as_bytes(), Encoding::Json).unwrap());
        }

        #[test]
        fn decode_client_ref_accepts_and_refuses_like_decode_client(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            for enc in Encoding::ALL {
                prop_assert_eq!(
                    decode_client_ref(&bytes, enc).map(ClientFrameRef::into_owned),
                    decode_client(&bytes, enc)
                );
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_client(&bytes, Encoding::Json);
            let _ = decode_client(&bytes, Encoding::MsgPack);
            let _ = decode_server(&bytes, Encoding::MsgPack);
        }
    }
}
