//! breadboard's wire protocol, with no I/O in it.
//!
//! Parts:
//! - [`topic`]: [`TopicName`] (where a message is published) and [`TopicFilter`] (what a
//!   subscriber asks for, with `+` and `#`), validated once at construction, and the matching rule.
//! - [`frame`]: [`ClientFrame`] (client to broker) and [`ServerFrame`] (broker to client), one
//!   object per frame tagged by `op`; [`ErrorCode`] names every error a client can get.
//! - [`codec`]: the two encodings that carry those objects: JSON in WebSocket text frames (the
//!   public contract, see `PROTOCOL.md`) and MessagePack with named fields in binary frames.
//!   [`decode_client_ref`] decodes a JSON `pub` keeping its `data` as the text it came as
//!   ([`Data::Raw`]), which [`MsgRef`] writes as is into JSON and parses for MessagePack.
//! - `scan`, `scan_msgpack`: quick readers for the envelope of the usual JSON and MessagePack
//!   frames, serde being the fallback for anything else.
//!
//! ```text
//!  bytes ──codec::decode_client──► ClientFrame ──(broker routes)──► MsgRef ──codec::encode_msg──► bytes
//!                                   │ errors: FrameError { id, code, message }
//! ```

pub mod codec;
pub mod frame;
mod scan;
mod scan_msgpack;
pub mod topic;

pub use codec::{
    decode_client, decode_client_ref, decode_client_text, decode_server, encode_client, encode_msg,
    encode_msg_text, encode_server, Encoding,
};
pub use frame::{
    ClientFrame, ClientFrameRef, Data, DataRef, ErrorCode, FrameError, Message, MsgRef, Publish,
    PublishRef, RawJson, RawMsgPack, ServerFrame,
};
pub use topic::{Levels, TopicError, TopicFilter, TopicName};

/// Version of the wire protocol described in `PROTOCOL.md`. Advertised over DNS-SD so that a
/// node can skip a broker that speaks another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest frame a broker accepts, in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// The prefix of every topic the broker owns. Clients may subscribe to these, never publish.
pub const SYS_PREFIX: &str = "$SYS";
