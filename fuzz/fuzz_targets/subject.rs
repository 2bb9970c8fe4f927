//! Topics and filters as NATS subjects, one a line: the mapping is reversible and matching agrees.
//! The checks are in `breadboard_fuzz::subject`.
#![no_main]

use breadboard_fuzz::subject;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| subject(data));
