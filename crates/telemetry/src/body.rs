//! The response body: an event stream counts as open until its body ends.

use crate::registry::Inner;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{ready, Context, Poll},
};

pin_project! {
    /// The body of [`Telemetry`](crate::Telemetry)'s responses: the inner body, frame by
    /// frame; for an event stream, it holds the stream's place in
    /// `kestra_edge_sse_streams_open` until it ends or is dropped.
    pub struct TelemetryBody<B> {
        #[pin]
        inner: B,
        open: Option<OpenStream>,
    }
}

/// One open event stream; closed when dropped.
struct OpenStream(Arc<Inner>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.sse_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B> TelemetryBody<B> {
    pub(crate) fn plain(inner: B) -> Self {
        Self { inner, open: None }
    }

    pub(crate) fn event_stream(inner: B, metrics: Arc<Inner>) -> Self {
        Self {
            inner,
            open: Some(OpenStream(metrics)),
        }
    }
}

impl<B: Body> Body for TelemetryBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        // The end, or an error that ends it: the stream is closed now, not when the
        // connection gets round to dropping the body.
        if !matches!(frame, Some(Ok(_))) {
            *this.open = None;
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
