//! The DATA reader: the outcome does not depend on how the input is split into reads, and
//! dot-stuffing accepted content and reading it back gives the same content.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mta_smtp::{DataLimits, DataOutcome, DataScanner};

fn scan(chunks: &[&[u8]]) -> (Option<usize>, DataOutcome) {
    let limits = DataLimits { max_size: 1 << 16, max_line: 1000 };
    let mut scanner = DataScanner::new(limits);
    let mut consumed = 0;
    for chunk in chunks {
        if let Some(n) = scanner.feed(chunk) {
            return (Some(consumed + n), scanner.finish());
        }
        consumed += chunk.len();
    }
    (None, scanner.finish())
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let whole = scan(&[body]);
    let parts = scan(&[&body[..split], &body[split..]]);
    assert_eq!(format!("{whole:?}"), format!("{parts:?}"));
    if let (Some(_), DataOutcome::Complete(content)) = whole {
        let wire = mta_smtp::dot_stuff(&content);
        let (end, again) = scan(&[&wire]);
        assert_eq!(end, Some(wire.len()));
        match again {
            DataOutcome::Complete(c2) => {
                let mut expected = content.clone();
                if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                    expected.extend_from_slice(b"\r\n");
                }
                assert_eq!(c2, expected);
            }
            other => panic!("re-read of stuffed content failed: {other:?}"),
        }
    }
});
