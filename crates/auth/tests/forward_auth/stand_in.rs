//! An auth service stand-in: records what it receives; allows the session cookie
//! `session=good` or `Authorization: Bearer good-token`; sends a browser (`Accept:
//! text/html`) to the login page with a 302 carrying the original URL, anything else 401
//! with `WWW-Authenticate`; or never answers, when told to hang.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kestra_edge::server::Server;
use kestra_edge_server::IncomingBody;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};
use tokio::sync::oneshot;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: http::Method,
    pub(crate) uri: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body_len: usize,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub(crate) struct AuthStandin {
    scheme: &'static str,
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    hang: Arc<AtomicBool>,
    _stop: oneshot::Sender<()>,
}

impl AuthStandin {
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Over TLS with `certified`; its URL is then `https://`.
    pub(crate) async fn start_tls(certified: std::sync::Arc<rustls::sign::CertifiedKey>) -> Self {
        Self::start_with(Some(certified)).await
    }

    async fn start_with(tls: Option<std::sync::Arc<rustls::sign::CertifiedKey>>) -> Self {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel::<()>();
        let service = {
            let seen = seen.clone();
            let hang = hang.clone();
            tower::service_fn(move |req: Request<IncomingBody>| {
                let seen = seen.clone();
                let hang = hang.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.clone(),
                        uri: parts.uri.to_string(),
                        headers: parts.headers.clone(),
                        body_len: body.len(),
                    });
                    if hang.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(decide(&parts.headers))
                }
            })
        };
        let stopped = async {
            let _ = stopped.await;
        };
        let scheme = match tls {
            None => {
                tokio::spawn(server.serve(service, stopped));
                "http"
            }
            Some(certified) => {
                let store = kestra_edge::tls::CertStore::new(certified);
                let acceptor = kestra_edge::tls::TlsAcceptor::new(store).unwrap();
                tokio::spawn(server.transport(acceptor).serve(service, stopped));
                "https"
            }
        };
        Self {
            scheme,
            addr,
            seen,
            hang,
            _stop: stop,
        }
    }

    /// The auth URL to configure.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}/oauth2/auth", self.scheme, self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub(crate) fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }
}

fn decide(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let cookie_ok = header("cookie")
        .split(';')
        .any(|pair| pair.trim() == "session=good");
    let bearer_ok = header("authorization") == "Bearer good-token";
    if cookie_ok || bearer_ok {
        let mut response = Response::builder()
            .status(if cookie_ok {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            })
            .header("x-auth-request-user", "alice")
            .header("x-auth-request-email", "alice@example.com")
            .header("x-not-copied", "secret-internal");
        if cookie_ok {
            // A session refresh.
            response =
                response.header("set-cookie", "session=good; Path=/; Max-Age=3600; HttpOnly");
        }
        return response.body(Full::new(Bytes::new())).unwrap();
    }
    if header("accept").contains("text/html") {
        let original = format!(
            "{}://{}{}",
            header("x-forwarded-proto"),
            header("x-forwarded-host"),
            header("x-forwarded-uri")
        );
        let location = format!("https://login.example.com/start?rd={}", encode(&original));
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", location)
            .header("set-cookie", "oauth_csrf=abc; Path=/; HttpOnly")
            .header("content-type", "text/html")
            .body(Full::new(Bytes::from_static(
                b"<a href=\"/login\">sign in</a>",
            )))
            .unwrap();
    }
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("www-authenticate", "Bearer realm=\"kestra\"")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"no session\n")))
        .unwrap()
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
