//! [`MaybeCompress`]: tower-http's compression when `--compression` is on, and nothing at all
//! when it is off (the default).
//!
//! tower-http's `CompressionBody` holds its Brotli encoder inline: 6.4 KB per response body
//! even when nothing is compressed, which is most of what an open SSE stream costs. Off, the
//! response body is the stack's own (under 1 KB); on, compressed bodies are boxed, so the
//! body type stays small either way.

use http::{Request, Response};
use http_body_util::Either;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};
use tower::Service;
use tower_http::compression::{predicate::Predicate, Compression, CompressionBody};

/// The response body of [`MaybeCompress`]: the inner service's, or a boxed compressed one.
pub type MaybeCompressedBody<B> = Either<B, Pin<Box<CompressionBody<B>>>>;

/// Compression switched once at start-up; see the [module docs](self).
#[derive(Clone)]
pub enum MaybeCompress<S, P> {
    /// Compression off: the inner service's responses as they are.
    Off(S),
    /// Compression on, with this predicate.
    On(Compression<S, P>),
}

impl<S, P> MaybeCompress<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        match self {
            Self::Off(inner) => inner,
            Self::On(inner) => inner.get_ref(),
        }
    }
}

impl<S: std::fmt::Debug, P> std::fmt::Debug for MaybeCompress<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off(inner) => f.debug_tuple("Off").field(inner).finish(),
            Self::On(inner) => f.debug_tuple("On").field(inner.get_ref()).finish(),
        }
    }
}

impl<S, P, ReqBody, B> Service<Request<ReqBody>> for MaybeCompress<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    Compression<S, P>:
        Service<Request<ReqBody>, Response = Response<CompressionBody<B>>, Error = S::Error>,
    P: Predicate,
    B: http_body::Body,
{
    type Response = Response<MaybeCompressedBody<B>>;
    type Error = S::Error;
    type Future =
        MaybeCompressFuture<S::Future, <Compression<S, P> as Service<Request<ReqBody>>>::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Off(inner) => inner.poll_ready(cx),
            Self::On(inner) => inner.poll_ready(cx),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self {
            Self::Off(inner) => MaybeCompressFuture::Off {
                future: inner.call(req),
            },
            Self::On(inner) => MaybeCompressFuture::On {
                future: inner.call(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`MaybeCompress`].
    #[project = MaybeCompressProj]
    // pin-project-lite takes no doc comments on variant fields; the variants say it.
    #[allow(missing_docs)]
    pub enum MaybeCompressFuture<Off, On> {
        /// Compression off: the inner service's future.
        Off { #[pin] future: Off },
        /// Compression on: tower-http's compression future.
        On { #[pin] future: On },
    }
}

impl<Off, On, B, E> Future for MaybeCompressFuture<Off, On>
where
    Off: Future<Output = Result<Response<B>, E>>,
    On: Future<Output = Result<Response<CompressionBody<B>>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<MaybeCompressedBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project() {
            MaybeCompressProj::Off { future } => {
                ready!(future.poll(cx)).map(|response| response.map(Either::Left))
            }
            MaybeCompressProj::On { future } => ready!(future.poll(cx))
                .map(|response| response.map(|body| Either::Right(Box::pin(body)))),
        })
    }
}
