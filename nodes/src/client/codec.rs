//! Where the client's frames meet proto's codec: one function each way, between proto's
//! frames and WebSocket messages (text for JSON, binary for MessagePack).

use proto::{ClientFrame, DecodeError, Encoding, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Encodes a frame as the WebSocket message of its encoding.
pub(super) fn encode(frame: &ClientFrame<'_>, encoding: Encoding) -> WsMessage {
    frame.encode(encoding).into()
}

/// Decodes the frame a WebSocket message carries: JSON in text, MessagePack in binary. `None`
/// for the messages that carry none (ping, pong, close).
pub(super) fn decode(msg: &WsMessage) -> Option<Result<ServerFrame<'static>, DecodeError>> {
    match msg {
        WsMessage::Text(text) => Some(ServerFrame::decode(text.as_bytes(), Encoding::Json)),
        WsMessage::Binary(bytes) => Some(ServerFrame::decode(bytes, Encoding::MsgPack)),
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
