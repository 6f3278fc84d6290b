//! [`PrefixLayer`] and the [`Prefix`] service.

use crate::{
    path::{is_unsafe_path, ContextPath},
    rewrite::{doubles_prefix, rewrite_response_headers, Origins},
};
use http::{
    header::{HOST, LOCATION},
    uri::PathAndQuery,
    HeaderName, HeaderValue, Request, Response, StatusCode, Uri,
};
use kestra_edge_headers::plain_text;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};
use tower::{Layer, Service};

/// `X-Forwarded-Prefix`, the prefix a strip-mode proxy removed.
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Whether the prefix reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefixMode {
    /// Forward the path unchanged; the upstream serves under the prefix itself (Kestra with
    /// `micronaut.server.context-path`). The only setup in which Kestra's UI works.
    #[default]
    Keep,
    /// Remove the prefix before forwarding and put it back into `Location`,
    /// `Content-Location`, `Refresh` and cookie paths of the answer.
    Strip,
}

/// The request URI as the client sent it, before any rewrite (a request extension, like
/// axum's `OriginalUri`). Inserted only when no earlier layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalUri(pub Uri);

/// Answers requests outside the prefix with 404 (the default of [`PrefixLayer`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NotFound;

/// Sends requests outside the prefix to a service of the user's (see [`PrefixLayer::fallback`]).
#[derive(Debug, Clone, Copy)]
pub struct Fallback<F>(F);

#[derive(Debug)]
struct Config {
    context: ContextPath,
    mode: PrefixMode,
    prefix_header: HeaderValue,
    upstream: Option<String>,
    warned_double_prefix: AtomicBool,
}

/// Serves an upstream under a context path; see the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct PrefixLayer<F = NotFound> {
    config: Arc<Config>,
    fallback: F,
}

impl PrefixLayer {
    /// A layer for `context` in `mode`. Strip mode with the context path `/` removes nothing
    /// and rewrites nothing.
    pub fn new(context: ContextPath, mode: PrefixMode) -> Self {
        let mode = if context.is_root() {
            PrefixMode::Keep
        } else {
            mode
        };
        // A validated context path is visible ASCII, so it is a valid header value.
        let prefix_header = HeaderValue::from_str(context.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("/"));
        Self {
            config: Arc::new(Config {
                context,
                mode,
                prefix_header,
                upstream: None,
                warned_double_prefix: AtomicBool::new(false),
            }),
            fallback: NotFound,
        }
    }
}

impl<F> PrefixLayer<F> {
    /// The upstream's `host:port`, so that absolute URLs to it in strip-mode answers become
    /// prefixed paths instead of leaking the internal address.
    pub fn upstream_authority(self, authority: impl Into<String>) -> Self {
        let config = &self.config;
        Self {
            config: Arc::new(Config {
                context: config.context.clone(),
                mode: config.mode,
                prefix_header: config.prefix_header.clone(),
                upstream: Some(authority.into()),
                warned_double_prefix: AtomicBool::new(false),
            }),
            fallback: self.fallback,
        }
    }

    /// Sends requests outside the prefix to `fallback` instead of answering 404.
    pub fn fallback<G>(self, fallback: G) -> PrefixLayer<Fallback<G>> {
        PrefixLayer {
            config: self.config,
            fallback: Fallback(fallback),
        }
    }
}

impl<S> Layer<S> for PrefixLayer<NotFound> {
    type Service = Prefix<S, S>;

    fn layer(&self, inner: S) -> Prefix<S, S> {
        Prefix {
            inner,
            fallback: None,
            config: self.config.clone(),
        }
    }
}

impl<S, F: Clone> Layer<S> for PrefixLayer<Fallback<F>> {
    type Service = Prefix<S, F>;

    fn layer(&self, inner: S) -> Prefix<S, F> {
        Prefix {
            inner,
            fallback: Some(self.fallback.0.clone()),
            config: self.config.clone(),
        }
    }
}

/// The service of [`PrefixLayer`]: `F` serves requests outside the prefix, when there is a
/// fallback.
#[derive(Debug, Clone)]
pub struct Prefix<S, F> {
    inner: S,
    fallback: Option<F>,
    config: Arc<Config>,
}

impl<S, F, ReqBody, ResBody> Service<Request<ReqBody>> for Prefix<S, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    F: Service<Request<ReqBody>, Response = Response<ResBody>, Error = S::Error>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        ready!(self.inner.poll_ready(cx))?;
        match &mut self.fallback {
            Some(fallback) => fallback.poll_ready(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        if is_unsafe_path(path) {
            return ResponseFuture::answer(StatusCode::BAD_REQUEST, "invalid path\n");
        }
        let Some(rest) = self.config.context.match_path(path) else {
            return match &mut self.fallback {
                Some(fallback) => ResponseFuture {
                    kind: Kind::Fallback {
                        future: fallback.call(req),
                    },
                },
                None => ResponseFuture::answer(StatusCode::NOT_FOUND, "not found\n"),
            };
        };
        let mut public_host = None;
        if self.config.mode == PrefixMode::Strip {
            let Some(uri) = stripped_uri(req.uri(), rest) else {
                return ResponseFuture::answer(StatusCode::BAD_REQUEST, "invalid path\n");
            };
            let original = std::mem::replace(req.uri_mut(), uri);
            public_host = req.headers().get(HOST).cloned().or_else(|| {
                original
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            req.headers_mut()
                .insert(X_FORWARDED_PREFIX, self.config.prefix_header.clone());
            if req.extensions().get::<OriginalUri>().is_none() {
                req.extensions_mut().insert(OriginalUri(original));
            }
        } else if req.extensions().get::<OriginalUri>().is_none() {
            let original = req.uri().clone();
            req.extensions_mut().insert(OriginalUri(original));
        }
        ResponseFuture {
            kind: Kind::Inner {
                future: self.inner.call(req),
                config: self.config.clone(),
                public_host,
            },
        }
    }
}

/// `uri` with its path replaced by `rest` (`/` when empty), query and authority kept.
fn stripped_uri(uri: &Uri, rest: &str) -> Option<Uri> {
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")).ok()?,
        None => PathAndQuery::try_from(path).ok()?,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

pin_project! {
    /// Response future of [`Prefix`].
    #[derive(Debug)]
    pub struct ResponseFuture<A, B, ResBody> {
        #[pin]
        kind: Kind<A, B, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<A, B, ResBody> {
        Inner {
            #[pin]
            future: A,
            config: Arc<Config>,
            public_host: Option<HeaderValue>,
        },
        Fallback {
            #[pin]
            future: B,
        },
        Answer {
            response: Option<Response<ResBody>>,
        },
    }
}

impl<A, B, ResBody> ResponseFuture<A, B, ResBody>
where
    ResBody: From<&'static str>,
{
    fn answer(status: StatusCode, text: &'static str) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(plain_text(status, text)),
            },
        }
    }
}

impl<A, B, E, ResBody> Future for ResponseFuture<A, B, ResBody>
where
    A: Future<Output = Result<Response<ResBody>, E>>,
    B: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner {
                future,
                config,
                public_host,
            } => {
                let mut response = ready!(future.poll(cx))?;
                match config.mode {
                    PrefixMode::Strip => rewrite_response_headers(
                        response.headers_mut(),
                        &Origins {
                            prefix: config.context.as_str(),
                            upstream: config.upstream.as_deref(),
                            public_host: public_host.as_ref().map(HeaderValue::as_bytes),
                        },
                    ),
                    PrefixMode::Keep => warn_if_prefix_doubled(&response, config),
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Fallback { future } => future.poll(cx),
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// Logs once when the upstream redirects to `/kestra/kestra/…` in keep mode.
fn warn_if_prefix_doubled<B>(response: &Response<B>, config: &Config) {
    let Some(location) = response.headers().get(LOCATION) else {
        return;
    };
    if config.context.is_root() || !doubles_prefix(location.as_bytes(), config.context.as_str()) {
        return;
    }
    if !config.warned_double_prefix.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            location = ?location,
            context_path = %config.context,
            "the upstream redirects to a doubled context path: the prefix is probably configured \
             twice (Kestra's micronaut.server.context-path already includes it, so the upstream \
             URL must not; see Kestra issue 2630)"
        );
    }
}
