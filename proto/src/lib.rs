//! breadboard's wire protocol, with no I/O in it.
//!
//! Parts:
//! - [`topic`]: [`TopicName`] (where a message is published) and [`TopicFilter`] (what a
//!   subscriber asks for, with `+` and `#`), validated once at construction, and the matching rule.
//! - [`frame`]: [`ClientFrame`] (client to broker) and [`ServerFrame`] (broker to client), one
//!   object per frame tagged by `op`, borrowing from the bytes they were decoded from.
//! - [`data`]: [`Data`], a published value as the frame carried it (the publisher's JSON text or
//!   MessagePack bytes, passed on as they are) or as a `Value`.
//! - [`subject`]: [`SubjectSpace`], the reversible mapping between topics or filters and the
//!   NATS subjects a cluster of brokers carries them on (`pin/+/state` ⇄ `bb.breadboard.pin.*.state`).
//! - [`name`]: the rule for `hello` names and kinds ([`check_name`], [`NameError`]).
//! - [`error`]: [`ErrorCode`] names every refusal a client can get ([`FrameError`]);
//!   [`DecodeError`] is what a client gets for a server frame it cannot read.
//! - [`encoding`] and [`codec`]: the two encodings, a codec module each (`json`, `msgpack`):
//!   decode bytes of an [`Encoding`] into a frame, encode a frame into an [`Encoded`].
//!
//! ```text
//!  bytes ──ClientFrame::decode──► ClientFrame ──(broker routes)──► ServerFrame::Msg ──encode──► Encoded
//!                                  │ errors: FrameError { id, code, message }
//! ```
//!
//! Feature `ws`: [`Encoded`] converts into tungstenite's WebSocket `Message`, so that every
//! crate maps an encoding onto a WebSocket message the same way.
//!
//! Feature `fuzzing`: exposes the serde-only reference decoder (hidden, not part of the API) to
//! the fuzz targets in `fuzz/`, which hold the quick readers to it.

pub mod codec;
pub mod data;
pub mod encoding;
pub mod error;
pub mod frame;
pub mod name;
pub mod subject;
pub mod topic;

pub use codec::Encoded;
pub use data::{AsData, Data};
pub use encoding::Encoding;
pub use error::{DecodeError, ErrorCode, FrameError};
pub use frame::{ClientFrame, Message, Publish, ServerFrame};
pub use name::{check_name, NameError, MAX_NAME_BYTES};
pub use subject::{FilterSubjects, SubjectError, SubjectSpace};
pub use topic::{Levels, TopicError, TopicFilter, TopicName};

/// Version of the wire protocol described in `PROTOCOL.md`. Advertised over DNS-SD so that a
/// node can skip a broker that speaks another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest frame a broker accepts, in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// The prefix of every topic the broker owns. Clients may subscribe to these, never publish.
pub const SYS_PREFIX: &str = "$SYS";
