//! [`SseGuardLayer`] and the [`SseGuard`] service.

use crate::{
    body::{GuardedStream, SseBody},
    caps::{accepts_event_stream, StreamCapExceeded, StreamCaps, StreamSlot},
};
use bytes::Bytes;
use http::{
    header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, RETRY_AFTER},
    HeaderName, HeaderValue, Request, Response,
};
use http_body::Body;
use kestra_edge_forwarded::client_addr;
use kestra_edge_headers::{is_event_stream, plain_text};
use kestra_edge_proxy::EventStreamReadTimeout;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tower::{Layer, Service};

/// `X-Accel-Buffering: no` tells an nginx further out not to buffer this response.
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default idle limit: Kestra's own idle timeout, 60 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) retry_base: Duration,
    pub(crate) retry_jitter: Duration,
    /// The stream caps, when any is set; shared by every clone of the layer.
    caps: Option<Arc<StreamCaps>>,
    /// Whether each request is marked for the proxy with `EventStreamReadTimeout(None)`.
    mark_requests: bool,
}

/// `Retry-After` of a stream refused over a cap: a few seconds, like a browser's own
/// `EventSource` reconnection delay.
const CAP_RETRY_AFTER_SECS: u64 = 5;

/// Makes every Server-Sent Events response safe to proxy; see the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct SseGuardLayer {
    config: Arc<Config>,
}

impl Default for SseGuardLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl SseGuardLayer {
    /// Heartbeat every 15 s of quiet, end after 60 minutes without upstream data, no
    /// lifetime cap.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                heartbeat: Some(DEFAULT_HEARTBEAT),
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                max_lifetime: None,
                retry_base: Duration::from_secs(1),
                retry_jitter: Duration::from_secs(4),
                caps: None,
                mark_requests: true,
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            heartbeat: self.config.heartbeat,
            idle_timeout: self.config.idle_timeout,
            max_lifetime: self.config.max_lifetime,
            retry_base: self.config.retry_base,
            retry_jitter: self.config.retry_jitter,
            caps: self.config.caps.clone(),
            mark_requests: self.config.mark_requests,
        };
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
    }

    /// Whether each request carries `EventStreamReadTimeout(None)` to the proxy behind, so
    /// that the proxy's read timeout does not cut a quiet event stream first (default on).
    /// Off when that proxy is built with `ReverseProxyBuilder::event_stream_read_timeout(None)`,
    /// as the kestra-edge facade does: one allocation less per request.
    pub fn mark_requests(self, on: bool) -> Self {
        self.with(|c| c.mark_requests = on)
    }

    /// Sends a `:` comment block after this much quiet (`None` or zero: never).
    pub fn heartbeat(self, every: Option<Duration>) -> Self {
        self.with(|c| c.heartbeat = every.filter(|d| !d.is_zero()))
    }

    /// Ends a stream, at an event boundary, after this long without upstream data
    /// (heartbeats do not count; `None` or zero: never).
    pub fn idle_timeout(self, idle: Option<Duration>) -> Self {
        self.with(|c| c.idle_timeout = idle.filter(|d| !d.is_zero()))
    }

    /// Ends every stream at the first event boundary after this long, with a `retry:` of
    /// `retry_base` plus up to `retry_jitter` (defaults 1 s and 4 s) so that reconnecting
    /// browsers spread out (`None` or zero: no cap).
    pub fn max_lifetime(self, cap: Option<Duration>) -> Self {
        self.with(|c| c.max_lifetime = cap.filter(|d| !d.is_zero()))
    }

    /// Refuses an event stream with 429 and `Retry-After` while its client (the
    /// [`ClientAddr`](kestra_edge_forwarded::ClientAddr) the forwarded layer resolved, trusted proxies considered) has `max`
    /// open (`None` or zero: no cap). A request asking for an event stream
    /// (`Accept: text/event-stream`) is refused before it reaches the upstream; any other
    /// response that turns out to be one is refused when its head arrives, and the
    /// upstream's stream closed. A stream frees its slot as soon as its body ends or is
    /// dropped. Without a client address only [`max_streams`](Self::max_streams) applies.
    pub fn max_streams_per_client(self, max: Option<u32>) -> Self {
        let total = self.config.caps.as_ref().and_then(|c| c.total());
        self.with(|c| {
            c.caps = StreamCaps::new(max.filter(|&m| m > 0), total, CAP_RETRY_AFTER_SECS);
        })
    }

    /// Refuses an event stream with 503 and `Retry-After` while `max` are open through this
    /// layer and its clones, whatever their client (`None` or zero: no cap).
    pub fn max_streams(self, max: Option<u32>) -> Self {
        let per_client = self.config.caps.as_ref().and_then(|c| c.per_client());
        self.with(|c| {
            c.caps = StreamCaps::new(per_client, max.filter(|&m| m > 0), CAP_RETRY_AFTER_SECS);
        })
    }

    /// The reconnection delay sent at the lifetime cap: `base` plus a random part below
    /// `jitter`.
    pub fn retry(self, base: Duration, jitter: Duration) -> Self {
        self.with(|c| {
            c.retry_base = base;
            c.retry_jitter = jitter;
        })
    }
}

impl<S> Layer<S> for SseGuardLayer {
    type Service = SseGuard<S>;

    fn layer(&self, inner: S) -> SseGuard<S> {
        SseGuard {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`SseGuardLayer`].
#[derive(Debug, Clone)]
pub struct SseGuard<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SseGuard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<SseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // This layer governs event streams' idleness; the proxy's read timeout must not
        // cut a quiet stream first.
        if self.config.mark_requests {
            req.extensions_mut().insert(EventStreamReadTimeout(None));
        }
        let mut client = None;
        if let Some(caps) = &self.config.caps {
            client = client_addr(&req);
            if accepts_event_stream(req.headers()) {
                if let Some(refused) = caps.full(client) {
                    return ResponseFuture {
                        inner: None,
                        config: self.config.clone(),
                        client,
                        refused: Some(refused),
                    };
                }
            }
        }
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            config: self.config.clone(),
            client,
            refused: None,
        }
    }
}

pin_project! {
    /// Response future of [`SseGuard`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // `None` for a stream refused before it reached the upstream.
        #[pin]
        inner: Option<F>,
        config: Arc<Config>,
        client: Option<IpAddr>,
        refused: Option<StreamCapExceeded>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<SseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Ok(refusal(refused, this.config)));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            // Polled again after the refusal was returned.
            return Poll::Pending;
        };
        let response = ready!(inner.poll(cx))?;
        let slot = match &this.config.caps {
            Some(caps) if is_event_stream(response.headers()) => {
                match caps.acquire(*this.client) {
                    Ok(slot) => Some(slot),
                    // Dropping the response closes the upstream's stream at once.
                    Err(refused) => return Poll::Ready(Ok(refusal(refused, this.config))),
                }
            }
            _ => None,
        };
        Poll::Ready(Ok(guard(response, this.config, slot)))
    }
}

/// The answer to a stream over a cap: 429 or 503, `Retry-After`, and a
/// [`StreamCapExceeded`] extension saying which cap.
fn refusal<B>(refused: StreamCapExceeded, config: &Config) -> Response<SseBody<B>> {
    let text = refused.message();
    let mut response = plain_text::<Bytes>(refused.status(), text).map(|_| SseBody::message(text));
    if let Some(caps) = &config.caps {
        response
            .headers_mut()
            .insert(RETRY_AFTER, caps.retry_after.clone());
    }
    response.extensions_mut().insert(refused);
    response
}

/// An event stream's response with the SSE headers set and its body guarded.
///
/// `Content-Length` goes (heartbeats change the length); `Cache-Control: no-cache` is added
/// when absent (the nginx block's `proxy_cache off`); `X-Accel-Buffering: no`. A compressed
/// stream passes unguarded: heartbeats cannot be inserted into it.
fn guard<B>(
    response: Response<B>,
    config: &Arc<Config>,
    slot: Option<StreamSlot>,
) -> Response<SseBody<B>> {
    if !is_event_stream(response.headers()) {
        return response.map(SseBody::plain);
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    if !parts.headers.contains_key(CACHE_CONTROL) {
        parts
            .headers
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    parts
        .headers
        .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    let encoded = parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let body = if encoded {
        SseBody::plain(body)
    } else {
        SseBody::guarded(GuardedStream::new(body, config.clone()))
    };
    Response::from_parts(parts, body.holding(slot))
}
