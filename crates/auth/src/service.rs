//! The [`ForwardAuth`] service and its [`ResponseFuture`].

use crate::{
    body::MessageBody,
    cache::AllowCache,
    check::{check, is_https, original_uri, Decision},
    credentials::{protect_response, Secure},
    layer::Config,
};
use bytes::Bytes;
use http::{header::SET_COOKIE, HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tower::Service;

/// The service of [`ForwardAuthLayer`](crate::ForwardAuthLayer).
#[derive(Debug, Clone)]
pub struct ForwardAuth<S> {
    inner: S,
    config: Option<Arc<Config>>,
}

impl<S> ForwardAuth<S> {
    pub(crate) fn new(inner: S, config: Option<Arc<Config>>) -> Self {
        Self { inner, config }
    }
}

/// What happens to the upstream's response of a forwarded request.
#[derive(Debug, Default)]
struct After {
    /// `Set-Cookie` of a 2xx auth answer (a session refresh).
    set_cookies: Vec<HeaderValue>,
    /// What Kestra's answer may not carry, with Kestra's credentials configured.
    protect: Protect,
}

/// With Kestra's credentials configured, `BASIC_AUTH` is never set in the browser, and a
/// browser of an authenticated request that lacks the flag cookie gets it.
#[derive(Debug, Default, Clone, Copy)]
enum Protect {
    /// No credentials configured: the answer passes untouched.
    #[default]
    Nothing,
    /// `Set-Cookie: BASIC_AUTH` removed.
    Secret,
    /// `Set-Cookie: BASIC_AUTH` removed and the flag cookie added.
    SecretAndFlag(Secure),
}

impl After {
    fn apply(self, headers: &mut http::HeaderMap) {
        match self.protect {
            Protect::Nothing => {}
            Protect::Secret => protect_response(headers, None),
            Protect::SecretAndFlag(secure) => protect_response(headers, Some(secure)),
        }
        for cookie in self.set_cookies {
            headers.append(SET_COOKIE, cookie);
        }
    }
}

impl Config {
    /// Prepares an allowed request: identity headers, Kestra's credentials.
    fn forward<B>(
        &self,
        req: &mut Request<B>,
        identity: &[(HeaderName, HeaderValue)],
        set_cookies: Vec<HeaderValue>,
    ) -> After {
        let headers = req.headers_mut();
        for (name, value) in identity {
            headers.append(name.clone(), value.clone());
        }
        let protect = match &self.credentials {
            None => Protect::Nothing,
            Some(credentials) if credentials.apply(req.headers_mut()) => {
                Protect::SecretAndFlag(Secure(is_https(req)))
            }
            Some(_) => Protect::Secret,
        };
        After {
            set_cookies,
            protect,
        }
    }
}

type Check = Pin<Box<dyn Future<Output = Decision> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for ForwardAuth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: MessageBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(config) = &self.config else {
            return ResponseFuture::upstream(self.inner.call(req), After::default());
        };
        // A client never chooses its own identity, bypassed or not.
        for name in &config.response_headers {
            req.headers_mut().remove(name);
        }
        let Some(auth) = &config.auth else {
            let after = config.forward(&mut req, &[], Vec::new());
            return ResponseFuture::upstream(self.inner.call(req), after);
        };
        let path = original_uri(&req).path();
        if config.bypass.iter().any(|bypass| bypass.matches(path)) {
            // Open in Kestra: forwarded as the client sent it, never with Kestra's credentials;
            // still never letting Kestra put them in the browser.
            let after = After {
                set_cookies: Vec::new(),
                protect: if config.credentials.is_some() {
                    Protect::Secret
                } else {
                    Protect::Nothing
                },
            };
            return ResponseFuture::upstream(self.inner.call(req), after);
        }
        let key = auth
            .cache
            .as_ref()
            .and_then(|_| AllowCache::key(req.headers()));
        if let (Some(cache), Some(key)) = (&auth.cache, &key) {
            if let Some(identity) = cache.get(key) {
                let after = config.forward(&mut req, &identity, Vec::new());
                return ResponseFuture::upstream(self.inner.call(req), after);
            }
        }
        let Some(request) = auth.request_for(&req) else {
            return ResponseFuture::answer(StatusCode::BAD_REQUEST, "invalid request target\n");
        };
        let check: Check = Box::pin(check(config.clone(), request, key));
        // The ready service goes into the future; this one gets a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Checking {
                pending: Some(Box::new(Pending {
                    check,
                    request: req,
                    inner,
                    config: config.clone(),
                })),
            },
        }
    }
}

pin_project! {
    /// Response future of [`ForwardAuth`]: asking the auth service, then the inner service.
    pub struct ResponseFuture<S, B, F, ResBody> {
        #[pin]
        state: State<S, B, F, ResBody>,
    }
}

/// A request waiting for the auth service's decision. Boxed: the future of a request that
/// is not checked (the layer off, a bypass, a cache hit) stays as small as the inner one.
struct Pending<S, B> {
    check: Check,
    request: Request<B>,
    inner: S,
    config: Arc<Config>,
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, ResBody> {
        Checking {
            pending: Option<Box<Pending<S, B>>>,
        },
        Upstream {
            #[pin]
            future: F,
            after: Option<After>,
        },
        Answer {
            status: StatusCode,
            text: &'static str,
            body: PhantomData<fn() -> ResBody>,
        },
    }
}

impl<S, B, F, ResBody> fmt::Debug for ResponseFuture<S, B, F, ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, F, ResBody> ResponseFuture<S, B, F, ResBody> {
    fn upstream(future: F, after: After) -> Self {
        Self {
            state: State::Upstream {
                future,
                after: Some(after),
            },
        }
    }

    fn answer(status: StatusCode, text: &'static str) -> Self {
        Self {
            state: State::Answer {
                status,
                text,
                body: PhantomData,
            },
        }
    }
}

fn message<ResBody: MessageBody>(status: StatusCode, text: &'static str) -> Response<ResBody> {
    let mut response = Response::new(ResBody::message(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    kestra_edge_headers::mark_gateway_answer(&mut response);
    response
}

impl<S, B, F, E, ResBody> Future for ResponseFuture<S, B, F, ResBody>
where
    S: Service<Request<B>, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: MessageBody,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Checking { pending } => {
                    let Some(waiting) = pending.as_mut() else {
                        return Poll::Ready(Ok(unavailable()));
                    };
                    let decision = ready!(waiting.check.as_mut().poll(cx));
                    let Some(waiting) = pending.take() else {
                        return Poll::Ready(Ok(unavailable()));
                    };
                    let Pending {
                        request: mut req,
                        mut inner,
                        config,
                        ..
                    } = *waiting;
                    match decision {
                        Decision::Allow {
                            identity,
                            set_cookies,
                        } => {
                            let after = config.forward(&mut req, &identity, set_cookies);
                            State::Upstream {
                                future: inner.call(req),
                                after: Some(after),
                            }
                        }
                        Decision::Deny(response) => {
                            return Poll::Ready(Ok(response.map(ResBody::message)));
                        }
                        Decision::Unavailable => return Poll::Ready(Ok(unavailable())),
                    }
                }
                StateProj::Upstream { future, after } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(after) = after.take() {
                        after.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Answer { status, text, .. } => {
                    return Poll::Ready(Ok(message(*status, text)));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// The auth service could not decide: fail closed.
fn unavailable<ResBody: MessageBody>() -> Response<ResBody> {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication service unavailable\n",
    )
}
