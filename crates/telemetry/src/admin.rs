//! The admin listener's service: `/metrics`, `/livez`, `/readyz`.

use crate::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use std::{
    convert::Infallible,
    future::{ready, Ready},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};
use tower::Service;

/// The body of the admin service's answers.
pub type AdminBody = http_body_util::Full<Bytes>;

/// Whether the gateway takes traffic: it does until [`drain`](Self::drain) (SIGTERM).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Marks the gateway as draining: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The admin listener's service. Serve it on its own address, never on the main listener:
///
/// - `GET /metrics`: every metric in the Prometheus text format (version 0.0.4);
/// - `GET /livez`: 200 while the process runs;
/// - `GET /readyz`: 200 while the gateway takes traffic and at least one upstream is
///   healthy; 503 while draining or when none is.
///
/// Other paths get 404, other methods than GET and HEAD 405.
#[derive(Debug, Clone)]
pub struct Admin {
    metrics: Metrics,
    readiness: Readiness,
}

/// `text/plain; version=0.0.4`: the Prometheus text exposition format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Admin {
    /// The admin service of `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            readiness: Readiness::default(),
        }
    }

    /// The metrics `/metrics` renders.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The readiness switch `/readyz` reads; [`Readiness::drain`] it on shutdown.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    fn answer(&self, method: &Method, path: &str) -> Response<AdminBody> {
        if !matches!(path, "/metrics" | "/livez" | "/readyz") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/metrics" => {
                let mut response = Response::new(AdminBody::from(self.metrics.render()));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
                response
            }
            "/livez" => text(StatusCode::OK, "ok\n"),
            _ if self.readiness.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            _ if !self.metrics.any_upstream_up() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n")
            }
            _ => text(StatusCode::OK, "ready\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut response = Response::new(AdminBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Probes and scrapes must see the live state, never a cached one.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl<B> Service<Request<B>> for Admin {
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<AdminBody>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(req.method(), req.uri().path())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpstreamView;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(admin: &Admin, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = admin.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let metrics = Metrics::new(UpstreamView::replicas(move || {
            vec![crate::ReplicaSample {
                label: "10.0.0.1:8080".to_owned(),
                up: flag.load(Ordering::Relaxed),
                outcomes: [0; 5],
            }]
        }));
        let admin = Admin::new(metrics);
        assert_eq!(get(&admin, Method::GET, "/livez").await.0, StatusCode::OK);
        assert_eq!(get(&admin, Method::GET, "/readyz").await.0, StatusCode::OK);
        up.store(false, Ordering::Relaxed);
        assert_eq!(
            get(&admin, Method::GET, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream\n".to_owned()
            )
        );
        up.store(true, Ordering::Relaxed);
        admin.readiness().drain();
        assert_eq!(
            get(&admin, Method::GET, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
        );
        assert_eq!(get(&admin, Method::GET, "/livez").await.0, StatusCode::OK);
        let (status, text) = get(&admin, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("kestra_edge_upstream_up{upstream=\"10.0.0.1:8080\"} 1"));
        assert_eq!(get(&admin, Method::GET, "/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&admin, Method::POST, "/metrics").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
