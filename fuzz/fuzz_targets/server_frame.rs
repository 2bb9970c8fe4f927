//! Server frames (the client side), in both encodings: decode, re-encode, decode the same.
//! The checks are in `breadboard_fuzz::server_frame`.
#![no_main]

use breadboard_fuzz::server_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| server_frame(data));
