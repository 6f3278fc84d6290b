//! The request body sent upstream and the response body sent to the client.

use crate::error::BodyError;
use bytes::Bytes;
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

pin_project! {
    /// The client's request body on its way upstream: frames (trailers included) pass
    /// unchanged, each one recorded as progress for the read timeout.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        progress: Option<Arc<Progress>>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, progress: Option<Arc<Progress>>) -> Self {
        Self { inner, progress }
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(progress) = this.progress {
            progress.record();
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
            body: Incoming,
            // One timer for the whole body, re-armed only when it fires: frames that are ready
            // cost no clock read and no timer work.
            #[pin]
            sleep: Sleep,
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

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, read_timeout: Option<Duration>) -> Self {
        // Never polled without a read timeout, so its deadline does not matter then.
        let first_deadline = Instant::now() + read_timeout.unwrap_or_default();
        Self {
            kind: Kind::Upstream {
                body,
                sleep: tokio::time::sleep_until(first_deadline),
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
                mut sleep,
                waiting_since,
                read_timeout,
            } => {
                if let Poll::Ready(frame) = body.poll_frame(cx) {
                    *waiting_since = None;
                    return Poll::Ready(frame.map(|r| r.map_err(BodyError::Upstream)));
                }
                let Some(read_timeout) = *read_timeout else {
                    return Poll::Pending;
                };
                let since = *waiting_since.get_or_insert_with(Instant::now);
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
