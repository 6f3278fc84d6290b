//! The response future: counts the head when it arrives.

use crate::{registry::Inner, TelemetryBody};
use kestra_edge_proxy::UpstreamFailure;
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
        metrics: Option<Arc<Inner>>,
        method: usize,
        started: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, metrics: Arc<Inner>, method: usize, started: Instant) -> Self {
        Self {
            inner,
            metrics: Some(metrics),
            method,
            started,
        }
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
        let seconds = this.started.elapsed().as_secs_f64();
        let Some(metrics) = this.metrics.take() else {
            // Polled again after it completed: nothing more to count.
            return Poll::Ready(Ok(response.map(TelemetryBody::plain)));
        };
        let stream = metrics.record_head(
            *this.method,
            response.status(),
            response.headers(),
            response.extensions().get::<UpstreamFailure>(),
            seconds,
        );
        Poll::Ready(Ok(if stream {
            response.map(|body| TelemetryBody::event_stream(body, metrics))
        } else {
            response.map(TelemetryBody::plain)
        }))
    }
}
