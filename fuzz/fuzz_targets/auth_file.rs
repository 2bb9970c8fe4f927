//! The auth file: any text is rules or an error. The checks are in `breadboard_fuzz::auth_file`.
#![no_main]

use breadboard_fuzz::auth_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| auth_file(data));
