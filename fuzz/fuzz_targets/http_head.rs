//! The HTTP request head: any part of a head is incomplete, never an error or another head.
//! The checks are in `breadboard_fuzz::http_head`.
#![no_main]

use breadboard_fuzz::http_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| http_head(data));
