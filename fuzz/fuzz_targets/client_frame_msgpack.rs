//! Client frames in MessagePack: the quick reader agrees with rmp_serde, and round trips.
//! The checks are in `breadboard_fuzz::client_frame`.
#![no_main]

use breadboard_fuzz::client_frame;
use libfuzzer_sys::fuzz_target;
use proto::Encoding;

fuzz_target!(|data: &[u8]| client_frame(data, Encoding::MsgPack));
