//! Per-thread buffers, lent to a connection only while bytes are in flight: an idle
//! keep-alive connection or a quiet SSE stream holds none.

use std::cell::RefCell;

/// The capacity a buffer is lent with (hyper's initial buffer size).
pub(crate) const BUFFER: usize = 8 * 1024;
/// Buffers kept per thread.
const KEPT: usize = 64;
/// A buffer that grew past this is freed rather than kept.
const KEPT_CAPACITY: usize = 64 * 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least [`BUFFER`] bytes.
pub(crate) fn take() -> Vec<u8> {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUFFER))
}

/// Gives `buf` back (its contents are dropped); `buf` is left without allocation.
pub(crate) fn give(buf: &mut Vec<u8>) {
    let mut buf = std::mem::take(buf);
    if buf.capacity() < BUFFER || buf.capacity() > KEPT_CAPACITY {
        return;
    }
    buf.clear();
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEPT {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_lent_and_taken_back_empty() {
        let mut buf = take();
        assert!(buf.capacity() >= BUFFER);
        buf.extend_from_slice(b"abc");
        let ptr = buf.as_ptr();
        give(&mut buf);
        assert_eq!(buf.capacity(), 0);
        let again = take();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        let mut big = Vec::with_capacity(KEPT_CAPACITY + 1);
        give(&mut big);
        let other = take();
        assert_ne!(other.capacity(), KEPT_CAPACITY + 1);
    }
}
