//! The bench's only calls into `proto`: the `pub` a publisher sends, the `sub` a subscriber
//! sends and the `ok` it waits for. They are kept in these few functions so that a change of
//! proto's API is adapted here alone; the rest of the bench deals in bytes and WebSocket frames.

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

/// The WebSocket frame that subscribes to `filter`, answered by an `ok` that [`subscribed`]
/// recognises.
///
/// # Errors
/// `filter` is not a valid topic filter.
pub fn subscribe(filter: &str, enc: Encoding) -> anyhow::Result<Vec<u8>> {
    let frame = ClientFrame::Sub {
        topic: TopicFilter::new(filter)?,
        id: Some(SUB_ID),
    };
    Ok(to_websocket(&frame, enc))
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
}
