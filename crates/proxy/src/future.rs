//! The future that waits for the upstream's response head.

use crate::{
    body::{Progress, UpstreamBody},
    error::ProxyError,
    h1::exchange::Exchange,
    ProxyBody,
};
use http::{Response, StatusCode};
use hyper_util::client::legacy;
use kestra_edge_headers::{is_event_stream, remove_hop_by_hop};
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tracing::Span;

pin_project! {
    /// Response future of [`ReverseProxy`](crate::ReverseProxy).
    #[derive(Debug)]
    pub struct ResponseFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    /// The request in flight: on hyper-util's pooled client, or on the own HTTP/1.1 path.
    #[project = InnerProj]
    #[derive(Debug)]
    pub(crate) enum Inner {
        Hyper {
            #[pin]
            future: legacy::ResponseFuture,
        },
        Own {
            exchange: Exchange,
        },
    }
}

impl Inner {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<UpstreamBody>, ClientError>> {
        match self.project() {
            InnerProj::Hyper { future } => future.poll(cx).map(|r| {
                r.map(|res| res.map(UpstreamBody::from))
                    .map_err(ClientError::Hyper)
            }),
            InnerProj::Own { exchange } => exchange.poll(cx).map(|r| {
                r.map(|res| res.map(UpstreamBody::from))
                    .map_err(ClientError::Own)
            }),
        }
    }
}

/// A failure of either client.
enum ClientError {
    Hyper(legacy::Error),
    Own(ProxyError),
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Waiting {
            #[pin]
            inner: Inner,
            // The response deadline's timer on hyper's path; on the own path the exchange
            // holds a timer lent by the thread.
            sleep: Option<Pin<Box<Sleep>>>,
            progress: Option<Arc<Progress>>,
            start: Instant,
            read_timeout: Duration,
            event_stream_timeout: Option<EventStreamReadTimeout>,
            upgrade_requested: bool,
            replay: Option<Replay>,
            span: Span,
        },
        Answer {
            response: Option<Response<ProxyBody>>,
        },
    }
}

impl ResponseFuture {
    // Crate-private: each argument is one field of the waiting state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inner: Inner,
        progress: Option<Arc<Progress>>,
        start: Instant,
        read_timeout: Duration,
        event_stream_timeout: Option<EventStreamReadTimeout>,
        upgrade_requested: bool,
        replay: Option<Replay>,
        span: Span,
    ) -> Self {
        let sleep = match inner {
            Inner::Hyper { .. } => Some(Box::pin(tokio::time::sleep_until(start + read_timeout))),
            Inner::Own { .. } => None,
        };
        Self {
            kind: Kind::Waiting {
                inner,
                sleep,
                progress,
                start,
                read_timeout,
                event_stream_timeout,
                upgrade_requested,
                replay,
                span,
            },
        }
    }

    /// The request on hyper-util's pooled client.
    pub(crate) fn hyper(future: legacy::ResponseFuture) -> Inner {
        Inner::Hyper { future }
    }

    /// The request on the own HTTP/1.1 path.
    pub(crate) fn own(exchange: Exchange) -> Inner {
        Inner::Own { exchange }
    }

    /// A future that answers at once with the gateway's own `status` and `text`.
    pub(crate) fn answer(status: StatusCode, text: &str) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(plain_response(status, text)),
            },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Waiting {
                mut inner,
                sleep,
                progress,
                start,
                read_timeout,
                event_stream_timeout,
                upgrade_requested,
                replay,
                span,
            } => {
                let _enter = span.enter();
                let polled = loop {
                    match inner.as_mut().poll(cx) {
                        Poll::Ready(Err(ClientError::Hyper(err)))
                            if replay.is_some() && closed_unanswered(&err) =>
                        {
                            if let Some(Replay(send)) = replay.take() {
                                tracing::debug!(error = %err, "upstream closed unanswered: retried");
                                inner.set(Inner::Hyper { future: send() });
                            }
                        }
                        polled => break polled,
                    }
                };
                let result = match polled {
                    Poll::Ready(Ok(response)) => Ok(response),
                    Poll::Ready(Err(ClientError::Hyper(err))) => Err(ProxyError::from_client(err)),
                    Poll::Ready(Err(ClientError::Own(err))) => Err(err),
                    Poll::Pending => loop {
                        let Some(sleep) = sleep.as_mut() else {
                            return Poll::Pending;
                        };
                        ready!(sleep.as_mut().poll(cx));
                        // The timer counts from the last request byte, not from the start.
                        let last = progress.as_ref().map_or(*start, |p| p.last());
                        let deadline = last + *read_timeout;
                        if deadline <= Instant::now() {
                            break Err(ProxyError::ResponseTimeout);
                        }
                        sleep.as_mut().reset(deadline);
                    },
                };
                // A clock read only when the span is recorded (debug level).
                if !span.is_disabled() {
                    span.record("upstream_ms", start.elapsed().as_secs_f64() * 1e3);
                }
                let response = match result {
                    Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        if *upgrade_requested {
                            // Passed on whole: the upgrade layer validates it and takes the
                            // connection from its extensions.
                            response.map(|_| ProxyBody::message(""))
                        } else {
                            tracing::warn!("upstream switched protocols unasked");
                            plain_response(StatusCode::BAD_GATEWAY, "upstream connection failed")
                        }
                    }
                    Ok(response) => {
                        proxied_response(response, *read_timeout, *event_stream_timeout)
                    }
                    Err(err) => {
                        let upstream_ms = start.elapsed().as_secs_f64() * 1e3;
                        match err.upstream_tls() {
                            // Says which: unknown issuer, wrong name, expired, or rustls's text.
                            Some(tls) => tracing::warn!(upstream_ms, "proxy failed: {tls}"),
                            None => {
                                tracing::warn!(error = %err, cause = ?std::error::Error::source(&err), upstream_ms, "proxy failed")
                            }
                        }
                        let mut response = plain_response(err.status(), &err.to_string());
                        if let Some(failure) = err.upstream_failure() {
                            response.extensions_mut().insert(failure);
                        }
                        response
                    }
                };
                span.record("status", response.status().as_u16());
                tracing::debug!("response head");
                Poll::Ready(Ok(response))
            }
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// Sends a bodiless safe request again, on a new or another pooled connection.
pub(crate) struct Replay(pub(crate) Box<dyn FnOnce() -> legacy::ResponseFuture + Send>);

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

/// Whether the upstream closed the connection before any byte of a response: what a pooled
/// connection the upstream has just closed gives when the request was already written.
fn closed_unanswered(err: &legacy::Error) -> bool {
    if err.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        }) {
            return true;
        }
        source = e.source();
    }
    false
}

/// The upstream's response as sent to the client: hop-by-hop fields removed, body streamed.
fn proxied_response(
    response: Response<UpstreamBody>,
    read_timeout: Duration,
    event_stream_timeout: Option<EventStreamReadTimeout>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let body_timeout = match event_stream_timeout {
        Some(EventStreamReadTimeout(timeout)) if is_event_stream(&parts.headers) => timeout,
        _ => Some(read_timeout),
    };
    Response::from_parts(parts, ProxyBody::upstream(body, body_timeout))
}

/// A request extension that replaces the body read timeout when the response is an event
/// stream (`None`: no limit).
///
/// Kestra's SSE streams stay silent for minutes; a layer that governs their idleness itself
/// (kestra-edge's SSE guard, with heartbeats and its own idle limit) inserts this so that
/// `read_timeout` does not cut them first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventStreamReadTimeout(pub Option<Duration>);

/// The gateway's own short plain-text answer.
fn plain_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::message(format!("{text}\n")));
    *response.status_mut() = status;
    kestra_edge_headers::mark_gateway_answer(&mut response);
    response
}
