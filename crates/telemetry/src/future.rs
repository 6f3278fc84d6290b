//! The response future: counts the head when it arrives.

use crate::{registry::Inner, TelemetryBody};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

pin_project! {
    /// The future of [`Telemetry`](crate::Telemetry).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        counting: Option<Counting>,
    }
}

/// What a counted request needs when its head arrives.
pub(crate) struct Counting {
    pub(crate) metrics: Arc<Inner>,
    pub(crate) method: usize,
    pub(crate) started: Instant,
}

impl<F> ResponseFuture<F> {
    /// `counting` is `None` when the layer is off (or the head was counted).
    pub(crate) fn new(inner: F, counting: Option<Counting>) -> Self {
        Self { inner, counting }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TelemetryBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let Some(Counting {
            metrics,
            method,
            started,
        }) = this.counting.take()
        else {
            return Poll::Ready(Ok(response.map(TelemetryBody::plain)));
        };
        let seconds = started.elapsed().as_secs_f64();
        let stream = metrics.record_head(
            method,
            response.status(),
            response.headers(),
            response.extensions(),
            seconds,
        );
        Poll::Ready(Ok(if stream {
            response.map(|body| TelemetryBody::event_stream(body, metrics))
        } else {
            response.map(TelemetryBody::plain)
        }))
    }
}
