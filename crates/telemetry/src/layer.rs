//! The layer and its service.

use crate::{
    future::{Counting, Line, ResponseFuture},
    logging::{self, CountedBody, Logging, Pending, TunnelLine},
    registry::method_index,
    AccessLog, Metrics,
};
use http::Request;
use http_body::Body;
use kestra_edge_upgrade::ObserveTunnel;
use std::{
    sync::{atomic::AtomicU64, Arc},
    task::{Context, Poll},
    time::Instant,
};
use tower::{Layer, Service};

/// Counts every request of the service it wraps into [`Metrics`] and writes its line to an
/// [`AccessLog`]; put it outermost, so that every answer, the gateway's own included, is
/// seen.
///
/// Whatever is on, it adds the request id (the response's `X-Request-Id`, set by the request
/// id layers inside) to the body of the gateway's own answers (those marked
/// [`GatewayAnswer`](kestra_edge_headers::GatewayAnswer): 400, 404, 413, 502, 504 …), so
/// that a user can quote it.
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    metrics: Option<Metrics>,
    log: Option<Logging>,
}

impl TelemetryLayer {
    /// A layer counting into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            log: None,
        }
    }

    /// A layer that counts nothing and logs nothing: its service only passes requests and
    /// bodies through, without reading the clock.
    pub fn disabled() -> Self {
        Self {
            metrics: None,
            log: None,
        }
    }

    /// Also writes one line per finished request to `log`: when its response body ends (an
    /// event stream's, with its whole duration), when the tunnel of a `101` ends (with its
    /// bytes each way), or when the client goes away first. `upstream` is what the lines
    /// name as the upstream when no replica is named (the URL as configured); the gateway's
    /// own answers given before any upstream was asked name none.
    ///
    /// The client is the one the forwarded layer resolved (with its
    /// [`client_addr_extension`](kestra_edge_forwarded::ForwardedLayerBuilder::client_addr_extension)
    /// on), else the peer; a balancer names the replica when asked to
    /// (`report_replica`).
    pub fn access_log(mut self, log: AccessLog, upstream: Option<String>) -> Self {
        self.log = Some(Logging {
            log,
            upstream: upstream.map(Arc::from),
            forward_proxy: false,
        });
        self
    }

    /// Writes the lines of a forward proxy (kestra-edge-egress's `Egress`) to `log`: a
    /// `connect` line when a `CONNECT` tunnel ends, with its destination (`host:port`), the
    /// address dialled and its bytes each way; a `forward` line per absolute-form request
    /// (`http://host/path`, without the query).
    pub fn forward_proxy_log(mut self, log: AccessLog) -> Self {
        self.log = Some(Logging {
            log,
            upstream: None,
            forward_proxy: true,
        });
        self
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone(),
            log: self.log.clone(),
        }
    }
}

/// The service of [`TelemetryLayer`].
#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    metrics: Option<Metrics>,
    log: Option<Logging>,
}

impl<S> Telemetry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Telemetry<S>
where
    S: Service<Request<CountedBody<B>>, Response = http::Response<ResBody>>,
    B: Body,
    ResBody: Body,
{
    type Response = http::Response<crate::TelemetryBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.metrics.is_none() && self.log.is_none() {
            let req = req.map(|body| CountedBody::new(body, None));
            return ResponseFuture::new(self.inner.call(req), None, None);
        }
        let started = Instant::now();
        let counting = self.metrics.as_ref().map(|metrics| Counting {
            metrics: metrics.inner.clone(),
            method: method_index(req.method()),
            started,
        });
        let Some(logging) = &self.log else {
            let req = req.map(|body| CountedBody::new(body, None));
            return ResponseFuture::new(self.inner.call(req), counting, None);
        };
        let counted = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let tunnel = logging::may_tunnel(&req).then(|| Arc::new(TunnelLine::default()));
        if let Some(tunnel) = &tunnel {
            req.extensions_mut()
                .insert(ObserveTunnel(Arc::clone(tunnel) as _));
        }
        let client = kestra_edge_forwarded::client_addr(&req);
        let line = Line {
            pending: Some(Box::new(Pending::new(
                logging,
                &req,
                client,
                started,
                counted.clone(),
            ))),
            tunnel,
        };
        let req = req.map(|body| CountedBody::new(body, counted));
        ResponseFuture::new(self.inner.call(req), counting, Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpstreamView;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use tower::ServiceExt;

    #[tokio::test]
    async fn an_event_stream_is_open_until_its_body_ends() {
        let metrics = Metrics::new(UpstreamView::single("http://u"));
        let service = TelemetryLayer::new(metrics.clone()).layer(tower::service_fn(
            |req: Request<CountedBody<Empty<Bytes>>>| async move {
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
        let req = |path: &str| Request::builder().uri(path).body(Empty::new()).unwrap();
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

    /// A writer the test reads back once the log is dropped (which flushes it).
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(captured: &Captured) -> Vec<serde_json::Value> {
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn each_request_gets_a_line_when_its_body_ends() {
        let captured = Captured::default();
        let log = AccessLog::to_writer(crate::AccessLogFormat::Json, captured.clone(), 1 << 20);
        let service = TelemetryLayer::disabled()
            .access_log(log, Some("http://kestra:8080".into()))
            .layer(tower::service_fn(
                |req: Request<CountedBody<Full<Bytes>>>| async move {
                    let path = req.uri().path().to_owned();
                    let sent = req.into_body().collect().await.unwrap().to_bytes().len();
                    let mut response =
                        http::Response::new(Full::new(Bytes::from(format!("{sent} bytes"))));
                    match path.as_str() {
                        "/missing" => {
                            *response.status_mut() = http::StatusCode::NOT_FOUND;
                            kestra_edge_headers::mark_gateway_answer(&mut response);
                            response
                                .headers_mut()
                                .insert("x-request-id", http::HeaderValue::from_static("rid-1"));
                        }
                        "/follow" => {
                            response.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("text/event-stream"),
                            );
                        }
                        _ => {}
                    }
                    Ok::<_, std::convert::Infallible>(response)
                },
            ));
        let req = |method: &str, uri: &str, body: &'static str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", "Basic c2VjcmV0OnNlY3JldA==")
                .header("cookie", "SESSION=secret")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap()
        };
        // A POST with a body, a query that must not be logged, and secrets in headers.
        let response = service
            .clone()
            .oneshot(req("POST", "/api/v1/flows?token=secret", "hello"))
            .await
            .unwrap();
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"5 bytes"
        );
        // The gateway's own answer: the request id is added to its body.
        let response = service
            .clone()
            .oneshot(req("GET", "/missing", ""))
            .await
            .unwrap();
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"0 bytesrequest id: rid-1\n"
        );
        // A stream the client leaves before its end.
        let response = service
            .clone()
            .oneshot(req("GET", "/follow", ""))
            .await
            .unwrap();
        drop(response);
        // A HEAD: its body is never sent, its line is written at the head (the body is kept
        // to the end, so a line at its drop would come too late).
        let response = service
            .clone()
            .oneshot(req("HEAD", "/ui/", ""))
            .await
            .unwrap();
        let _head_kept = response; // Never dropped before the lines are read.
        drop(service);

        let lines = lines(&captured);
        assert_eq!(lines.len(), 4, "{lines:?}");
        let post = &lines[0];
        assert_eq!(post["method"], "POST");
        assert_eq!(post["target"], "/api/v1/flows");
        assert_eq!(post["status"], 200);
        assert_eq!(post["bytes_in"], 5);
        assert_eq!(post["bytes_out"], 7);
        assert_eq!(post["kind"], "http");
        assert_eq!(post["upstream"], "http://kestra:8080");
        assert_eq!(post["end"], "done");
        let missing = &lines[1];
        assert_eq!(missing["status"], 404);
        assert_eq!(missing["request_id"], "rid-1");
        assert_eq!(missing["upstream"], serde_json::Value::Null);
        assert_eq!(missing["bytes_out"], 7 + "request id: rid-1\n".len());
        let stream = &lines[2];
        assert_eq!(stream["kind"], "sse");
        assert_eq!(stream["end"], "aborted");
        assert_eq!(lines[3]["method"], "HEAD");
        assert_eq!(lines[3]["end"], "done");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn a_forward_proxy_logs_its_tunnels_when_they_end_and_its_requests() {
        use kestra_edge_upgrade::{ObserveTunnel, TunnelEnd};
        let captured = Captured::default();
        let log = AccessLog::to_writer(crate::AccessLogFormat::Json, captured.clone(), 1 << 20);
        // Stands for the forward proxy: a CONNECT is answered 200 and its tunnel "ends" at
        // once with the bytes it carried; an absolute-form GET is answered from the origin.
        let service = TelemetryLayer::disabled()
            .forward_proxy_log(log)
            .layer(tower::service_fn(
                |mut req: Request<CountedBody<Empty<Bytes>>>| async move {
                    let mut response = http::Response::new(Full::new(Bytes::new()));
                    response
                        .extensions_mut()
                        .insert(kestra_edge_headers::ServedBy(Arc::from(
                            "93.184.215.14:443",
                        )));
                    if let Some(observer) = req.extensions_mut().remove::<ObserveTunnel>() {
                        tokio::spawn(async move {
                            observer.0.ended(&TunnelEnd {
                                from_client: 517,
                                from_upstream: 4096,
                                duration: std::time::Duration::from_millis(3),
                                reason: "finished",
                            });
                        });
                    } else {
                        *response.body_mut() = Full::new(Bytes::from_static(b"origin"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                },
            ));
        let connect = Request::builder()
            .method("CONNECT")
            .uri("api.kestra.io:443")
            .header("proxy-authorization", "Basic c2VjcmV0OnNlY3JldA==")
            .body(Empty::new())
            .unwrap();
        let response = service.clone().oneshot(connect).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        let forward = Request::builder()
            .uri("http://plugins.example/v1/list?key=secret")
            .body(Empty::new())
            .unwrap();
        let response = service.clone().oneshot(forward).await.unwrap();
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"origin"
        );
        drop(service);
        // The spawned "tunnel" holds the line's last reference until it has ended.
        tokio::task::yield_now().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lines(&captured).len() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let lines = lines(&captured);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let forward = lines.iter().find(|l| l["kind"] == "forward").unwrap();
        assert_eq!(forward["target"], "http://plugins.example/v1/list");
        assert_eq!(forward["bytes_out"], 6);
        let tunnel = lines.iter().find(|l| l["kind"] == "connect").unwrap();
        assert_eq!(tunnel["method"], "CONNECT");
        assert_eq!(tunnel["target"], "api.kestra.io:443");
        assert_eq!(tunnel["upstream"], "93.184.215.14:443");
        assert_eq!(tunnel["bytes_in"], 517);
        assert_eq!(tunnel["bytes_out"], 4096);
        assert_eq!(tunnel["end"], "finished");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("secret") && !text.contains("c2Vj"), "{text}");
    }
}
