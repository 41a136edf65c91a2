//! Conversion to the native document never panics, whatever the content.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mta_convert::convert_inbound(data);
});
