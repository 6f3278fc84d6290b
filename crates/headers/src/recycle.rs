//! Per-thread header maps and extension sets, lent to a message while it is parsed and taken
//! back once its head is written.
//!
//! A [`HeaderMap`] makes two allocations (its index and its entries) and an [`Extensions`] two
//! more (its map and the map's table); a proxied request builds two header maps and one
//! extension set, and drops them a few microseconds later. The own HTTP/1.1 paths take them
//! from here and give them back, cleared, so that a thread makes them once rather than per
//! request. What nobody gives back is simply dropped: a message from hyper, or one a layer
//! keeps, costs what it did before.
//!
//! Memory stays bounded: each thread keeps at most [`KEPT`] of each, and a map that a large
//! head grew past [`KEPT_CAPACITY`] fields is freed rather than kept.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use kestra_edge_headers::recycle;
//!
//! let mut headers = recycle::header_map(8);
//! headers.insert("accept", HeaderValue::from_static("*/*"));
//! recycle::give_header_map(headers);
//!
//! // The same allocation, empty.
//! let again = recycle::header_map(8);
//! assert!(again.is_empty());
//! assert!(again.capacity() >= 8);
//! ```

use std::cell::RefCell;
use std::thread::LocalKey;

use http::{Extensions, HeaderMap};

/// Maps (and extension sets) kept per thread.
pub const KEPT: usize = 16;
/// A map with room for more fields than this is freed rather than kept.
pub const KEPT_CAPACITY: usize = 48;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static EXTENSIONS: RefCell<Vec<Extensions>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `capacity` fields: one given back, else a new one.
pub fn header_map(capacity: usize) -> HeaderMap {
    match MAPS.with(|maps| maps.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Takes `map` back: cleared and kept for the next [`header_map`], or dropped when this
/// thread keeps enough or the map has grown large.
pub fn give_header_map(mut map: HeaderMap) {
    let capacity = map.capacity();
    if capacity == 0 || capacity > KEPT_CAPACITY {
        return;
    }
    map.clear();
    keep(&MAPS, map);
}

/// An empty extension set: one given back (its map already allocated), else a new one.
pub fn extensions() -> Extensions {
    EXTENSIONS
        .with(|sets| sets.borrow_mut().pop())
        .unwrap_or_default()
}

/// Takes `extensions` back: its values are dropped now, its map is kept for the next
/// [`extensions`] (unless this thread keeps enough). A set that never held a value has no
/// map to keep and is dropped.
pub fn give_extensions(mut extensions: Extensions) {
    if extensions.is_empty() {
        return;
    }
    extensions.clear();
    keep(&EXTENSIONS, extensions);
}

/// Puts `item` on this thread's `list`, unless it holds [`KEPT`] already.
fn keep<T: 'static>(list: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    list.with(|list| {
        let mut list = list.borrow_mut();
        if list.len() < KEPT {
            list.push(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    /// The address of a map's first entry, once it has one.
    fn first_entry(map: &HeaderMap) -> *const HeaderValue {
        map.iter()
            .next()
            .map(|(_, value)| value as *const _)
            .unwrap()
    }

    #[test]
    fn a_map_given_back_is_lent_again_empty_with_its_allocation() {
        let mut map = header_map(8);
        map.insert("a", HeaderValue::from_static("1"));
        map.append("a", HeaderValue::from_static("2"));
        let entry = first_entry(&map);
        give_header_map(map);

        let mut again = header_map(4);
        assert!(again.is_empty());
        assert_eq!(again.get("a"), None);
        assert!(again.capacity() >= 8);
        again.insert("b", HeaderValue::from_static("3"));
        assert_eq!(first_entry(&again), entry);
    }

    #[test]
    fn a_map_lent_again_grows_to_the_room_asked_for() {
        give_header_map(HeaderMap::with_capacity(4));
        let map = header_map(KEPT_CAPACITY);
        assert!(map.capacity() >= KEPT_CAPACITY);
    }

    #[test]
    fn large_maps_are_freed_and_the_pool_is_bounded() {
        let large = HeaderMap::with_capacity(KEPT_CAPACITY * 4);
        assert!(large.capacity() > KEPT_CAPACITY);
        give_header_map(large);
        assert!(header_map(1).capacity() <= KEPT_CAPACITY);

        for _ in 0..KEPT * 2 {
            give_header_map(HeaderMap::with_capacity(4));
        }
        assert_eq!(MAPS.with(|maps| maps.borrow().len()), KEPT);
    }

    #[test]
    fn extensions_given_back_drop_their_values_now() {
        let dropped = std::sync::Arc::new(());
        let mut set = extensions();
        set.insert(dropped.clone());
        set.insert(7u32);
        give_extensions(set);
        assert_eq!(std::sync::Arc::strong_count(&dropped), 1);

        let again = extensions();
        assert!(again.is_empty());
        assert_eq!(again.get::<u32>(), None);

        // Never used: nothing to keep.
        give_extensions(Extensions::new());
        assert_eq!(EXTENSIONS.with(|sets| sets.borrow().len()), 0);
    }
}
