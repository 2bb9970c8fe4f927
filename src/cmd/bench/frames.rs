//! The bench's only calls into `proto`: the `pub` a publisher sends, the `sub` a subscriber
//! sends and the `ok` it waits for, and the `hello`, `pub` and answers of the soak's
//! short-lived clients. They are kept in these few functions so that a change of proto's API is
//! adapted here alone; the rest of the bench deals in bytes and WebSocket frames.

use std::borrow::Cow;

use anyhow::Context;
use proto::{ClientFrame, Encoding, Publish, ServerFrame, TopicFilter, TopicName};

use super::{payload, wire};

/// The id of the one `sub` each subscriber sends, which the broker's `ok` echoes.
const SUB_ID: u64 = 1;

/// A client frame, encoded and framed as the WebSocket message that carries it.
fn to_websocket(frame: &ClientFrame<'_>, enc: Encoding) -> Vec<u8> {
    let opcode = match enc {
        Encoding::Json => wire::TEXT,
        Encoding::MsgPack => wire::BINARY,
    };
    let bytes = frame.encode(enc).into_bytes();
    let mut ws = Vec::with_capacity(bytes.len() + 14);
    wire::put_frame(&mut ws, opcode, &bytes);
    ws
}

/// The WebSocket frame a publisher sends to `topic`, its payload of `size` bytes carrying a
/// zeroed stamp, and where the stamp's marker is (publishers patch the stamp in place).
///
/// # Errors
/// `topic` is not a valid topic name, or the encoded frame lost the marker.
pub fn publish(topic: &str, size: usize, enc: Encoding) -> anyhow::Result<(Vec<u8>, usize)> {
    let frame = ClientFrame::Pub(Publish::new(
        TopicName::new(topic)?,
        serde_json::Value::from(payload::template(size)),
    ));
    let ws = to_websocket(&frame, enc);
    let at = payload::find(&ws).context("no marker in the encoded frame")?;
    Ok((ws, at))
}

/// The WebSocket frame of a probe on `topic`: a `pub` whose data carries no stamp, so that
/// subscribers tell it from the workload's messages and never count it.
///
/// # Errors
/// `topic` is not a valid topic name.
pub fn probe(topic: &str, enc: Encoding) -> anyhow::Result<Vec<u8>> {
    let frame = ClientFrame::Pub(Publish::new(
        TopicName::new(topic)?,
        serde_json::Value::from("probe"),
    ));
    Ok(to_websocket(&frame, enc))
}

/// The WebSocket frame that subscribes to `filter`, answered by an `ok` that [`subscribed`]
/// recognises.
///
/// # Errors
/// `filter` is not a valid topic filter.
pub fn subscribe(filter: &str, enc: Encoding) -> anyhow::Result<Vec<u8>> {
    subscribe_with_id(filter, SUB_ID, enc)
}

/// The WebSocket frame that subscribes to `filter`, answered with `ok` and `id`.
///
/// # Errors
/// `filter` is not a valid topic filter.
pub fn subscribe_with_id(filter: &str, id: u64, enc: Encoding) -> anyhow::Result<Vec<u8>> {
    let frame = ClientFrame::Sub {
        topic: TopicFilter::new(filter)?,
        id: Some(id),
    };
    Ok(to_websocket(&frame, enc))
}

/// The WebSocket frame of a `hello` naming the client `name` of kind `kind`, answered with
/// `ok` and `id`.
pub fn hello(name: &str, kind: &str, id: u64, enc: Encoding) -> Vec<u8> {
    let frame = ClientFrame::Hello {
        name: Cow::Borrowed(name),
        kind: Some(Cow::Borrowed(kind)),
        token: None,
        id: Some(id),
    };
    to_websocket(&frame, enc)
}

/// The WebSocket frame of a `pub` of `data` on `topic`, retained or not, answered with `ok`
/// and `id`. A retained `null` clears the topic's retained value.
///
/// # Errors
/// `topic` is not a valid topic name.
pub fn publish_value(
    topic: &str,
    data: serde_json::Value,
    retain: bool,
    id: u64,
    enc: Encoding,
) -> anyhow::Result<Vec<u8>> {
    let frame = ClientFrame::Pub(Publish {
        retain,
        id: Some(id),
        ..Publish::new(TopicName::new(topic)?, data)
    });
    Ok(to_websocket(&frame, enc))
}

/// What a broker's data frame says, as far as a short-lived client cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The frame with this `id` succeeded.
    Ok(u64),
    /// A frame failed, with the broker's code.
    Err {
        /// The failed frame's `id`, when it had one.
        id: Option<u64>,
        /// The broker's machine-readable reason.
        code: String,
    },
    /// A delivered message.
    Msg {
        /// Its topic.
        topic: String,
        /// Replayed from the retained store at subscribe time (not live).
        retained: bool,
        /// Its `data` is `null` (a retained value being cleared).
        null: bool,
    },
    /// Anything else (a `pong`), or what does not decode.
    Other,
}

/// Reads a data frame from the broker.
pub fn answer(payload: &[u8], enc: Encoding) -> Answer {
    match ServerFrame::decode(payload, enc) {
        Ok(ServerFrame::Ok { id }) => Answer::Ok(id),
        Ok(ServerFrame::Err { id, code, .. }) => Answer::Err {
            id,
            code: code.as_str().to_string(),
        },
        Ok(ServerFrame::Msg(m)) => Answer::Msg {
            topic: m.topic.as_str().to_string(),
            retained: m.retained,
            null: m.data.is_null(),
        },
        _ => Answer::Other,
    }
}

/// Checks that the first data frame after a [`subscribe`] is the broker's `ok` to it.
///
/// # Errors
/// Anything else: an error frame, another frame, or what does not decode.
pub fn subscribed(payload: &[u8], enc: Encoding) -> anyhow::Result<()> {
    match ServerFrame::decode(payload, enc) {
        Ok(ServerFrame::Ok { id: SUB_ID }) => Ok(()),
        other => anyhow::bail!("unexpected answer to subscribe: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::payload::Stamp;
    use super::*;

    #[test]
    fn publish_frames_carry_the_marker_in_both_encodings() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let (mut frame, at) = publish("bench/t", 64, enc).unwrap();
            let stamp = Stamp {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
            };
            payload::write(&mut frame, at, stamp);
            let header = wire::parse_header(&frame).unwrap().unwrap();
            let body = &frame[header.len..];
            let Ok(ClientFrame::Pub(p)) = ClientFrame::decode(body, enc) else {
                panic!("not a pub frame");
            };
            assert_eq!(p.data.into_value().as_str().unwrap().len(), 64);
            assert_eq!(payload::read(body), Some(stamp));
        }
    }

    #[test]
    fn soak_frames_decode_as_sent() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let body = |ws: &[u8]| {
                let header = wire::parse_header(ws).unwrap().unwrap();
                ws[header.len..].to_vec()
            };
            let hello = body(&hello("soak-1", "soak", 1, enc));
            let Ok(ClientFrame::Hello { name, kind, id, .. }) = ClientFrame::decode(&hello, enc)
            else {
                panic!("not a hello frame");
            };
            assert_eq!(
                (&*name, kind.as_deref(), id),
                ("soak-1", Some("soak"), Some(1))
            );
            let clear =
                body(&publish_value("soak/r/1", serde_json::Value::Null, true, 8, enc).unwrap());
            let Ok(ClientFrame::Pub(p)) = ClientFrame::decode(&clear, enc) else {
                panic!("not a pub frame");
            };
            assert!(p.retain);
            assert_eq!(p.id, Some(8));
            assert!(p.data.into_value().is_null());
        }
    }

    #[test]
    fn answers_are_read_from_broker_frames() {
        let enc = Encoding::Json;
        assert_eq!(answer(br#"{"op":"ok","id":7}"#, enc), Answer::Ok(7));
        assert_eq!(
            answer(
                br#"{"op":"err","id":1,"code":"name_taken","message":"x"}"#,
                enc
            ),
            Answer::Err {
                id: Some(1),
                code: "name_taken".into()
            }
        );
        assert_eq!(
            answer(
                br#"{"op":"msg","topic":"soak/r/1","data":null,"retained":false}"#,
                enc
            ),
            Answer::Msg {
                topic: "soak/r/1".into(),
                retained: false,
                null: true
            }
        );
        assert_eq!(answer(b"not json", enc), Answer::Other);
    }
}
