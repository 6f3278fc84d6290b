//! The SSE event-boundary scanner, fed any bytes cut at any points.
//!
//! Checked against a reference reading of the WHATWG rule (lines end with CRLF, LF or CR; an
//! empty line ends an event that has at least one line): the number of events completed and
//! whether the stream rests at a boundary are the same whatever the chunking, and the same
//! as the reference.
#![no_main]

use kestra_edge_sse::EventBoundary;
use libfuzzer_sys::fuzz_target;

/// (events completed, at a boundary at the end), from the whole stream at once.
fn reference(stream: &[u8]) -> (usize, bool) {
    let mut events = 0;
    let mut pending = false; // lines of an event not yet ended
    let mut line_len = 0;
    let mut i = 0;
    while i < stream.len() {
        match stream[i] {
            b'\r' | b'\n' => {
                if stream[i] == b'\r' && stream.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                if line_len == 0 {
                    if pending {
                        events += 1;
                        pending = false;
                    }
                } else {
                    pending = true;
                }
                line_len = 0;
            }
            _ => line_len += 1,
        }
        i += 1;
    }
    (events, !pending && line_len == 0)
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose where to cut; the rest is the stream.
    let Some((&cuts, stream)) = data.split_first() else {
        return;
    };
    let mut scanner = EventBoundary::default();
    let mut events = 0;
    let mut at = 0;
    let mut step = usize::from(cuts % 7) + 1;
    while at < stream.len() {
        let end = (at + step).min(stream.len());
        events += scanner.feed(&stream[at..end]);
        at = end;
        step = step * 3 % 11 + 1;
    }
    let mut whole = EventBoundary::default();
    let whole_events = whole.feed(stream);
    assert_eq!(events, whole_events, "chunking changed the count");
    assert_eq!(scanner.at_boundary(), whole.at_boundary());
    assert_eq!((whole_events, whole.at_boundary()), reference(stream));
});
