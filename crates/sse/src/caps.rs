//! Caps on open event streams, per client and in all, against reconnect storms: each
//! reconnect of Kestra's logs stream replays the whole log history, and reconnect churn
//! leaked memory in Kestra's webserver until it fell over (Kestra issues 16982, 17204).

use http::{header::ACCEPT, HeaderMap, HeaderValue, StatusCode};
use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, PoisonError,
    },
};

/// Default cap of event streams open at once per client address.
pub const DEFAULT_MAX_STREAMS_PER_CLIENT: u32 = 64;

/// A response extension on the answer refusing an event stream over a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamCapExceeded {
    /// The client already has its cap of streams open (answered 429).
    PerClient,
    /// The gateway already has its cap of streams open (answered 503).
    Total,
}

impl StreamCapExceeded {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::PerClient => StatusCode::TOO_MANY_REQUESTS,
            Self::Total => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::PerClient => "too many event streams from this client\n",
            Self::Total => "too many event streams\n",
        }
    }
}

/// The open streams, counted against the caps; shared by every worker's stack.
pub(crate) struct StreamCaps {
    per_client: Option<u32>,
    total: Option<u32>,
    pub(crate) retry_after: HeaderValue,
    open: AtomicU32,
    by_client: Mutex<HashMap<IpAddr, u32>>,
}

impl fmt::Debug for StreamCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCaps")
            .field("per_client", &self.per_client)
            .field("total", &self.total)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StreamCaps {
    /// `None` when neither cap is set.
    pub(crate) fn new(
        per_client: Option<u32>,
        total: Option<u32>,
        retry_after_secs: u64,
    ) -> Option<Arc<Self>> {
        if per_client.is_none() && total.is_none() {
            return None;
        }
        Some(Arc::new(Self {
            per_client,
            total,
            retry_after: HeaderValue::from(retry_after_secs),
            open: AtomicU32::new(0),
            by_client: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn per_client(&self) -> Option<u32> {
        self.per_client
    }

    pub(crate) fn total(&self) -> Option<u32> {
        self.total
    }

    /// The cap a new stream of `client` would exceed now, without taking a slot: lets a
    /// request that asks for an event stream be refused before it reaches Kestra.
    pub(crate) fn full(&self, client: Option<IpAddr>) -> Option<StreamCapExceeded> {
        if self
            .total
            .is_some_and(|max| self.open.load(Ordering::Relaxed) >= max)
        {
            return Some(StreamCapExceeded::Total);
        }
        let (max, client) = (self.per_client?, client?);
        let by_client = self
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (by_client.get(&client).copied().unwrap_or(0) >= max)
            .then_some(StreamCapExceeded::PerClient)
    }

    /// Takes a slot for a stream of `client`, freed when the slot is dropped.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        client: Option<IpAddr>,
    ) -> Result<StreamSlot, StreamCapExceeded> {
        let total = self.total.unwrap_or(u32::MAX);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < total).then_some(open + 1)
            })
            .map_err(|_| StreamCapExceeded::Total)?;
        let mut slot = StreamSlot {
            caps: self.clone(),
            client: None,
        };
        let (Some(max), Some(client)) = (self.per_client, client) else {
            return Ok(slot);
        };
        let mut by_client = self
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = by_client.entry(client).or_insert(0);
        if *count >= max {
            // Dropping `slot` gives the total back.
            return Err(StreamCapExceeded::PerClient);
        }
        *count += 1;
        slot.client = Some(client);
        Ok(slot)
    }
}

/// One open stream's place under the caps; freed when dropped, that is as soon as the
/// stream's body ends or is dropped.
pub(crate) struct StreamSlot {
    caps: Arc<StreamCaps>,
    client: Option<IpAddr>,
}

impl fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSlot")
            .field("client", &self.client)
            .finish()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut by_client = self
                .caps
                .by_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = by_client.get_mut(&client) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    by_client.remove(&client);
                }
            }
        }
        self.caps.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the request asks for an event stream: `Accept: text/event-stream`, which
/// `EventSource` always sends (WHATWG HTML §9.2.2). Only to refuse early: a stream is
/// recognised by its response's `Content-Type`.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(kestra_edge_headers::is_event_stream_media_type)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_client_and_in_all_and_freed_when_dropped() {
        let caps = StreamCaps::new(Some(2), Some(3), 5).unwrap();
        let a = Some("192.0.2.1".parse().unwrap());
        let b = Some("192.0.2.2".parse().unwrap());
        let a1 = caps.acquire(a).unwrap();
        let _a2 = caps.acquire(a).unwrap();
        assert_eq!(caps.full(a), Some(StreamCapExceeded::PerClient));
        assert_eq!(caps.acquire(a).unwrap_err(), StreamCapExceeded::PerClient);
        // A refusal takes nothing.
        assert_eq!(caps.open.load(Ordering::Relaxed), 2);
        let _b1 = caps.acquire(b).unwrap();
        assert_eq!(caps.full(b), Some(StreamCapExceeded::Total));
        assert_eq!(caps.acquire(b).unwrap_err(), StreamCapExceeded::Total);
        drop(a1);
        assert_eq!(caps.full(a), None);
        let _a3 = caps.acquire(a).unwrap();
        // No client address: only the total applies.
        assert_eq!(caps.acquire(None).unwrap_err(), StreamCapExceeded::Total);
    }

    #[test]
    fn the_client_map_forgets_clients_with_no_stream() {
        let caps = StreamCaps::new(Some(1), None, 5).unwrap();
        for i in 0..100u8 {
            let slot = caps.acquire(Some(IpAddr::from([192, 0, 2, i]))).unwrap();
            drop(slot);
        }
        assert!(caps.by_client.lock().unwrap().is_empty());
        assert_eq!(caps.open.load(Ordering::Relaxed), 0);
        assert!(StreamCaps::new(None, None, 5).is_none());
    }

    use crate::SseGuardLayer;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use kestra_edge_forwarded::ClientAddr;
    use std::sync::atomic::AtomicUsize;
    use tower::{service_fn, Layer, ServiceExt};

    #[tokio::test]
    async fn a_stream_over_the_cap_is_refused_and_a_closed_one_frees_its_slot() {
        let upstream_calls = Arc::new(AtomicUsize::new(0));
        let calls = upstream_calls.clone();
        let service = SseGuardLayer::new()
            .max_streams_per_client(Some(1))
            .max_streams(Some(2))
            .layer(service_fn(move |_req: Request<()>| {
                calls.fetch_add(1, Ordering::Relaxed);
                let mut response = Response::new(Full::new(Bytes::from_static(b"data: x\n\n")));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                async { Ok::<_, std::convert::Infallible>(response) }
            }));
        let request = |client: [u8; 4], event_source: bool| {
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(ClientAddr(IpAddr::from(client)));
            if event_source {
                req.headers_mut()
                    .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
            }
            req
        };
        let a = [192, 0, 2, 1];
        let first = service.clone().oneshot(request(a, true)).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        // An EventSource over its cap never reaches the upstream.
        let refused = service.clone().oneshot(request(a, true)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[http::header::RETRY_AFTER], "5");
        assert_eq!(
            refused.extensions().get::<StreamCapExceeded>(),
            Some(&StreamCapExceeded::PerClient)
        );
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"too many event streams from this client\n");
        assert_eq!(upstream_calls.load(Ordering::Relaxed), 1);
        // Without `Accept`, it is refused when the stream's head arrives.
        let late = service.clone().oneshot(request(a, false)).await.unwrap();
        assert_eq!(late.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(upstream_calls.load(Ordering::Relaxed), 2);
        // The total cap: another client's second stream would be the third.
        let b = [192, 0, 2, 2];
        let second = service.clone().oneshot(request(b, true)).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK);
        let over = service
            .clone()
            .oneshot(request([192, 0, 2, 3], true))
            .await
            .unwrap();
        assert_eq!(over.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            over.extensions().get::<StreamCapExceeded>(),
            Some(&StreamCapExceeded::Total)
        );
        // The first stream runs to its end: its slot is free at once.
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"data: x\n\n");
        let again = service.clone().oneshot(request(a, true)).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        // A dropped stream frees its slot too.
        drop(second);
        let again = service.clone().oneshot(request(b, true)).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
    }

    #[test]
    fn an_event_source_request_is_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_event_stream(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        assert!(accepts_event_stream(&headers));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert!(accepts_event_stream(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!accepts_event_stream(&headers));
    }
}
