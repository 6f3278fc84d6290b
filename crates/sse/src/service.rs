//! [`SseGuardLayer`] and the [`SseGuard`] service.

use crate::body::{GuardedStream, SseBody};
use bytes::Bytes;
use http::{
    header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH},
    HeaderName, HeaderValue, Request, Response,
};
use http_body::Body;
use kestra_edge_headers::is_event_stream;
use kestra_edge_proxy::EventStreamReadTimeout;
use pin_project_lite::pin_project;
use std::{
    future::Future,
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
}

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
        };
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
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
        req.extensions_mut().insert(EventStreamReadTimeout(None));
        ResponseFuture {
            inner: self.inner.call(req),
            config: self.config.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`SseGuard`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        config: Arc<Config>,
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
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(guard(response, this.config)))
    }
}

/// An event stream's response with the SSE headers set and its body guarded.
///
/// `Content-Length` goes (heartbeats change the length); `Cache-Control: no-cache` is added
/// when absent (the nginx block's `proxy_cache off`); `X-Accel-Buffering: no`. A compressed
/// stream passes unguarded: heartbeats cannot be inserted into it.
fn guard<B>(response: Response<B>, config: &Arc<Config>) -> Response<SseBody<B>> {
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
    Response::from_parts(parts, body)
}
