//! Address parsing never panics, and a parsed address prints to text that parses back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(addr) = text.parse::<mta_types::Address>() {
            let again: mta_types::Address = addr.to_string().parse().expect("printed address re-parses");
            assert_eq!(addr, again);
        }
    }
});
