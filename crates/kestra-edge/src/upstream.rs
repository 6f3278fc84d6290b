//! The innermost service: one upstream proxied directly, or a balancer over replicas.

use crate::{balance::Balance, proxy::ReverseProxy};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use kestra_edge_balance::BalanceBody;
use kestra_edge_proxy::{BodyError, ProxyBody};
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};
use tower::Service;

/// Where requests go: one upstream, with nothing in between (the cost of a stack without
/// balancing is unchanged), or the balancer over several replicas.
#[derive(Debug)]
pub enum Upstream<B> {
    /// One upstream.
    Single(ReverseProxy<B>),
    /// Several replicas.
    Balanced(Balance<B>),
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Single(proxy) => Self::Single(proxy.clone()),
            Self::Balanced(balance) => Self::Balanced(balance.clone()),
        }
    }
}

impl<B> Service<Request<B>> for Upstream<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = UpstreamFuture<B>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both queue internally and are always ready.
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> UpstreamFuture<B> {
        match self {
            Self::Single(proxy) => UpstreamFuture {
                kind: FutureKind::Single {
                    future: proxy.call(req),
                },
            },
            Self::Balanced(balance) => UpstreamFuture {
                kind: FutureKind::Balanced {
                    future: Box::pin(balance.call(req)),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`Upstream`].
    #[derive(Debug)]
    pub struct UpstreamFuture<B> {
        #[pin]
        kind: FutureKind<B>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    #[derive(Debug)]
    enum FutureKind<B> {
        Single { #[pin] future: kestra_edge_proxy::ResponseFuture },
        // Boxed: the balancer's future carries the request's parts for a retry, nearly twice
        // the proxy's, and every layer above would carry (and move) that size on each request.
        Balanced { future: Pin<Box<kestra_edge_balance::ResponseFuture<B>>> },
    }
}

impl<B> Future for UpstreamFuture<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<Response<UpstreamBody>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project().kind.project() {
            FutureKindProj::Single { future } => {
                ready!(future.poll(cx))?.map(|body| UpstreamBody {
                    kind: BodyKind::Single { body },
                })
            }
            FutureKindProj::Balanced { future } => {
                ready!(future.as_mut().poll(cx))?.map(|body| UpstreamBody {
                    kind: BodyKind::Balanced { body },
                })
            }
        };
        Poll::Ready(Ok(response))
    }
}

pin_project! {
    /// The body of [`Upstream`]'s answers: one upstream's, or a replica's counted as its
    /// load while open.
    #[derive(Debug)]
    pub struct UpstreamBody {
        #[pin]
        kind: BodyKind,
    }
}

pin_project! {
    #[project = BodyKindProj]
    #[derive(Debug)]
    enum BodyKind {
        Single { #[pin] body: ProxyBody },
        Balanced { #[pin] body: BalanceBody },
    }
}

impl UpstreamBody {
    fn single(body: ProxyBody) -> Self {
        Self {
            kind: BodyKind::Single { body },
        }
    }
}

impl From<&'static str> for UpstreamBody {
    fn from(text: &'static str) -> Self {
        Self::single(ProxyBody::from(text))
    }
}

impl kestra_edge_auth::MessageBody for UpstreamBody {
    fn message(bytes: Bytes) -> Self {
        Self::single(ProxyBody::message(bytes))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project().kind.project() {
            BodyKindProj::Single { body } => body.poll_frame(cx),
            BodyKindProj::Balanced { body } => body.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Single { body } => body.is_end_stream(),
            BodyKind::Balanced { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Single { body } => body.size_hint(),
            BodyKind::Balanced { body } => body.size_hint(),
        }
    }
}
