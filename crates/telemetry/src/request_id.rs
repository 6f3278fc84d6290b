//! Request ids: what the gateway generates when a request comes without one it trusts.

use http::{HeaderValue, Request};
use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes request ids for tower-http's `SetRequestIdLayer`: 32 hex digits, a random
/// per-process prefix then a counter, so that ids from several kestra-edge instances do not
/// collide. Cheaper than a UUID v4 (no random number per request): one atomic addition and
/// the header value.
#[derive(Debug, Clone)]
pub struct EdgeRequestIds {
    inner: Arc<Ids>,
}

#[derive(Debug)]
struct Ids {
    prefix: u64,
    next: AtomicU64,
}

impl Default for EdgeRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeRequestIds {
    /// A new sequence with a random prefix (std's per-process random hash keys).
    pub fn new() -> Self {
        let prefix = RandomState::new().hash_one(std::time::SystemTime::now());
        Self {
            inner: Arc::new(Ids {
                prefix,
                next: AtomicU64::new(0),
            }),
        }
    }
}

impl MakeRequestId for EdgeRequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let text = format!("{:016x}{n:016x}", self.inner.prefix);
        HeaderValue::try_from(text).ok().map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex_and_share_a_prefix_across_clones() {
        let mut a = EdgeRequestIds::new();
        let mut b = a.clone();
        let req = Request::new(());
        let first = a.make_request_id(&req).unwrap();
        let second = b.make_request_id(&req).unwrap();
        let (first, second) = (
            first.header_value().to_str().unwrap().to_owned(),
            second.header_value().to_str().unwrap().to_owned(),
        );
        assert_ne!(first, second);
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(first[..16], second[..16]);
        let other = EdgeRequestIds::new().make_request_id(&req).unwrap();
        assert_ne!(other.header_value().to_str().unwrap()[..16], first[..16]);
    }
}
