//! MessagePack with named fields (maps), in WebSocket binary frames: what nodes speak. The
//! same objects as JSON.
//!
//! Decoding a client frame: the usual frame is read by a quick reader ([`envelope`]) straight
//! from the bytes, and its `data` kept as the bytes it arrived as, so the broker writes them as
//! is into the `msg` for MessagePack subscribers ([`write_msg_around`]) instead of decoding them
//! into a `Value` and encoding that again. rmp_serde is the fallback, which decides and words
//! every error.
//!
//! The quick reader reads only the plain case: string keys, the usual fields with the types they
//! should have (`id` an unsigned integer, `retain` a boolean), each at most once, and `data` a
//! value that converts to a JSON value without a change (see [`plain_value`]). Anything else
//! gives `None`, and the frame goes through rmp_serde. A property test holds what it reads to
//! what rmp_serde reads.

use std::borrow::Cow;

use rmp::Marker;
use serde::{Deserialize, Serialize};

use super::envelope::{self, set, validate, Envelope};
use crate::data::{AsData, Data, RawMsgPack};
use crate::error::FrameError;
use crate::frame::{ClientFrame, Message, ServerFrame};

/// Decodes a client frame from MessagePack bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    // The usual frame is read by hand; anything else by rmp_serde.
    match envelope(bytes) {
        Some(env) => validate(env, |data| {
            data.map_or(Data::MSGPACK_NULL, |bytes| {
                Data::msgpack_unchecked(RawMsgPack::new_unchecked(bytes))
            })
        }),
        None => decode_value(bytes),
    }
}

/// The ordinary path, through rmp_serde and a [`Value`]: the fallback, and the reference the
/// quick reader is held to.
pub(crate) fn decode_value(bytes: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    envelope::decode_value::<MsgPack>(bytes)
}

/// rmp_serde, as the ordinary path reads with it.
struct MsgPack;

impl envelope::Serde for MsgPack {
    fn is_object(bytes: &[u8]) -> bool {
        is_map(bytes)
    }

    fn read<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
        from_slice(bytes).map_err(|e| format!("invalid MessagePack: {e}"))
    }
}

/// Deepest nesting rmp_serde reads, the frame's own map included: serde_json's limit, so that
/// both encodings carry the same objects. rmp_serde's own (1024) let a MessagePack publisher's
/// data through that JSON subscribers could not read.
const MAX_NESTING: usize = 128;

/// `rmp_serde::from_slice`, with serde_json's nesting limit ([`MAX_NESTING`]) and, as
/// serde_json, nothing allowed after the value (rmp_serde alone ignores trailing bytes).
pub(crate) fn from_slice<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_NESTING);
    let value = T::deserialize(&mut de)?;
    // The borrowing reader does not tell where it stopped: skipping the value once more with
    // one that does tells its length. Only the ordinary path gets here, never the usual frame.
    let mut skip = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    skip.set_max_depth(MAX_NESTING);
    serde::de::IgnoredAny::deserialize(&mut skip)?;
    let used = usize::try_from(skip.position()).unwrap_or(usize::MAX);
    if used < bytes.len() {
        return Err(rmp_serde::decode::Error::Syntax(format!(
            "{} trailing bytes after the frame",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Whether the bytes hold a map, judging by the first: fixmap, map 16, map 32.
fn is_map(bytes: &[u8]) -> bool {
    bytes
        .first()
        .is_some_and(|b| matches!(b, 0x80..=0x8f | 0xde | 0xdf))
}

/// Encodes any frame through rmp_serde, into a buffer of `capacity` to start with.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Vec<u8> {
    // It cannot fail on these types: it writes into a Vec, and every map key (struct fields,
    // `Value` objects) is a string.
    let mut out = Vec::with_capacity(capacity);
    rmp_serde::encode::write_named(&mut out, value)
        .expect("MessagePack encoding of a frame cannot fail");
    out
}

/// Encodes a server frame: a `msg` carrying bytes a MessagePack publisher sent around them
/// ([`write_msg_around`]), anything else through rmp_serde.
pub(crate) fn encode_server<D: AsData>(frame: &ServerFrame<'_, D>) -> Vec<u8> {
    let ServerFrame::Msg(msg) = frame else {
        return to_vec(frame, 64);
    };
    let data = msg.data.as_data();
    if let Some(bytes) = data.as_msgpack() {
        return write_msg_around(msg, bytes);
    }
    // Room for the fields and the value, as far as it can be told cheaply: most messages are
    // encoded without growing the buffer (rmp_serde grows it from empty otherwise).
    let strings = [
        msg.topic.as_str(),
        msg.from.as_deref().unwrap_or(""),
        msg.reply.as_ref().map_or("", |r| r.as_str()),
    ];
    let capacity = 64 + data.size_hint() + strings.iter().map(|s| s.len()).sum::<usize>();
    to_vec(frame, capacity)
}

/// A `msg` in MessagePack around `data`, bytes a MessagePack publisher sent: the fields written
/// one by one, in the order and form rmp_serde gives them (a map of named fields), and the bytes
/// as they are.
fn write_msg_around<D>(msg: &Message<'_, D>, data: &[u8]) -> Vec<u8> {
    let from = msg.from.as_deref();
    let reply = msg.reply.as_ref().map(|r| r.as_str());
    let optional = [("from", from), ("reply", reply)];
    let fields = 4 + optional.iter().filter(|(_, v)| v.is_some()).count() as u32;
    let strings = [msg.topic.as_str(), from.unwrap_or(""), reply.unwrap_or("")];
    // Each string's header takes at most 5 bytes; the keys take 30 with theirs, `msg` 4.
    let capacity = 5 + 30 + 4 + data.len() + 1 + strings.iter().map(|s| s.len() + 5).sum::<usize>();
    let mut out = Vec::with_capacity(capacity);
    written(rmp::encode::write_map_len(&mut out, fields));
    // "op": "msg", "topic": as rmp writes them (fixstr markers), in one copy.
    out.extend_from_slice(b"\xa2op\xa3msg\xa5topic");
    written(rmp::encode::write_str(&mut out, msg.topic.as_str()));
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

/// Nesting deeper than this is left to the ordinary path.
const MAX_DEPTH: usize = 64;

/// The envelope of `bytes`, if it is a plain frame; `data` comes as its MessagePack bytes.
pub(crate) fn envelope(bytes: &[u8]) -> Option<Envelope<'_, &[u8]>> {
    let (&marker, mut rest) = bytes.split_first()?;
    let marker = Marker::from_u8(marker);
    if !matches!(marker, Marker::FixMap(_) | Marker::Map16 | Marker::Map32) {
        return None;
    }
    let fields = length(marker, &mut rest)?;
    let mut env = Envelope::default();
    for _ in 0..fields {
        // Known keys are told by their bytes, which spares checking them for UTF-8.
        let key = string_bytes(&mut rest)?;
        match key {
            b"op" => set(&mut env.op, Cow::Borrowed(op(&mut rest)?))?,
            b"topic" => set(&mut env.topic, Cow::Borrowed(string(&mut rest)?))?,
            b"reply" => set(&mut env.reply, Cow::Borrowed(string(&mut rest)?))?,
            b"name" => set(&mut env.name, Cow::Borrowed(string(&mut rest)?))?,
            b"kind" => set(&mut env.kind, Cow::Borrowed(string(&mut rest)?))?,
            b"token" => set(&mut env.token, Cow::Borrowed(string(&mut rest)?))?,
            b"id" => set(&mut env.id, unsigned(&mut rest)?)?,
            b"retain" => set(&mut env.retain, boolean(&mut rest)?)?,
            b"data" => {
                let len = plain_value(rest, 0)?;
                let (data, after) = rest.split_at(len);
                set(&mut env.data, data)?;
                rest = after;
            }
            _ => {
                std::str::from_utf8(key).ok()?;
                // Skipped when plain; anything else is rmp_serde's to skip. (Not rmp's
                // `MessageLen`: it panics on some extension types.)
                let len = plain_value(rest, 0)?;
                rest = &rest[len..];
            }
        }
    }
    rest.is_empty().then_some(env)
}

/// The length (in items, entries or bytes) a map, array or string marker gives, with what
/// follows the marker taken from the front of `rest`.
fn length(marker: Marker, rest: &mut &[u8]) -> Option<usize> {
    match marker {
        Marker::FixMap(n) | Marker::FixArray(n) | Marker::FixStr(n) => Some(usize::from(n)),
        Marker::Str8 => take_len(rest, 1),
        Marker::Map16 | Marker::Array16 | Marker::Str16 => take_len(rest, 2),
        Marker::Map32 | Marker::Array32 | Marker::Str32 => take_len(rest, 4),
        _ => None,
    }
}

/// A big-endian length of `width` bytes, taken from the front of `rest`.
fn take_len(rest: &mut &[u8], width: usize) -> Option<usize> {
    let (head, tail) = rest.split_at_checked(width)?;
    *rest = tail;
    Some(head.iter().fold(0, |len, &b| len << 8 | usize::from(b)))
}

/// A string, taken from the front of `rest`.
fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(string_bytes(rest)?).ok()
}

/// The `op`, taken from the front of `rest`: one of the protocol's told by its bytes (no UTF-8
/// check), or any other string.
fn op<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    const OPS: [&str; 5] = ["pub", "sub", "ping", "unsub", "hello"];
    let mut after = *rest;
    let bytes = string_bytes(&mut after)?;
    let op = match OPS.iter().find(|op| op.as_bytes() == bytes) {
        Some(op) => op,
        None => std::str::from_utf8(bytes).ok()?,
    };
    *rest = after;
    Some(op)
}

/// A string's bytes, not checked for UTF-8, taken from the front of `rest`.
fn string_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&marker, mut tail) = rest.split_first()?;
    let marker = Marker::from_u8(marker);
    if !matches!(
        marker,
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32
    ) {
        return None;
    }
    let len = length(marker, &mut tail)?;
    let (s, after) = tail.split_at_checked(len)?;
    *rest = after;
    Some(s)
}

/// An unsigned integer, taken from the front of `rest`.
fn unsigned(rest: &mut &[u8]) -> Option<u64> {
    let (&marker, mut tail) = rest.split_first()?;
    let n = match Marker::from_u8(marker) {
        Marker::FixPos(n) => u64::from(n),
        Marker::U8 => take_len(&mut tail, 1)? as u64,
        Marker::U16 => take_len(&mut tail, 2)? as u64,
        Marker::U32 => take_len(&mut tail, 4)? as u64,
        Marker::U64 => {
            let (head, after) = tail.split_at_checked(8)?;
            tail = after;
            u64::from_be_bytes(head.try_into().ok()?)
        }
        _ => return None,
    };
    *rest = tail;
    Some(n)
}

/// A boolean, taken from the front of `rest`.
fn boolean(rest: &mut &[u8]) -> Option<bool> {
    let (&marker, tail) = rest.split_first()?;
    let b = match Marker::from_u8(marker) {
        Marker::True => true,
        Marker::False => false,
        _ => return None,
    };
    *rest = tail;
    Some(b)
}

/// The length of the value at the front of `bytes`, if it converts to a JSON value and back
/// without a change that matters: nil, booleans, integers, finite floats, UTF-8 strings, and
/// arrays and maps of those (maps with string keys), at most [`MAX_DEPTH`] deep. Binary data,
/// extensions, `NaN` (which becomes `null`) and other keys are left to the ordinary path.
pub(crate) fn plain_value(bytes: &[u8], depth: usize) -> Option<usize> {
    let (&marker, rest) = bytes.split_first()?;
    let mut rest = rest;
    let fixed = |len: usize| (rest.len() >= len).then_some(1 + len);
    match Marker::from_u8(marker) {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            Some(1)
        }
        Marker::U8 | Marker::I8 => fixed(1),
        Marker::U16 | Marker::I16 => fixed(2),
        Marker::U32 | Marker::I32 => fixed(4),
        Marker::U64 | Marker::I64 => fixed(8),
        Marker::F32 => {
            let bits = rest.get(..4)?.try_into().ok()?;
            f32::from_be_bytes(bits).is_finite().then_some(5)
        }
        Marker::F64 => {
            let bits = rest.get(..8)?.try_into().ok()?;
            f64::from_be_bytes(bits).is_finite().then_some(9)
        }
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
            let mut rest = bytes;
            string(&mut rest)?;
            Some(bytes.len() - rest.len())
        }
        m @ (Marker::FixArray(_)
        | Marker::Array16
        | Marker::Array32
        | Marker::FixMap(_)
        | Marker::Map16
        | Marker::Map32)
            if depth < MAX_DEPTH =>
        {
            let map = matches!(m, Marker::FixMap(_) | Marker::Map16 | Marker::Map32);
            for _ in 0..length(m, &mut rest)? {
                if map {
                    string(&mut rest)?;
                }
                let len = plain_value(rest, depth + 1)?;
                rest = &rest[len..];
            }
            Some(bytes.len() - rest.len())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::super::envelope::PlainEnvelope;
    use super::*;

    /// `data` as a `Value`, `nil` as none.
    type Fields = PlainEnvelope<Value>;

    fn fields<D>(env: &Envelope<'_, D>, data: impl Fn(&D) -> Value) -> Fields {
        env.plain(|d| Some(data(d)).filter(|d| !d.is_null()))
    }

    fn serde(bytes: &[u8]) -> Option<Fields> {
        rmp_serde::from_slice::<Envelope<'_, Value>>(bytes)
            .ok()
            .map(|e| fields(&e, Value::clone))
    }

    fn quick(bytes: &[u8]) -> Option<Fields> {
        envelope(bytes).map(|e| fields(&e, |d| rmp_serde::from_slice(d).unwrap()))
    }

    /// Writes a value of some kind: mostly what frames hold, sometimes not plain. (Writes into
    /// a `Vec` cannot fail.)
    fn value(out: &mut Vec<u8>, kind: u8, n: u64, s: &str) {
        use rmp::encode::*;
        match kind % 12 {
            0 => drop(write_str(out, s)),
            1 => drop(write_uint(out, n)),
            2 => drop(write_sint(out, -(n as i64 % 1000) - 1)),
            3 => drop(write_bool(out, n % 2 == 0)),
            4 => drop(write_f64(out, n as f64 / 7.0)),
            5 => drop(write_nil(out)),
            6 => {
                // {"k": [1, "x"]}
                let _ = write_map_len(out, 1);
                let _ = write_str(out, "k");
                let _ = write_array_len(out, 2);
                let _ = write_uint(out, 1);
                let _ = write_str(out, "x");
            }
            7 => drop(write_bin(out, s.as_bytes())),
            8 => drop(write_f64(out, f64::NAN)),
            9 => {
                // A map with an integer key.
                let _ = write_map_len(out, 1);
                let _ = write_uint(out, 3);
                let _ = write_uint(out, 4);
            }
            10 => {
                // A one-byte extension (`FixExt1`).
                let _ = write_ext_meta(out, 1, 5);
                out.push(1);
            }
            _ => drop(write_f32(out, n as f32)),
        }
    }

    /// Frames of the usual keys in any order, duplicates and strangers included.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec![
            "op", "topic", "reply", "name", "kind", "id", "retain", "data", "data", "topic",
            "other",
        ]);
        let field = (key, any::<u8>(), any::<u64>(), "[a-z/é]{0,6}");
        (
            prop::collection::vec(field, 0..5),
            prop_oneof![6 => Just(vec![]), 1 => Just(vec![0xc0])],
        )
            .prop_map(|(fields, tail)| {
                let mut out = Vec::new();
                let _ = rmp::encode::write_map_len(&mut out, fields.len() as u32);
                for (key, kind, n, s) in fields {
                    let _ = rmp::encode::write_str(&mut out, key);
                    // The usual type for the usual key, most of the time.
                    let kind = match (key, kind % 3) {
                        ("id", 0 | 1) => 1,
                        ("retain", 0 | 1) => 3,
                        ("op" | "topic" | "reply" | "name" | "kind", 0 | 1) => 0,
                        _ => kind,
                    };
                    value(&mut out, kind, n, &s);
                }
                out.extend(tail);
                out
            })
    }

    #[test]
    fn the_frames_tried_are_often_plain_enough_to_read() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = frame();
        let read = (0..1000)
            .filter(|_| quick(&strategy.new_tree(&mut runner).unwrap().current()).is_some())
            .count();
        assert!(read > 150, "only {read} of 1000 frames were read by hand");
    }

    #[test]
    fn leaves_the_unusual_to_rmp_serde() {
        let mut nan = vec![0x81, 0xa4];
        nan.extend(b"data");
        nan.push(0xcb);
        nan.extend(f64::NAN.to_be_bytes());
        assert_eq!(quick(&nan), None, "NaN becomes null through a Value");
        let mut bin = vec![0x81, 0xa4];
        bin.extend(b"data");
        bin.extend([0xc4, 1, 7]);
        assert_eq!(quick(&bin), None, "binary data has no JSON form");
        assert_eq!(quick(&[0x81, 0x00, 0x01]), None, "an integer key");
        assert_eq!(quick(&[0x91, 0x01]), None, "an array");
        assert_eq!(quick(&[0x80, 0xc0]), None, "trailing bytes");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn reads_what_rmp_serde_reads_or_leaves_it(bytes in frame()) {
            if let Some(fields) = quick(&bytes) {
                prop_assert_eq!(Some(fields), serde(&bytes), "{:?}", bytes);
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = envelope(&bytes);
        }
    }
}
