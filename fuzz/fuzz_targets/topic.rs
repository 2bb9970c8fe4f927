//! Topic names and filters, one a line: validation, and the broker's trie against the reference rule.
//! The checks are in `breadboard_fuzz::topic`.
#![no_main]

use breadboard_fuzz::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| topic(data));
