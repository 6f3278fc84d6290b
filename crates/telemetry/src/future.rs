//! The response future: counts the head when it arrives, and readies the access-log line.

use crate::{
    body::OpenStream,
    logging::{self, Extra, Pending, TunnelLine},
    registry::Inner,
    TelemetryBody,
};
use http::{header::UPGRADE, Method};
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
        line: Option<Line>,
    }
}

/// What a counted request needs when its head arrives.
pub(crate) struct Counting {
    pub(crate) metrics: Arc<Inner>,
    pub(crate) method: usize,
    pub(crate) started: Instant,
}

/// The access-log line of a request, and its tunnel's when it may open one.
pub(crate) struct Line {
    pub(crate) pending: Option<Box<Pending>>,
    pub(crate) tunnel: Option<Arc<TunnelLine>>,
}

impl<F> ResponseFuture<F> {
    /// `counting` is `None` when the layer counts nothing, `line` without an access log.
    pub(crate) fn new(inner: F, counting: Option<Counting>, line: Option<Line>) -> Self {
        Self {
            inner,
            counting,
            line,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<http::Response<TelemetryBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut open = None;
        let mut event_stream = false;
        if let Some(Counting {
            metrics,
            method,
            started,
        }) = this.counting.take()
        {
            let seconds = started.elapsed().as_secs_f64();
            event_stream = metrics.record_head(
                method,
                response.status(),
                response.headers(),
                response.extensions(),
                seconds,
            );
            if event_stream {
                open = Some(OpenStream(metrics));
            }
        }
        let mut line = None;
        let mut head_request = false;
        if let Some(mut taken) = this.line.take() {
            if let Some(mut pending) = taken.pending.take() {
                let event_stream =
                    event_stream || kestra_edge_headers::is_event_stream(response.headers());
                pending.head(&response, event_stream);
                let method = pending.method();
                head_request = method == Method::HEAD;
                match taken.tunnel.take() {
                    Some(tunnel) if logging::opens_tunnel(method, &response) => {
                        // Written when the tunnel ends: the upgrade layer holds the other end.
                        tunnel.opened(pending, response.headers().get(UPGRADE));
                    }
                    _ => line = Some(*pending),
                }
            }
        }
        let mut extra = Extra::new(line, &response);
        if let Some(extra) = extra.as_deref_mut() {
            extra.at_head(head_request, response.body().is_end_stream());
        }
        Poll::Ready(Ok(
            response.map(|body| TelemetryBody::new(body, open, extra))
        ))
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        // Dropped before the head arrived: the client went away first (nginx's 499).
        if let Some(pending) = self.pending.take() {
            pending.write_unanswered();
        }
    }
}
