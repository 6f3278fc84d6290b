//! Where Server-Sent Events end, tracked across arbitrary chunks.

/// Tracks whether a byte stream stands at an event boundary.
///
/// WHATWG HTML §9.2.6: lines end with CRLF, LF or CR, and an empty line dispatches the event.
/// So the stream is at a boundary at its start and right after an empty line, and anything
/// else (a field, a comment, a partial line) is inside an event. A CR at the end of one chunk
/// and an LF at the start of the next are one line ending.
#[derive(Debug, Clone, Copy)]
pub struct EventBoundary {
    at_boundary: bool,
    at_line_start: bool,
    after_cr: bool,
}

impl Default for EventBoundary {
    fn default() -> Self {
        Self {
            at_boundary: true,
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl EventBoundary {
    /// Feeds the next bytes of the stream; returns how many events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut completed = 0;
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    // The LF of a CRLF: the line ending was counted at the CR.
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    if self.at_line_start && !self.at_boundary {
                        self.at_boundary = true;
                        completed += 1;
                    }
                    self.at_line_start = true;
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.at_line_start = false;
                    self.at_boundary = false;
                }
            }
        }
        completed
    }

    /// Whether bytes inserted now would stand between two events, never inside one.
    pub fn at_boundary(&self) -> bool {
        self.at_boundary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one by one; the boundary state after each and the events completed.
    fn run(chunks: &[&str]) -> (Vec<bool>, usize) {
        let mut boundary = EventBoundary::default();
        let mut events = 0;
        let states = chunks
            .iter()
            .map(|chunk| {
                events += boundary.feed(chunk.as_bytes());
                boundary.at_boundary()
            })
            .collect();
        (states, events)
    }

    #[test]
    fn boundaries_across_chunks_and_line_endings() {
        let cases: [(&[&str], &[bool], usize); 14] = [
            (&["data: a\n\n"], &[true], 1),
            (&["data: a\n", "\n"], &[false, true], 1),
            (&["data: a", "\n\n"], &[false, true], 1),
            (&["da", "ta: a\n", "\n"], &[false, false, true], 1),
            (&["data: a\r\n\r\n"], &[true], 1),
            (&["data: a\r\n\r", "\n"], &[true, true], 1),
            (&["data: a\r", "\n", "\r\n"], &[false, false, true], 1),
            (&["data: a\r\r"], &[true], 1),
            (&["data: a\r", "\r"], &[false, true], 1),
            (&["data: a\n\r"], &[true], 1),
            (
                &["id: start\ndata: {}\n\nid: progress\ndata: {}\n"],
                &[false],
                1,
            ),
            (&[": comment\n\n", "retry: 1000\n\n"], &[true, true], 2),
            (&["\n\n\n"], &[true], 0),
            (&["data: a\n\n", "data: b\n\ndata: c\n\n"], &[true, true], 3),
        ];
        for (chunks, states, events) in cases {
            assert_eq!(run(chunks), (states.to_vec(), events), "{chunks:?}");
        }
    }

    #[test]
    fn a_lone_cr_then_data_is_inside_the_next_event() {
        // "a\r" ends the line; "b" starts a new line of the same event.
        assert_eq!(run(&["data: a\r", "data: b"]), (vec![false, false], 0));
    }
}
