//! The two encodings of the frames: JSON (WebSocket text frames) and MessagePack with named
//! fields (WebSocket binary frames). Both carry exactly the same objects.
//!
//! Client frames are decoded through a flat, permissive envelope ([`Envelope`]) and then checked
//! field by field, so that every refusal has a precise [`ErrorCode`] and keeps the frame's `id`
//! whenever it can be read. Unknown fields are ignored, which leaves room to grow the protocol.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::frame::{check_name, ClientFrame, ErrorCode, FrameError, MsgRef, Publish, ServerFrame};
use crate::topic::{TopicFilter, TopicName};

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

/// A client frame as it arrives, before any rule is checked.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    retain: Option<bool>,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
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
    // Neither encoder can fail on these types: they write into a Vec, and every map key
    // (struct fields, `serde_json::Value` objects) is a string.
    match enc {
        Encoding::Json => serde_json::to_vec(value).expect("JSON encoding of a frame cannot fail"),
        Encoding::MsgPack => {
            rmp_serde::to_vec_named(value).expect("MessagePack encoding of a frame cannot fail")
        }
    }
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
    // serde would read a struct from an array of its fields in order; frames are objects.
    if !is_object(bytes, enc) {
        return Err(FrameError::new(
            None,
            ErrorCode::BadFrame,
            "a frame must be an object (a JSON object or a MessagePack map)",
        ));
    }
    let env: Envelope<'_> = from_bytes(bytes, enc).map_err(|message| {
        let id = from_bytes::<IdOnly>(bytes, enc).ok().and_then(|i| i.id);
        FrameError::new(id, ErrorCode::BadFrame, message)
    })?;
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
            let topic = TopicName::new(topic).map_err(|e| {
                FrameError::new(id, ErrorCode::for_topic(&e), format!("topic: {e}"))
            })?;
            let reply = env.reply.map(TopicName::new).transpose().map_err(|e| {
                FrameError::new(id, ErrorCode::for_topic(&e), format!("reply: {e}"))
            })?;
            Ok(ClientFrame::Pub(Publish {
                topic,
                data: env.data.unwrap_or(Value::Null),
                retain: env.retain.unwrap_or(false),
                reply,
                id,
            }))
        }
        op @ ("sub" | "unsub") => {
            let topic = env.topic.ok_or_else(|| missing("topic", op))?;
            let topic = TopicFilter::new(topic)
                .map_err(|e| FrameError::new(id, ErrorCode::BadFilter, format!("filter: {e}")))?;
            Ok(if op == "sub" {
                ClientFrame::Sub { topic, id }
            } else {
                ClientFrame::Unsub { topic, id }
            })
        }
        "hello" => {
            let name = env.name.ok_or_else(|| missing("name", "hello"))?;
            check_name(&name).map_err(|m| FrameError::new(id, ErrorCode::BadName, m))?;
            if let Some(kind) = &env.kind {
                check_name(kind)
                    .map_err(|m| FrameError::new(id, ErrorCode::BadName, format!("kind: {m}")))?;
            }
            Ok(ClientFrame::Hello {
                name,
                kind: env.kind,
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
    to_bytes(msg, enc)
}

/// Encodes a delivered message as JSON text, ready for a WebSocket text frame: the encoder
/// writes UTF-8 and says so, so the text needs no second check.
pub fn encode_msg_text(msg: &MsgRef<'_>) -> String {
    serde_json::to_string(msg).expect("JSON encoding of a frame cannot fail")
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
    use crate::frame::Message;

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

    #[test]
    fn err_frame_omits_absent_id() {
        let e = FrameError::new(None, ErrorCode::BadFrame, "x").to_frame();
        assert_eq!(
            String::from_utf8(encode_server(&e, Encoding::Json)).unwrap(),
            r#"{"op":"err","code":"bad_frame","message":"x"}"#
        );
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
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_client(&bytes, Encoding::Json);
            let _ = decode_client(&bytes, Encoding::MsgPack);
            let _ = decode_server(&bytes, Encoding::MsgPack);
        }
    }
}
