//! The response future: waits for the replica's answer, moves a failed request to another
//! replica when that is safe, and hands the body its load guard.

use crate::{
    body::{Load, Reclaim, Slot},
    endpoint::{Endpoint, InFlight},
    service::{pick, Shared},
    BalanceBody,
};
use http::{
    header::{RETRY_AFTER, SET_COOKIE},
    request::Parts,
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use kestra_edge_proxy::{EventStreamReadTimeout, ProxyBody, UpgradeProtocol, UpstreamFailure};
use kestra_edge_upgrade::TunnelGuard;
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tower::Service;

/// What a request needs to be sent to another replica: its head, and its body while no
/// replica has read it.
pub(crate) struct Retry<B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// The request extensions the proxy reads (its public API); the others were for the
    /// layers outside, which have run. Kept by type: cloning the whole map allocates.
    upgrade: Option<UpgradeProtocol>,
    event_stream: Option<EventStreamReadTimeout>,
    /// Whether the client came over TLS (for the affinity cookie's `Secure`).
    secure: bool,
    slot: Option<Slot<B>>,
    /// A GET, HEAD or OPTIONS without a body: safe to send again after the connection closed
    /// before any byte of an answer (RFC 9110 §9.2.2).
    safe: bool,
    left: u32,
    tried: Vec<Arc<Endpoint<B>>>,
}

impl<B> Retry<B> {
    pub(crate) fn new(
        parts: &Parts,
        slot: Option<Slot<B>>,
        safe: bool,
        retries: u32,
        secure: bool,
    ) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            upgrade: parts.extensions.get::<UpgradeProtocol>().cloned(),
            event_stream: parts.extensions.get::<EventStreamReadTimeout>().copied(),
            secure,
            slot,
            safe,
            left: retries,
            tried: Vec::new(),
        }
    }

    /// Whether `failure` allows another attempt: never sent (any method, with its body
    /// still unread), or a safe bodiless request whose connection closed unanswered.
    fn allows(&self, failure: UpstreamFailure) -> bool {
        self.left > 0 && (failure.never_sent() || (failure == UpstreamFailure::Closed && self.safe))
    }

    /// The request again, with the body taken back; `None` when a replica read it.
    fn request(&mut self, failure: UpstreamFailure) -> Option<Request<Reclaim<B>>> {
        let body = match &self.slot {
            Some(slot) if failure.never_sent() => {
                let (body, slot) = Reclaim::shared(slot.take()?);
                self.slot = Some(slot);
                body
            }
            Some(_) => return None,
            None => Reclaim::empty(),
        };
        self.left -= 1;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        if let Some(upgrade) = &self.upgrade {
            req.extensions_mut().insert(upgrade.clone());
        }
        if let Some(timeout) = self.event_stream {
            req.extensions_mut().insert(timeout);
        }
        Some(req)
    }
}

/// One request's attempt on a replica.
pub(crate) struct Attempt<B> {
    shared: Arc<Shared<B>>,
    worker: usize,
    endpoint: Arc<Endpoint<B>>,
    in_flight: Option<InFlight>,
    started: u64,
    retry: Option<Retry<B>>,
    /// `Some(secure)` when the answer must set the affinity cookie.
    cookie: Option<bool>,
}

pin_project! {
    /// Response future of [`Balance`](crate::Balance).
    pub struct ResponseFuture<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Waiting {
            #[pin]
            inner: kestra_edge_proxy::ResponseFuture,
            attempt: Attempt<B>,
        },
        Answer {
            response: Option<Response<BalanceBody>>,
        },
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> ResponseFuture<B> {
    // Crate-private: each argument is one field of the first attempt.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inner: kestra_edge_proxy::ResponseFuture,
        shared: Arc<Shared<B>>,
        worker: usize,
        endpoint: Arc<Endpoint<B>>,
        in_flight: InFlight,
        retry: Option<Retry<B>>,
        cookie: Option<bool>,
        started: u64,
    ) -> Self {
        Self {
            kind: Kind::Waiting {
                inner,
                attempt: Attempt {
                    shared,
                    worker,
                    endpoint,
                    in_flight: Some(in_flight),
                    started,
                    retry,
                    cookie,
                },
            },
        }
    }

    /// `503` with `Retry-After` at once: no replica passes its health check.
    pub(crate) fn unavailable(retry_after: &HeaderValue) -> Self {
        let mut response = Response::new(BalanceBody::new(
            ProxyBody::message("no healthy replica\n"),
            None,
        ));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(RETRY_AFTER, retry_after.clone());
        kestra_edge_headers::mark_gateway_answer(&mut response);
        Self {
            kind: Kind::Answer {
                response: Some(response),
            },
        }
    }
}

impl<B> Future for ResponseFuture<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<Response<BalanceBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Waiting { mut inner, attempt } => {
                let response = loop {
                    let Ok(response) = ready!(inner.as_mut().poll(cx));
                    let stats = &attempt.endpoint.stats;
                    let now = stats.now();
                    let Some(failure) = response.extensions().get::<UpstreamFailure>().copied()
                    else {
                        stats.count(None);
                        stats.observe(
                            Duration::from_nanos(now.saturating_sub(attempt.started)),
                            now,
                        );
                        stats.ejection.succeed();
                        break response;
                    };
                    stats.count(Some(failure));
                    let backoff = &attempt.shared.config.backoff;
                    if let Some(period) = stats.ejection.fail(now, backoff) {
                        tracing::warn!(replica = %attempt.endpoint.address, ?failure, ejected_for = ?period, "replica failed: ejected");
                    }
                    match attempt.next(failure) {
                        Some(next) => inner.set(next),
                        None => break response,
                    }
                };
                Poll::Ready(Ok(attempt.finish(response)))
            }
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

impl<B> Attempt<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The same request on another replica, when `failure` and the body allow it.
    fn next(&mut self, failure: UpstreamFailure) -> Option<kestra_edge_proxy::ResponseFuture> {
        let retry = self.retry.as_mut()?;
        if !retry.allows(failure) {
            return None;
        }
        retry.tried.push(self.endpoint.clone());
        let list = self.shared.endpoints.load();
        let now = self.endpoint.stats.now();
        let next = pick(&list, now, &retry.tried)?.clone();
        drop(list);
        let req = retry.request(failure)?;
        tracing::debug!(from = %self.endpoint.address, to = %next.address, ?failure, "retried on another replica");
        self.in_flight = Some(next.stats.in_flight());
        self.started = next.stats.now();
        let mut proxy = next.proxies[self.worker].clone();
        if self.shared.config.affinity.is_some() && self.cookie.is_none() {
            // The session moves: the answer names its new replica.
            self.cookie = Some(retry.secure);
        }
        self.endpoint = next;
        Some(proxy.call(req))
    }

    fn finish(&mut self, response: Response<ProxyBody>) -> Response<BalanceBody> {
        let failed = response.extensions().get::<UpstreamFailure>().is_some();
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The upgrade layer drops this answer, body and all, when the tunnel starts: the
            // tunnel keeps the count instead, until both its directions end.
            if let Some(in_flight) = self.in_flight.take() {
                parts.extensions.insert(TunnelGuard::new(in_flight));
            }
        }
        if self.shared.config.report_replica {
            parts.extensions.insert(self.endpoint.served_by.clone());
        }
        let load = self.in_flight.take().map(|in_flight| Load {
            in_flight,
            backoff: self.shared.config.backoff,
        });
        if let (Some(secure), false) = (self.cookie, failed) {
            if let Some(values) = &self.endpoint.set_cookie {
                parts
                    .headers
                    .append(SET_COOKIE, values[usize::from(secure)].clone());
            }
        }
        Response::from_parts(parts, BalanceBody::new(body, load))
    }
}
