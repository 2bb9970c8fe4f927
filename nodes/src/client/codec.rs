//! Where the client's frames meet proto's codec: one function each way, between proto's
//! frames and WebSocket messages (text for JSON, binary for MessagePack).

use proto::codec::{decode_server, encode_client, Encoding};
use proto::{ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Encodes a frame as the WebSocket message of its encoding.
pub(super) fn encode(frame: &ClientFrame, encoding: Encoding) -> WsMessage {
    let bytes = encode_client(frame, encoding);
    match encoding {
        Encoding::Json => {
            WsMessage::text(String::from_utf8(bytes).expect("the JSON encoder writes UTF-8"))
        }
        Encoding::MsgPack => WsMessage::binary(bytes),
    }
}

/// Decodes the frame a WebSocket message carries: JSON in text, MessagePack in binary. `None`
/// for the messages that carry none (ping, pong, close).
pub(super) fn decode(msg: &WsMessage) -> Option<Result<ServerFrame, impl std::fmt::Display>> {
    match msg {
        WsMessage::Text(text) => Some(decode_server(text.as_bytes(), Encoding::Json)),
        WsMessage::Binary(bytes) => Some(decode_server(bytes, Encoding::MsgPack)),
        WsMessage::Close(_) | WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_use_the_message_type_of_their_encoding() {
        let ping = ClientFrame::Ping { id: Some(3) };
        assert!(
            matches!(encode(&ping, Encoding::Json), WsMessage::Text(t) if t.as_str() == r#"{"op":"ping","id":3}"#)
        );
        assert!(matches!(
            encode(&ping, Encoding::MsgPack),
            WsMessage::Binary(_)
        ));
    }
}
