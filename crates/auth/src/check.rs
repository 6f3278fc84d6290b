//! The auth subrequest: what is sent to the auth service and what its answer decides.

use crate::cache::{AllowCache, CacheKey, Identity};
use bytes::Bytes;
use http::{
    header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, COOKIE, HOST, SET_COOKIE, TRANSFER_ENCODING},
    HeaderMap, HeaderName, HeaderValue, Request, Response, Uri,
};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client, ResponseFuture};
use kestra_edge_headers::remove_hop_by_hop;
use kestra_edge_prefix::OriginalUri;
use kestra_edge_server::{PeerAddr, TlsConnection};
use std::{sync::Arc, time::Duration};

/// `X-Forwarded-Method`: the client's method (Traefik, Caddy, Authelia).
pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// `X-Forwarded-Uri`: the client's path and query, byte for byte.
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The pooled keep-alive HTTP/1.1 client to the auth service.
#[derive(Debug)]
pub(crate) enum AuthClient {
    /// `http://`.
    Http(Client<HttpConnector, Empty<Bytes>>),
    /// `https://`, verified against the system's roots and the configured CAs.
    Https(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
}

impl AuthClient {
    fn request(&self, request: Request<Empty<Bytes>>) -> ResponseFuture {
        match self {
            Self::Http(client) => client.request(request),
            Self::Https(client) => client.request(request),
        }
    }
}

/// The auth service and how it is asked.
#[derive(Debug)]
pub(crate) struct AuthService {
    pub(crate) uri: Uri,
    pub(crate) client: AuthClient,
    pub(crate) timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) cache: Option<AllowCache>,
}

/// What the auth service decided.
pub(crate) enum Decision {
    /// 2xx: forward, with these identity headers, and give the client these cookies.
    Allow {
        identity: Identity,
        set_cookies: Vec<HeaderValue>,
    },
    /// Anything else: relayed to the client as it is.
    Deny(Response<Bytes>),
    /// Unreachable, too slow, or broken: 503.
    Unavailable,
}

/// Whether the client used HTTPS, as the forwarded layer reported it.
pub(crate) fn is_https<B>(req: &Request<B>) -> bool {
    match req.headers().get(X_FORWARDED_PROTO) {
        Some(proto) => proto.as_bytes().eq_ignore_ascii_case(b"https"),
        None => req.extensions().get::<TlsConnection>().is_some(),
    }
}

/// The path and query the client sent: the prefix layer's [`OriginalUri`] when it ran
/// first (strip mode rewrites the URI), else the request's.
pub(crate) fn original_uri<B>(req: &Request<B>) -> &Uri {
    req.extensions()
        .get::<OriginalUri>()
        .map_or(req.uri(), |original| &original.0)
}

impl AuthService {
    /// The bodiless `GET` for `req`; `None` when its target cannot be a header value.
    pub(crate) fn request_for<B>(&self, req: &Request<B>) -> Option<Request<Empty<Bytes>>> {
        let from = req.headers();
        let mut headers = HeaderMap::with_capacity(8);
        // HTTP/2 clients may split cookies over several fields (RFC 9113 §8.2.3): one line.
        let mut cookies = from.get_all(COOKIE).iter();
        if let Some(first) = cookies.next() {
            let rest: Vec<&HeaderValue> = cookies.collect();
            if rest.is_empty() {
                headers.insert(COOKIE, first.clone());
            } else {
                let mut joined = first.as_bytes().to_vec();
                for line in rest {
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(line.as_bytes());
                }
                headers.insert(COOKIE, HeaderValue::from_bytes(&joined).ok()?);
            }
        }
        for name in [AUTHORIZATION, ACCEPT] {
            for value in from.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let method = HeaderValue::from_str(req.method().as_str()).ok()?;
        headers.insert(X_FORWARDED_METHOD, method);
        let proto = if is_https(req) { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        let host = from
            .get(X_FORWARDED_HOST)
            .or_else(|| from.get(HOST))
            .cloned()
            .or_else(|| HeaderValue::from_str(req.uri().authority()?.as_str()).ok());
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        let target = original_uri(req)
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        headers.insert(X_FORWARDED_URI, HeaderValue::from_str(target).ok()?);
        let client = from.get(X_FORWARDED_FOR).cloned().or_else(|| {
            let peer = req.extensions().get::<PeerAddr>()?;
            HeaderValue::from_str(&peer.0.ip().to_canonical().to_string()).ok()
        });
        if let Some(client) = client {
            headers.insert(X_FORWARDED_FOR, client);
        }
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// Asks the auth service; the whole exchange (connect, answer, body) is under its timeout.
pub(crate) async fn check(
    auth: Arc<crate::layer::Config>,
    request: Request<Empty<Bytes>>,
    key: Option<CacheKey>,
) -> Decision {
    let Some(service) = auth.auth.as_ref() else {
        return Decision::Unavailable;
    };
    let exchange = async {
        let response = service.client.request(request).await.map_err(|err| {
            tracing::warn!(error = %err, uri = %service.uri, "forward auth: auth service unreachable");
        })?;
        let (parts, body) = response.into_parts();
        // The auth service's answer is small and read whole, bounded: a denial is relayed
        // with its body, and reading an allow to its end keeps the connection pooled.
        let body = match Limited::new(body, service.max_body).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => None,
            Err(err) => {
                tracing::warn!(error = %err, "forward auth: auth service answer cut");
                return Err(());
            }
        };
        Ok((parts, body))
    };
    let (parts, body) = match tokio::time::timeout(service.timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(())) => return Decision::Unavailable,
        Err(_) => {
            tracing::warn!(
                timeout = ?service.timeout,
                uri = %service.uri,
                "forward auth: auth service too slow"
            );
            return Decision::Unavailable;
        }
    };
    if parts.status.is_informational() {
        tracing::warn!(status = %parts.status, "forward auth: interim answer from the auth service");
        return Decision::Unavailable;
    }
    if parts.status.is_success() {
        let identity: Identity = auth
            .response_headers
            .iter()
            .flat_map(|name| {
                parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect();
        if let (Some(cache), Some(key)) = (&service.cache, key) {
            cache.insert(key, identity.clone());
        }
        let set_cookies = parts.headers.get_all(SET_COOKIE).iter().cloned().collect();
        return Decision::Allow {
            identity,
            set_cookies,
        };
    }
    let mut headers = parts.headers;
    remove_hop_by_hop(&mut headers);
    // The body is re-framed for the client.
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    let body = body.unwrap_or_else(|| {
        tracing::warn!(
            limit = service.max_body,
            status = %parts.status,
            "forward auth: denial body too large, relayed without it"
        );
        Bytes::new()
    });
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Decision::Deny(response)
}
