//! [`HttpsRedirect`]: the plain-HTTP listener's only answer.

use bytes::Bytes;
use http::{
    header::{HOST, LOCATION},
    uri::Authority,
    HeaderValue, Request, Response, StatusCode,
};
use kestra_edge_headers::plain_text;
use std::{
    convert::Infallible,
    future::{ready, Ready},
    task::{Context, Poll},
};
use tower::Service;

/// Answers every request with `308 Permanent Redirect` to the same host, path and query over
/// HTTPS: `https://{host}:{tls_port}{path}?{query}`, with no port when it is 443.
///
/// 308 (RFC 9110 §15.4.9), unlike 301, keeps the method and body. The path and query are
/// kept byte for byte. The host is the request's `Host` (or an absolute-form target's
/// authority) without its port; a missing, repeated or malformed `Host` gets 400.
#[derive(Debug, Clone)]
pub struct HttpsRedirect {
    port: Option<u16>,
}

impl HttpsRedirect {
    /// Redirects to the HTTPS listener on `tls_port`.
    pub fn new(tls_port: u16) -> Self {
        Self {
            port: (tls_port != 443).then_some(tls_port),
        }
    }

    /// The `Location` for `req`, or `None` when its host is unusable.
    fn location<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let authority = match req.uri().authority() {
            Some(authority) => authority.clone(),
            None => {
                let mut hosts = req.headers().get_all(HOST).iter();
                let host = hosts.next()?;
                if hosts.next().is_some() {
                    return None;
                }
                Authority::try_from(host.as_bytes()).ok()?
            }
        };
        let host = authority.host();
        // `host:` and `host:99999` parse as an authority whose port is unreadable.
        let bad_port = authority.as_str().len() > host.len() && authority.port_u16().is_none();
        if host.is_empty() || bad_port || authority.as_str().contains('@') {
            return None;
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = if path.is_empty() { "/" } else { path };
        let mut location = String::with_capacity(8 + host.len() + 6 + path.len());
        location.push_str("https://");
        location.push_str(host);
        if let Some(port) = self.port {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(path);
        HeaderValue::from_maybe_shared(Bytes::from(location)).ok()
    }
}

impl<B> Service<Request<B>> for HttpsRedirect {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let response = match self.location(&req) {
            Some(location) => {
                let mut response =
                    plain_text(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
                response.headers_mut().insert(LOCATION, location);
                response
            }
            None => plain_text(StatusCode::BAD_REQUEST, "invalid host\n"),
        };
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn redirect(port: u16, target: &str, hosts: &[&str]) -> (u16, Option<String>) {
        let mut req = Request::builder().uri(target);
        for host in hosts {
            req = req.header(HOST, *host);
        }
        let response = HttpsRedirect::new(port)
            .oneshot(req.body(()).unwrap())
            .await
            .unwrap();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        (response.status().as_u16(), location)
    }

    #[tokio::test]
    async fn redirects_keep_host_path_and_query_and_drop_the_port() {
        // (TLS port, target, Host lines, status, Location)
        type Case<'a> = (u16, &'a str, &'a [&'a str], u16, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                8443,
                "/kestra/ui/?a=1&b=%2F",
                &["kestra.example.com:8080"],
                308,
                Some("https://kestra.example.com:8443/kestra/ui/?a=1&b=%2F"),
            ),
            (
                443,
                "/kestra/api/v1/x%20y?q",
                &["kestra.example.com"],
                308,
                Some("https://kestra.example.com/kestra/api/v1/x%20y?q"),
            ),
            (443, "/", &["[::1]:80"], 308, Some("https://[::1]/")),
            (
                443,
                "/a//b/../c?",
                &["10.0.0.1"],
                308,
                Some("https://10.0.0.1/a//b/../c?"),
            ),
            (
                443,
                "http://other.example:81/p?x",
                &["ignored.example"],
                308,
                Some("https://other.example/p?x"),
            ),
            (443, "/", &[], 400, None),
            (443, "/", &["a.example", "b.example"], 400, None),
            (443, "/", &["user@evil.example"], 400, None),
            (443, "/", &["bad host"], 400, None),
            (443, "/", &[""], 400, None),
            (443, "/", &["host:99999"], 400, None),
        ];
        for &(port, target, hosts, status, location) in cases {
            let got = redirect(port, target, hosts).await;
            assert_eq!(
                got,
                (status, location.map(str::to_owned)),
                "{target} {hosts:?}"
            );
        }
    }
}
