//! The layer and its service.

use crate::{
    future::{Counting, ResponseFuture},
    registry::method_index,
    Metrics,
};
use http::Request;
use std::{
    task::{Context, Poll},
    time::Instant,
};
use tower::{Layer, Service};

/// Counts every request of the service it wraps into [`Metrics`]; put it outermost, so that
/// every answer, the gateway's own included, is seen.
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    metrics: Option<Metrics>,
}

impl TelemetryLayer {
    /// A layer counting into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
        }
    }

    /// A layer that counts nothing: its service only passes requests and bodies through,
    /// without reading the clock.
    pub fn disabled() -> Self {
        Self { metrics: None }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`TelemetryLayer`].
#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    metrics: Option<Metrics>,
}

impl<S> Telemetry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Telemetry<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<crate::TelemetryBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let counting = self.metrics.as_ref().map(|metrics| Counting {
            metrics: metrics.inner.clone(),
            method: method_index(req.method()),
            started: Instant::now(),
        });
        ResponseFuture::new(self.inner.call(req), counting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpstreamView;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    #[tokio::test]
    async fn an_event_stream_is_open_until_its_body_ends() {
        let metrics = Metrics::new(UpstreamView::single("http://u"));
        let service = TelemetryLayer::new(metrics.clone()).layer(tower::service_fn(
            |req: Request<()>| async move {
                let mut response =
                    http::Response::new(Full::new(Bytes::from_static(b"data: x\n\n")));
                if req.uri().path() == "/follow" {
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            },
        ));
        let req = |path: &str| Request::builder().uri(path).body(()).unwrap();
        let stream = service.clone().oneshot(req("/follow")).await.unwrap();
        let plain = service.clone().oneshot(req("/ui/")).await.unwrap();
        let text = metrics.render();
        assert!(text.contains("kestra_edge_sse_streams_open 1"), "{text}");
        assert!(
            text.contains("kestra_edge_http_requests_total{method=\"GET\",status=\"200\"} 2"),
            "{text}"
        );
        drop(plain);
        let body = stream.into_body();
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"data: x\n\n");
        let text = metrics.render();
        assert!(text.contains("kestra_edge_sse_streams_open 0"), "{text}");
        assert!(text.contains("kestra_edge_sse_streams_total 1"), "{text}");

        // Dropped before its end (the client went away): closed too.
        let stream = service.clone().oneshot(req("/follow")).await.unwrap();
        assert!(metrics.render().contains("kestra_edge_sse_streams_open 1"));
        drop(stream);
        assert!(metrics.render().contains("kestra_edge_sse_streams_open 0"));
    }
}
