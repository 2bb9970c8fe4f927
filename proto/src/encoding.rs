//! [`Encoding`]: which of the two wire forms a frame is in.

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
