//! The request body sent upstream and the response body sent to the client.

use crate::{
    error::{BodyError, BoxError},
    h1::exchange::H1Body,
};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// When the client's request body last made progress, shared between the body sent upstream
/// and the future that waits for the response head.
///
/// The read timeout counts from the last request byte: a large upload that is still
/// streaming is never mistaken for a silent upstream.
#[derive(Debug)]
pub(crate) struct Progress {
    start: Instant,
    last_nanos: AtomicU64,
}

impl Progress {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            last_nanos: AtomicU64::new(0),
        }
    }

    fn record(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed))
    }
}

/// A request body went past the proxy's `max_body` while streaming: the upstream request is
/// aborted (never completed) and the client answered 413.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: u64,
}

/// The client's request body on its way upstream: frames (trailers included) pass
/// unchanged, each one recorded as progress for the read timeout, until the data passes
/// `max_body`: then the body fails with [`BodyTooLarge`].
#[derive(Debug)]
pub struct RequestBody<B> {
    // `None`: no body (a replayed bodiless request).
    inner: Option<B>,
    progress: Option<Arc<Progress>>,
    limit: u64,
    remaining: u64,
    idle_timeout: Duration,
    // Created the first time the client keeps the body waiting; its deadline counts from
    // the start of each wait, so time the upstream spent not asking for more is not counted.
    idle: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

/// The client sent nothing of its request body for `body_timeout` (nginx's
/// `client_body_timeout`): the upstream request is aborted and the client answered 408.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for {0:?}")]
pub struct BodyTimeout(pub Duration);

impl<B> RequestBody<B> {
    pub(crate) fn new(
        inner: B,
        progress: Option<Arc<Progress>>,
        limit: u64,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner: Some(inner),
            progress,
            limit,
            remaining: limit,
            idle_timeout,
            idle: None,
            waiting: false,
        }
    }

    /// No body at all.
    pub(crate) fn empty() -> Self {
        Self {
            inner: None,
            progress: None,
            limit: 0,
            remaining: 0,
            idle_timeout: Duration::MAX,
            idle: None,
            waiting: false,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let timeout = this.idle_timeout;
                let idle = match &mut this.idle {
                    Some(idle) => {
                        if !this.waiting {
                            idle.as_mut().reset(Instant::now() + timeout);
                        }
                        idle
                    }
                    None => this
                        .idle
                        .insert(Box::pin(tokio::time::sleep_until(Instant::now() + timeout))),
                };
                this.waiting = true;
                ready!(idle.as_mut().poll(cx));
                return Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))));
            }
        };
        this.waiting = false;
        if let Some(progress) = &this.progress {
            progress.record();
        }
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
            match this.remaining.checked_sub(len) {
                Some(remaining) => this.remaining = remaining,
                None => {
                    this.remaining = 0;
                    let limit = this.limit;
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

pin_project! {
    /// The body of a proxied response: the upstream's body streamed frame by frame under the
    /// read timeout, or the gateway's own short answer.
    #[derive(Debug)]
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Upstream {
            #[pin]
            body: UpstreamBody,
            // One timer for the whole body, made at the first wait on the upstream and re-armed
            // only when it fires: frames that are ready cost no clock read and no timer work,
            // and a body that never waits (a small response read with its head) has none.
            sleep: Option<Pin<Box<Sleep>>>,
            // When the proxy began waiting on the upstream; `None` while frames flow. A client
            // that stops reading is backpressure, not upstream silence, so it never counts.
            waiting_since: Option<Instant>,
            // `None`: no limit (an event stream whose idleness an outer layer governs).
            read_timeout: Option<Duration>,
        },
        Message {
            data: Option<Bytes>,
        },
    }
}

pin_project! {
    /// The upstream's body, read by hyper or by the own HTTP/1.1 path.
    #[project = UpstreamProj]
    #[derive(Debug)]
    pub(crate) enum UpstreamBody {
        Hyper {
            #[pin]
            body: Incoming,
        },
        Own {
            body: H1Body,
        },
    }
}

impl UpstreamBody {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            UpstreamProj::Hyper { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BodyError::Upstream))),
            UpstreamProj::Own { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(|e| BodyError::Connection(Box::new(e))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper { body } => body.is_end_stream(),
            Self::Own { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper { body } => body.size_hint(),
            Self::Own { body } => body.size_hint(),
        }
    }
}

impl From<Incoming> for UpstreamBody {
    fn from(body: Incoming) -> Self {
        Self::Hyper { body }
    }
}

impl From<H1Body> for UpstreamBody {
    fn from(body: H1Body) -> Self {
        Self::Own { body }
    }
}

impl ProxyBody {
    pub(crate) fn upstream(body: UpstreamBody, read_timeout: Option<Duration>) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                sleep: None,
                waiting_since: None,
                read_timeout,
            },
        }
    }

    /// A complete body holding `data`, for the gateway's own answers.
    pub fn message(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Message {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl From<&'static str> for ProxyBody {
    /// The gateway's own short answers (a 404 or 400 of an outer layer) use this.
    fn from(text: &'static str) -> Self {
        Self::message(Bytes::from_static(text.as_bytes()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project().kind.project() {
            KindProj::Upstream {
                body,
                sleep,
                waiting_since,
                read_timeout,
            } => {
                if let Poll::Ready(frame) = body.poll_frame(cx) {
                    *waiting_since = None;
                    return Poll::Ready(frame);
                }
                let Some(read_timeout) = *read_timeout else {
                    return Poll::Pending;
                };
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let sleep = sleep.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(since + read_timeout))
                });
                loop {
                    ready!(sleep.as_mut().poll(cx));
                    // The timer may be from an earlier wait: re-arm it for this one.
                    let deadline = since + read_timeout;
                    if deadline <= Instant::now() {
                        return Poll::Ready(Some(Err(BodyError::ReadTimeout)));
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
            KindProj::Message { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Message { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Message { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
