//! The two encodings of the frames, one module each: `json` (WebSocket text frames, the
//! public contract) and `msgpack` (named fields, WebSocket binary frames). Both carry exactly
//! the same objects, and both decode a client frame the same way: a quick reader for the usual
//! frame, the encoding's serde library as the fallback, and one set of rules for the result
//! (`envelope`).
//!
//! The whole surface is four methods: [`ClientFrame::decode`] (and [`ClientFrame::decode_text`]
//! for text already known to be UTF-8), [`ClientFrame::encode`], [`ServerFrame::decode`] and
//! [`ServerFrame::encode`]. Encoding gives an [`Encoded`]: text for JSON, bytes for MessagePack,
//! which is exactly the WebSocket message to send (with the `ws` feature, `Encoded` converts
//! into tungstenite's `Message`).
//!
//! ```text
//!  json.rs     quick reader ─┐                 ┌─ quick writer (msg with data as sent)
//!              serde_json ───┼─► envelope.rs ──┤
//!  msgpack.rs  quick reader ─┤   (validate)    └─ serde (anything else)
//!              rmp_serde ────┘
//! ```

mod envelope;
mod json;
mod msgpack;

use serde_json::Value;

use crate::data::AsData;
use crate::encoding::Encoding;
use crate::error::{DecodeError, FrameError};
use crate::frame::{ClientFrame, ServerFrame};

/// An encoded frame: JSON text (a `String`, so it needs no second UTF-8 check to become a text
/// message) or MessagePack bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A JSON frame, for a WebSocket text message.
    Text(String),
    /// A MessagePack frame, for a WebSocket binary message.
    Binary(Vec<u8>),
}

impl Encoded {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }

    /// The encoded bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Text(text) => text.into_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it holds no bytes (never, for a frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(feature = "ws")]
impl From<Encoded> for tungstenite::Message {
    /// The WebSocket message that carries a frame: text for JSON, binary for MessagePack.
    fn from(encoded: Encoded) -> Self {
        match encoded {
            Encoded::Text(text) => Self::Text(text.into()),
            Encoded::Binary(bytes) => Self::Binary(bytes.into()),
        }
    }
}

impl<'a> ClientFrame<'a> {
    /// Decodes and validates a frame sent by a client, keeping a `pub`'s `data` as it arrived
    /// (JSON text or MessagePack bytes, borrowed) whenever it is sure to convert to a value.
    ///
    /// # Errors
    /// A [`FrameError`] with the code to send back: [`ErrorCode::BadFrame`](crate::ErrorCode)
    /// for anything that is not a well-formed object, `UnknownOp`, or the code of the rule the
    /// frame breaks. The same, whichever way `data` is kept.
    pub fn decode(bytes: &'a [u8], enc: Encoding) -> Result<Self, FrameError> {
        match enc {
            Encoding::Json => json::decode(bytes),
            Encoding::MsgPack => msgpack::decode(bytes),
        }
    }

    /// [`ClientFrame::decode`] for JSON already known to be UTF-8 (a WebSocket text message):
    /// it is not checked again.
    ///
    /// # Errors
    /// As [`ClientFrame::decode`].
    pub fn decode_text(text: &'a str) -> Result<Self, FrameError> {
        json::decode_text(text)
    }
}

impl ClientFrame<'_> {
    /// Encodes the frame, as a client sends it.
    pub fn encode(&self, enc: Encoding) -> Encoded {
        match enc {
            Encoding::Json => Encoded::Text(json::to_string(self)),
            Encoding::MsgPack => Encoded::Binary(msgpack::to_vec(self, 128)),
        }
    }
}

impl ServerFrame<'static, Value> {
    /// Decodes a frame sent by the broker (the client side of the protocol).
    ///
    /// # Errors
    /// A [`DecodeError`] when the bytes are not a valid server frame in `enc`.
    pub fn decode(bytes: &[u8], enc: Encoding) -> Result<Self, DecodeError> {
        Ok(match enc {
            Encoding::Json => serde_json::from_slice(bytes)?,
            Encoding::MsgPack => msgpack::from_slice(bytes)?,
        })
    }
}

/// [`ClientFrame::decode`] through the encoding's serde library and a [`Value`] alone, never the
/// quick readers: the reference they are held to.
///
/// Public only with the `fuzzing` feature, for the fuzz targets in `fuzz/` (a separate crate,
/// which must see the reference to check that both paths agree, as the property tests below
/// do); not part of the API.
///
/// # Errors
/// As [`ClientFrame::decode`].
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub fn decode_value(bytes: &[u8], enc: Encoding) -> Result<ClientFrame<'_>, FrameError> {
    match enc {
        Encoding::Json => json::decode_value(bytes),
        Encoding::MsgPack => msgpack::decode_value(bytes),
    }
}

impl<D: AsData> ServerFrame<'_, D> {
    /// Encodes the frame, as the broker sends it. A `msg` whose `data` is held as a publisher
    /// of the same encoding sent it is written around those very bytes.
    pub fn encode(&self, enc: Encoding) -> Encoded {
        match enc {
            Encoding::Json => Encoded::Text(json::encode_server(self)),
            Encoding::MsgPack => Encoded::Binary(msgpack::encode_server(self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::data::Data;
    use crate::error::ErrorCode;
    use crate::frame::{Message, Publish};
    use crate::topic::{TopicFilter, TopicName};

    fn decode_json(s: &str) -> Result<ClientFrame<'_>, FrameError> {
        ClientFrame::decode(s.as_bytes(), Encoding::Json)
    }

    /// The ordinary path of `enc`, through its serde library and a `Value`.
    fn value_path(bytes: &[u8], enc: Encoding) -> Result<ClientFrame<'_>, FrameError> {
        decode_value(bytes, enc)
    }

    fn code(s: &str) -> (Option<u64>, ErrorCode) {
        let e = decode_json(s).unwrap_err();
        (e.id, e.code)
    }

    /// A delivered message in a server frame.
    fn msg<'a, D>(
        topic: &'a str,
        data: D,
        from: Option<&'a str>,
        reply: Option<&'a str>,
        retained: bool,
    ) -> ServerFrame<'a, D> {
        ServerFrame::Msg(Message {
            topic: TopicName::system(topic).unwrap().into(),
            data,
            from: from.map(Cow::Borrowed),
            reply: reply.map(|r| TopicName::system(r).unwrap().into()),
            retained,
        })
    }

    #[test]
    fn decodes_the_documented_examples() {
        assert_eq!(
            decode_json(r#"{"op":"hello","name":"pin-1","kind":"pin"}"#).unwrap(),
            ClientFrame::Hello {
                name: "pin-1".into(),
                kind: Some("pin".into()),
                token: None,
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
                topic: TopicName::new("clock/tick").unwrap().into(),
                data: json!({"n":[1,2]}).into(),
                retain: false,
                reply: Some(TopicName::new("_inbox/c1/7").unwrap().into()),
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
            ClientFrame::decode(&array, Encoding::MsgPack)
                .unwrap_err()
                .code,
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
    fn trailing_bytes_are_a_bad_frame_in_both_encodings() {
        let mut msgpack = rmp_serde::to_vec_named(&json!({"op": "ping", "id": 7})).unwrap();
        msgpack.push(0xc0);
        let e = ClientFrame::decode(&msgpack, Encoding::MsgPack).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame, "{e}");
        assert!(e.message.contains("trailing"), "{e}");
        let e = decode_json(r#"{"op":"ping","id":7} null"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame, "{e}");
        assert!(ServerFrame::decode(&msgpack, Encoding::MsgPack).is_err());
    }

    #[test]
    fn bad_messagepack_is_a_bad_frame() {
        for bytes in [&[0xc1u8][..], &[0x92, 0x01][..], &[][..], &[0xde, 0xff][..]] {
            let e = ClientFrame::decode(bytes, Encoding::MsgPack).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadFrame, "{bytes:?}");
        }
    }

    #[test]
    fn a_msg_of_data_encodes_like_a_msg_of_its_value() {
        let data = json!({"level": 1});
        let borrowed = msg("pin/p/state", Data::from(&data), Some("p"), None, false);
        let frame = msg("pin/p/state", data.clone(), Some("p"), None, false);
        for enc in Encoding::ALL {
            assert_eq!(borrowed.encode(enc), frame.encode(enc));
            let bytes = borrowed.encode(enc).into_bytes();
            assert_eq!(ServerFrame::decode(&bytes, enc).unwrap(), frame);
        }
        assert_eq!(
            borrowed.encode(Encoding::Json),
            Encoded::Text(
                r#"{"op":"msg","topic":"pin/p/state","data":{"level":1},"from":"p","retained":false}"#
                    .into()
            )
        );
    }

    /// A plain `pub` of `data` on `topic`, as a client encodes it.
    fn encoded_pub(topic: &str, data: &Value, enc: Encoding) -> Vec<u8> {
        let frame = ClientFrame::Pub(Publish::new(TopicName::new(topic).unwrap(), data));
        frame.encode(enc).into_bytes()
    }

    #[test]
    fn raw_msgpack_is_written_around_like_rmp_serde_writes_the_value() {
        let data = json!({"n": [1, -2, 2.5, "x"], "ok": true});
        let bytes = encoded_pub("a/b", &data, Encoding::MsgPack);
        let Ok(ClientFrame::Pub(p)) = ClientFrame::decode(&bytes, Encoding::MsgPack) else {
            panic!("not a pub");
        };
        assert!(p.data.as_msgpack().is_some(), "{:?}", p.data);
        // Both optional fields, retained or not.
        for retained in [true, false] {
            let raw = msg(
                "a/b",
                p.data.as_ref(),
                Some("me"),
                Some("_inbox/1"),
                retained,
            );
            let parsed = msg("a/b", &data, Some("me"), Some("_inbox/1"), retained);
            assert_eq!(
                raw.encode(Encoding::MsgPack).into_bytes(),
                rmp_serde::to_vec_named(&parsed).unwrap(),
                "{retained}"
            );
        }
    }

    #[test]
    fn err_frame_omits_absent_id() {
        let e = FrameError::new(None, ErrorCode::BadFrame, "x");
        assert_eq!(
            e.to_frame().encode(Encoding::Json),
            Encoded::Text(r#"{"op":"err","code":"bad_frame","message":"x"}"#.into())
        );
    }

    fn pub_of(s: &str) -> Publish<'_> {
        match decode_json(s).unwrap() {
            ClientFrame::Pub(p) => p,
            other => panic!("not a pub: {other:?}"),
        }
    }

    #[test]
    fn json_data_is_kept_as_sent() {
        let p = pub_of(r#"{"op":"pub","topic":"a","data": {"b": [1, 2.5], "a":"x\n"} ,"id":1}"#);
        assert_eq!(p.data.as_json(), Some(r#"{"b": [1, 2.5], "a":"x\n"}"#));
        assert_eq!(
            msg("a", p.data.as_ref(), None, None, false).encode(Encoding::Json),
            Encoded::Text(
                r#"{"op":"msg","topic":"a","data":{"b": [1, 2.5], "a":"x\n"},"retained":false}"#
                    .into()
            )
        );
    }

    #[test]
    fn missing_and_null_data_are_raw_null() {
        for s in [
            r#"{"op":"pub","topic":"a"}"#,
            r#"{"op":"pub","topic":"a","data":null}"#,
        ] {
            let p = pub_of(s);
            assert!(p.data.as_json().is_some(), "{s}");
            assert!(p.data.is_null(), "{s}");
            assert_eq!(p.data.into_value(), Value::Null);
        }
        assert!(!pub_of(r#"{"op":"pub","topic":"a","data":"null"}"#)
            .data
            .is_null());
    }

    #[test]
    fn messagepack_gets_raw_data_parsed_never_as_text() {
        let p = pub_of(r#"{"op":"pub","topic":"a","data":{"x":[1,-2,0.1,true,null]}}"#);
        assert!(p.data.as_json().is_some());
        let value = json!({"x":[1,-2,0.1,true,null]});
        assert_eq!(
            msg("a", p.data.as_ref(), Some("p"), None, false).encode(Encoding::MsgPack),
            msg("a", Data::from(&value), Some("p"), None, false).encode(Encoding::MsgPack)
        );
    }

    /// A `pub` of `null` nested in `depth` arrays, in `enc`.
    fn nested_pub(depth: usize, enc: Encoding) -> Vec<u8> {
        match enc {
            Encoding::Json => format!(
                r#"{{"op":"pub","topic":"d","data":{}null{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes(),
            Encoding::MsgPack => {
                let mut out = b"\x83\xa2op\xa3pub\xa5topic\xa1d\xa4data".to_vec();
                out.extend(std::iter::repeat_n(0x91, depth));
                out.push(0xc0);
                out
            }
        }
    }

    // Found by fuzzing (`fuzz/`, client_frame_msgpack): rmp_serde allows 1024 levels, serde_json
    // 128, so a MessagePack publisher's deep data reached JSON subscribers as text they could
    // not read.
    #[test]
    fn data_nests_as_deep_in_both_encodings() {
        for depth in [1, 100, 126, 127, 128, 129, 200, 1000] {
            let text = nested_pub(depth, Encoding::Json);
            let json = ClientFrame::decode(&text, Encoding::Json);
            let bytes = nested_pub(depth, Encoding::MsgPack);
            let msgpack = ClientFrame::decode(&bytes, Encoding::MsgPack);
            assert_eq!(
                json.is_ok(),
                msgpack.is_ok(),
                "{depth}: {json:?} {msgpack:?}"
            );
            assert_eq!(json.as_ref().ok(), msgpack.as_ref().ok(), "{depth}");
            assert_eq!(msgpack, value_path(&bytes, Encoding::MsgPack), "{depth}");
            if let Err(e) = msgpack {
                assert_eq!((e.id, e.code), (None, ErrorCode::BadFrame), "{depth}");
            }
        }
        // 127 levels in all, the frame's own included.
        let accepted = |depth| {
            ClientFrame::decode(&nested_pub(depth, Encoding::MsgPack), Encoding::MsgPack).is_ok()
        };
        assert!(accepted(126));
        assert!(!accepted(127));
    }

    // Found by fuzzing (server_frame): the same on the client side.
    #[test]
    fn server_frames_nest_as_deep_in_both_encodings() {
        for depth in [126, 127, 128, 200] {
            let mut data = Value::Null;
            for _ in 0..depth {
                data = Value::Array(vec![data]);
            }
            let frame = msg("d", data, None, None, false);
            // Encoding has no limit; decoding has the same in both encodings.
            let json = ServerFrame::decode(frame.encode(Encoding::Json).as_bytes(), Encoding::Json);
            let msgpack = ServerFrame::decode(
                frame.encode(Encoding::MsgPack).as_bytes(),
                Encoding::MsgPack,
            );
            assert_eq!(
                json.is_ok(),
                msgpack.is_ok(),
                "{depth}: {json:?} {msgpack:?}"
            );
        }
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
            let decoded = decode_json(s);
            if let Ok(ClientFrame::Pub(p)) = &decoded {
                assert!(p.data.as_json().is_none(), "{s}");
            }
            assert_eq!(decoded, value_path(s.as_bytes(), Encoding::Json), "{s}");
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

    fn client_frame() -> impl Strategy<Value = ClientFrame<'static>> {
        let id = prop::option::of(any::<u64>());
        prop_oneof![
            (
                "[a-z][a-z0-9-]{0,10}",
                prop::option::of("[a-z]{1,8}"),
                prop::option::of("[!-~]{1,20}"),
                id.clone()
            )
                .prop_map(|(name, kind, token, id)| ClientFrame::Hello {
                    name: name.into(),
                    kind: kind.map(Cow::Owned),
                    token: token.map(Cow::Owned),
                    id
                }),
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
                        topic: topic.into(),
                        data: data.into(),
                        retain,
                        reply: reply.map(Into::into),
                        id
                    }
                )),
            id.prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    fn server_frame() -> impl Strategy<Value = ServerFrame<'static>> {
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
                        topic: topic.into(),
                        data,
                        from: from.map(Cow::Owned),
                        reply: reply.map(Into::into),
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
                .prop_map(|(id, code, message)| ServerFrame::Err {
                    id,
                    code,
                    message: message.into()
                }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in client_frame()) {
            for enc in Encoding::ALL {
                let bytes = frame.encode(enc).into_bytes();
                prop_assert_eq!(ClientFrame::decode(&bytes, enc), Ok(frame.clone()));
                prop_assert_eq!(value_path(&bytes, enc), Ok(frame.clone()));
            }
        }

        #[test]
        fn server_frames_round_trip(frame in server_frame()) {
            for enc in Encoding::ALL {
                let bytes = frame.encode(enc).into_bytes();
                prop_assert_eq!(ServerFrame::decode(&bytes, enc).unwrap(), frame.clone());
            }
        }

        #[test]
        fn raw_data_encodes_like_its_value(
            data in data(),
            topic in topic(),
            from in prop::option::of("[a-z0-9-]{1,8}"),
        ) {
            let bytes = encoded_pub(topic.as_str(), &data, Encoding::Json);
            let Ok(ClientFrame::Pub(p)) = ClientFrame::decode(&bytes, Encoding::Json) else {
                panic!("not a pub");
            };
            let Ok(ClientFrame::Pub(owned)) = value_path(&bytes, Encoding::Json) else {
                panic!("not a pub");
            };
            let raw = msg(p.topic.as_str(), p.data.as_ref(), from.as_deref(), None, false);
            let parsed = msg(owned.topic.as_str(), owned.data.as_ref(), from.as_deref(), None, false);
            for enc in Encoding::ALL {
                prop_assert_eq!(
                    ServerFrame::decode(raw.encode(enc).as_bytes(), enc).unwrap(),
                    ServerFrame::decode(parsed.encode(enc).as_bytes(), enc).unwrap()
                );
            }
            prop_assert_eq!(raw.encode(Encoding::Json).into_bytes(), serde_json::to_vec(&raw).unwrap());
            // MessagePack gets the very bytes the Value path writes.
            prop_assert_eq!(raw.encode(Encoding::MsgPack), parsed.encode(Encoding::MsgPack));
        }

        #[test]
        fn raw_msgpack_data_is_delivered_like_its_value(
            data in data(),
            from in prop::option::of("[a-z0-9-]{1,8}"),
            reply in prop::option::of("[a-z_/0-9]{1,12}"),
            retained in any::<bool>(),
        ) {
            let bytes = encoded_pub("t", &data, Encoding::MsgPack);
            let Ok(ClientFrame::Pub(p)) = ClientFrame::decode(&bytes, Encoding::MsgPack) else {
                panic!("not a pub");
            };
            prop_assert!(p.data.as_msgpack().is_some(), "{:?}", p.data);
            let reply = reply.filter(|r| TopicName::new(r.as_str()).is_ok());
            let raw = msg("t", p.data.as_ref(), from.as_deref(), reply.as_deref(), retained);
            let parsed = msg("t", Data::from(&data), from.as_deref(), reply.as_deref(), retained);
            // The publisher wrote what rmp_serde writes: the very same bytes come out.
            prop_assert_eq!(raw.encode(Encoding::MsgPack), parsed.encode(Encoding::MsgPack));
            prop_assert_eq!(raw.encode(Encoding::Json), parsed.encode(Encoding::Json));
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
            // Only valid topics make a message.
            let (Ok(topic), Ok(reply)) = (
                TopicName::system(topic),
                reply.map(TopicName::system).transpose(),
            ) else {
                return Ok(());
            };
            // The data as a JSON publisher sends it, raw when it can pass as is.
            let frame = format!(r#"{{"op":"pub","topic":"t","data":{data}}}"#);
            let Ok(ClientFrame::Pub(p)) = decode_json(&frame) else {
                panic!("not a pub: {frame}");
            };
            let m = ServerFrame::Msg(Message {
                topic: topic.borrowed(),
                data: p.data.as_ref(),
                from: from.as_deref().map(Cow::Borrowed),
                reply: reply.as_ref().map(TopicName::borrowed),
                retained,
            });
            // serde's own output, not `encode` (which writes raw data the same quick way).
            prop_assert_eq!(m.encode(Encoding::Json).into_bytes(), serde_json::to_vec(&m).unwrap());
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
            let decoded = decode_json(&frame).unwrap();
            let ClientFrame::Pub(p) = &decoded else { panic!("not a pub") };
            let raw = msg("t", p.data.as_ref(), None, None, false);
            let parsed = msg("t", Data::from(&data), None, None, false);
            for enc in Encoding::ALL {
                prop_assert_eq!(
                    ServerFrame::decode(raw.encode(enc).as_bytes(), enc).unwrap(),
                    ServerFrame::decode(parsed.encode(enc).as_bytes(), enc).unwrap()
                );
            }
            prop_assert_eq!(decoded.clone(), value_path(frame.as_bytes(), Encoding::Json).unwrap());
        }

        #[test]
        fn the_quick_path_accepts_and_refuses_like_the_value_path(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            for enc in Encoding::ALL {
                prop_assert_eq!(ClientFrame::decode(&bytes, enc), value_path(&bytes, enc));
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(ClientFrame::decode_text(text), value_path(&bytes, Encoding::Json));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = ClientFrame::decode(&bytes, Encoding::Json);
            let _ = ClientFrame::decode(&bytes, Encoding::MsgPack);
            let _ = ServerFrame::decode(&bytes, Encoding::MsgPack);
            let _ = ServerFrame::decode(&bytes, Encoding::Json);
        }
    }
}
