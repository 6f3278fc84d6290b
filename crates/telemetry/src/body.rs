//! The response body: an event stream counts as open until its body ends; the access-log
//! line is written at its end.

use crate::{
    logging::{self, Extra},
    registry::Inner,
};
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
    /// `kestra_edge_sse_streams_open` until it ends or is dropped; with an access log, its
    /// line is written then; one of the gateway's own answers ends with its request id.
    pub struct TelemetryBody<B> {
        #[pin]
        inner: B,
        open: Option<OpenStream>,
        extra: Option<Box<Extra>>,
    }
}

/// One open event stream; closed when dropped.
pub(crate) struct OpenStream(pub(crate) Arc<Inner>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.sse_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B> TelemetryBody<B> {
    pub(crate) fn new(inner: B, open: Option<OpenStream>, extra: Option<Box<Extra>>) -> Self {
        Self { inner, open, extra }
    }
}

impl<B> Body for TelemetryBody<B>
where
    B: Body,
    B::Data: From<bytes::Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match this.extra.as_deref_mut() {
            Some(extra) => ready!(logging::poll_frame_extra(this.inner, extra, cx)),
            None => ready!(this.inner.poll_frame(cx)),
        };
        // The end, or an error that ends it: the stream is closed now, not when the
        // connection gets round to dropping the body.
        if !matches!(frame, Some(Ok(_))) {
            *this.open = None;
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.extra {
            Some(extra) => logging::is_end_stream_extra(&self.inner, extra),
            None => self.inner.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.extra {
            Some(extra) => logging::size_hint_extra(&self.inner, extra),
            None => self.inner.size_hint(),
        }
    }
}
