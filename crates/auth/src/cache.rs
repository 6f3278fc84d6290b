//! The allow cache: a page load and its SSE reconnects do not each ask the auth service.

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::time::Instant;

/// SHA-256 of the exact `Cookie` and `Authorization` values: the raw credentials are never
/// kept, and two clients collide only if SHA-256 does.
pub(crate) type CacheKey = [u8; 32];

/// The identity headers of a 2xx answer, copied onto each request it allows.
pub(crate) type Identity = Arc<[(HeaderName, HeaderValue)]>;

/// Allow decisions for a while, bounded in size; denials are never stored.
#[derive(Debug)]
pub(crate) struct AllowCache {
    ttl: Duration,
    capacity: usize,
    state: Mutex<State>,
    hits: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CacheKey, (Instant, Identity)>,
    // Insertion order, for evicting the oldest entry when full; stale rows (the key was
    // stored again since) are skipped.
    order: VecDeque<(CacheKey, Instant)>,
}

impl AllowCache {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            state: Mutex::default(),
            hits: AtomicU64::new(0),
        }
    }

    /// The key of a request, or `None` when it carries neither `Cookie` nor `Authorization`:
    /// an anonymous allow may depend on the path, so it is never cached.
    pub(crate) fn key(headers: &HeaderMap) -> Option<CacheKey> {
        let cookie = headers.get_all(http::header::COOKIE);
        let authorization = headers.get_all(http::header::AUTHORIZATION);
        if cookie.iter().next().is_none() && authorization.iter().next().is_none() {
            return None;
        }
        let mut hash = Sha256::new();
        // Every value is length-prefixed, so no two header sets hash the same input.
        for (tag, values) in [(b'c', cookie), (b'a', authorization)] {
            for value in values {
                hash.update([tag]);
                hash.update((value.len() as u64).to_le_bytes());
                hash.update(value.as_bytes());
            }
        }
        Some(hash.finalize().into())
    }

    /// The identity of a live entry, counted as a hit.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<Identity> {
        let mut state = self.lock();
        let (expires, identity) = state.entries.get(key)?;
        if *expires <= Instant::now() {
            state.entries.remove(key);
            return None;
        }
        let identity = identity.clone();
        drop(state);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(identity)
    }

    /// Stores an allow decision until the TTL ends, evicting the oldest entries when full.
    pub(crate) fn insert(&self, key: CacheKey, identity: Identity) {
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut state = self.lock();
        while state.entries.len() >= self.capacity && !state.entries.contains_key(&key) {
            let Some((old, stored)) = state.order.pop_front() else {
                break;
            };
            if state.entries.get(&old).is_some_and(|(e, _)| *e == stored) {
                state.entries.remove(&old);
            }
        }
        state.entries.insert(key, (expires, identity));
        state.order.push_back((key, expires));
        // Stale rows pile up when the same clients come back; keep the queue bounded too.
        if state.order.len() > self.capacity.saturating_mul(2) {
            let State { entries, order } = &mut *state;
            order.retain(|(k, e)| entries.get(k).is_some_and(|(live, _)| live == e));
        }
    }

    /// Requests allowed from the cache, without asking the auth service.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Entries held, expired ones included until they are looked up or evicted.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(cookie: Option<&str>, authorization: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(c) = cookie {
            map.insert(http::header::COOKIE, c.parse().unwrap());
        }
        if let Some(a) = authorization {
            map.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        map
    }

    #[test]
    fn keys_tell_cookie_from_authorization() {
        assert_eq!(AllowCache::key(&headers(None, None)), None);
        let a = AllowCache::key(&headers(Some("x"), None));
        let b = AllowCache::key(&headers(None, Some("x")));
        let c = AllowCache::key(&headers(Some("x"), Some("x")));
        assert!(a.is_some() && a != b && a != c && b != c);
        assert_eq!(a, AllowCache::key(&headers(Some("x"), None)));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_size_is_bounded() {
        let cache = AllowCache::new(Duration::from_secs(10), 2);
        let identity: Identity = Arc::from(Vec::new());
        let key = |n: u8| [n; 32];
        cache.insert(key(1), identity.clone());
        assert!(cache.get(&key(1)).is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.get(&key(1)).is_none());
        for n in 0..10 {
            cache.insert(key(n), identity.clone());
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key(9)).is_some() && cache.get(&key(8)).is_some());
        assert!(cache.get(&key(0)).is_none());
        assert_eq!(cache.hits(), 3);
    }
}
