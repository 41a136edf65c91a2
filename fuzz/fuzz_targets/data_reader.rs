//! The DATA reader: the outcome does not depend on how the input is split into reads, and
//! dot-stuffing accepted content and reading it back gives the same content, under both
//! bare-newline policies (accepted content never has a bare line ending).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mta_smtp::{BareNewline, DataLimits, DataOutcome, DataScanner};

fn scan(chunks: &[&[u8]], bare_newline: BareNewline) -> (Option<usize>, DataOutcome) {
    let limits = DataLimits { max_size: 1 << 16, max_line: 1000, bare_newline };
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
    let policy = if data[0] & 0x80 != 0 { BareNewline::Normalize } else { BareNewline::Reject };
    let split = (data[0] & 0x7f) as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let whole = scan(&[body], policy);
    let parts = scan(&[&body[..split], &body[split..]], policy);
    assert_eq!(format!("{whole:?}"), format!("{parts:?}"));
    if let (Some(_), DataOutcome::Complete(content)) = whole {
        assert!(!mta_smtp::has_bare_line_ending(&content));
        let wire = mta_smtp::dot_stuff(&content);
        let (end, again) = scan(&[&wire], BareNewline::Reject);
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
