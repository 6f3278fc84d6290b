//! Typed failures of the proxy and the HTTP answer each one gets.

use http::StatusCode;
use std::{error::Error as StdError, fmt};

/// Why a request could not be proxied; each kind maps to one HTTP answer.
///
/// The `Display` text is what the client reads in the answer's body: it names the failure
/// class and never an internal address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The upstream refused or could not be reached (502).
    #[error("upstream unavailable")]
    Connect(#[source] BoxError),
    /// Connecting to the upstream took longer than `connect_timeout` (504).
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// No response head arrived within `read_timeout` after the last request byte (504).
    #[error("upstream response timed out")]
    ResponseTimeout,
    /// The TLS handshake with an `https://` upstream failed: its certificate was rejected
    /// (unknown issuer, wrong name, expired, …) or it does not speak TLS (502). Never trusted
    /// silently; [`upstream_tls`](Self::upstream_tls) tells why.
    #[error("upstream TLS failed")]
    UpstreamTls(#[source] UpstreamTlsError),
    /// The upstream closed the connection or sent something that is not HTTP (502).
    #[error("upstream connection failed")]
    Upstream(#[source] BoxError),
    /// Reading the client's request body failed, so the request cannot be completed (400).
    #[error("request body failed")]
    RequestBody(#[source] BoxError),
    /// The request body is larger than `max_body`: declared (answered before anything is
    /// sent upstream) or found while streaming (the upstream request is aborted) (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// The client sent nothing of its request body for `body_timeout`; the upstream request
    /// is aborted (408).
    #[error("request body timed out")]
    BodyTimeout,
    /// The request target is longer than `max_uri` (414).
    #[error("request target too long")]
    UriTooLong,
}

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A response extension on the gateway's own answer when the upstream failed before any
/// byte of a response: what a balancer over several upstreams needs for passive ejection
/// and for choosing whether a request may go to another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamFailure {
    /// The upstream refused the connection, was unreachable, or failed the TLS handshake:
    /// no byte of the request was sent and its body was never read.
    Connect,
    /// Connecting took longer than `connect_timeout`: nothing was sent, the body never read.
    ConnectTimeout,
    /// The connection closed, was reset, or carried something that is not HTTP, before any
    /// byte of a response; the request (or part of it) may have reached the upstream.
    Closed,
    /// No response head within `read_timeout`: the upstream got the request and is silent.
    ResponseTimeout,
}

impl UpstreamFailure {
    /// Whether the request certainly never reached the upstream, so that it may be sent to
    /// another one whatever its method.
    pub fn never_sent(self) -> bool {
        matches!(self, Self::Connect | Self::ConnectTimeout)
    }
}

impl ProxyError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Connect(_) | Self::UpstreamTls(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout | Self::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// Whether the upstream could not be connected to (refused, unreachable, too slow to
    /// accept, or its TLS handshake failed).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::ConnectTimeout | Self::UpstreamTls(_)
        )
    }

    /// Why the upstream's TLS handshake failed, when that is the failure.
    pub fn upstream_tls(&self) -> Option<&UpstreamTlsError> {
        match self {
            Self::UpstreamTls(tls) => Some(tls),
            _ => None,
        }
    }

    /// The upstream's part in this failure, when the upstream (not the client) failed.
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            Self::Connect(_) | Self::UpstreamTls(_) => Some(UpstreamFailure::Connect),
            Self::ConnectTimeout => Some(UpstreamFailure::ConnectTimeout),
            Self::Upstream(_) => Some(UpstreamFailure::Closed),
            Self::ResponseTimeout => Some(UpstreamFailure::ResponseTimeout),
            Self::RequestBody(_) | Self::BodyTooLarge | Self::BodyTimeout | Self::UriTooLong => {
                None
            }
        }
    }

    /// Whether a timeout expired.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout | Self::ResponseTimeout | Self::BodyTimeout
        )
    }

    /// Classifies an error of the pooled client.
    pub(crate) fn from_client(err: hyper_util::client::legacy::Error) -> Self {
        let timed_out = chain(&err).any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        if err.is_connect() {
            if timed_out {
                return Self::ConnectTimeout;
            }
            // hyper-rustls reports a failed handshake as the rustls::Error inside an io::Error.
            let tls = chain(&err).find_map(|e| e.downcast_ref::<rustls::Error>());
            return match tls {
                Some(tls) => Self::UpstreamTls(UpstreamTlsError::new(tls.clone())),
                None => Self::Connect(err.into()),
            };
        }
        if chain(&err).any(|e| e.is::<crate::body::BodyTooLarge>()) {
            return Self::BodyTooLarge;
        }
        if chain(&err).any(|e| e.is::<crate::body::BodyTimeout>()) {
            return Self::BodyTimeout;
        }
        let user_body = chain(&err)
            .filter_map(|e| e.downcast_ref::<hyper::Error>())
            .any(hyper::Error::is_user);
        if user_body {
            Self::RequestBody(err.into())
        } else {
            Self::Upstream(err.into())
        }
    }
}

/// An error and its sources, outermost first.
///
/// An `io::Error` is followed into the error it wraps: its own `source()` skips that error
/// (it returns the wrapped error's source), and the wrapped one is what tells the cause.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| match (*e)
        .downcast_ref::<std::io::Error>()
    {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => (*e).source(),
    })
}

/// The TLS handshake with the upstream failed; [`reason`](Self::reason) tells why.
///
/// Its `Display` is the log line: `upstream certificate rejected: unknown issuer`,
/// `… not valid for name kestra.internal`, `… expired`, or `upstream TLS handshake failed:`
/// and rustls's own text. The rustls error is its [`source`](StdError::source).
#[derive(Debug)]
pub struct UpstreamTlsError {
    reason: UpstreamTlsReason,
    error: rustls::Error,
}

/// Why the TLS handshake with the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamTlsReason {
    /// The certificate's chain does not end at a trusted root (the system's or an
    /// `upstream_ca` file's).
    UnknownIssuer,
    /// The certificate does not name the upstream's host.
    NotValidForName,
    /// The certificate's `notAfter` has passed.
    Expired,
    /// Any other failure: another certificate problem, a TLS alert, an upstream that does
    /// not speak TLS.
    Other,
}

impl UpstreamTlsError {
    pub(crate) fn new(error: rustls::Error) -> Self {
        use rustls::CertificateError as Cert;
        let reason = match &error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                Cert::UnknownIssuer => UpstreamTlsReason::UnknownIssuer,
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    UpstreamTlsReason::NotValidForName
                }
                Cert::Expired | Cert::ExpiredContext { .. } => UpstreamTlsReason::Expired,
                _ => UpstreamTlsReason::Other,
            },
            _ => UpstreamTlsReason::Other,
        };
        Self { reason, error }
    }

    /// Why the handshake failed.
    pub fn reason(&self) -> UpstreamTlsReason {
        self.reason
    }
}

impl fmt::Display for UpstreamTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rejected = "upstream certificate rejected";
        match self.reason {
            UpstreamTlsReason::UnknownIssuer => write!(f, "{rejected}: unknown issuer"),
            UpstreamTlsReason::NotValidForName => match &self.error {
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { expected, .. },
                ) => write!(f, "{rejected}: not valid for name {}", expected.to_str()),
                _ => write!(f, "{rejected}: not valid for the upstream's name"),
            },
            UpstreamTlsReason::Expired => write!(f, "{rejected}: expired"),
            UpstreamTlsReason::Other => write!(f, "upstream TLS handshake failed: {}", self.error),
        }
    }
}

impl StdError for UpstreamTlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

/// A response body failed after its head had been sent; the client's transfer is aborted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The upstream sent nothing for `read_timeout` while the body was incomplete.
    #[error("upstream body read timed out")]
    ReadTimeout,
    /// The upstream connection failed mid-body.
    #[error("upstream body failed")]
    Upstream(#[source] hyper::Error),
    /// The upstream connection of the own HTTP/1.1 path failed mid-body: it closed early,
    /// was reset, or broke the framing (see [`h1::H1Error`](crate::h1::H1Error)).
    #[error("upstream body failed")]
    Connection(#[source] BoxError),
}

impl BodyError {
    /// Whether the read timeout expired.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::ReadTimeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_status() {
        let io = || Box::new(std::io::Error::other("x")) as BoxError;
        let cases = [
            (ProxyError::Connect(io()), 502, "upstream unavailable"),
            (
                ProxyError::ConnectTimeout,
                504,
                "upstream connect timed out",
            ),
            (
                ProxyError::ResponseTimeout,
                504,
                "upstream response timed out",
            ),
            (
                ProxyError::Upstream(io()),
                502,
                "upstream connection failed",
            ),
            (ProxyError::RequestBody(io()), 400, "request body failed"),
            (
                ProxyError::UpstreamTls(UpstreamTlsError::new(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))),
                502,
                "upstream TLS failed",
            ),
            (ProxyError::BodyTooLarge, 413, "request body too large"),
            (ProxyError::BodyTimeout, 408, "request body timed out"),
            (ProxyError::UriTooLong, 414, "request target too long"),
        ];
        for (err, status, text) in cases {
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn rustls_errors_are_classified_by_reason() {
        use rustls::{CertificateError as Cert, Error};
        let name = rustls_pki_types::ServerName::try_from("kestra.internal").unwrap();
        let cases = [
            (
                Error::InvalidCertificate(Cert::UnknownIssuer),
                UpstreamTlsReason::UnknownIssuer,
                "upstream certificate rejected: unknown issuer",
            ),
            (
                Error::InvalidCertificate(Cert::NotValidForNameContext {
                    expected: name,
                    presented: vec!["DnsName(\"other\")".to_owned()],
                }),
                UpstreamTlsReason::NotValidForName,
                "upstream certificate rejected: not valid for name kestra.internal",
            ),
            (
                Error::InvalidCertificate(Cert::NotValidForName),
                UpstreamTlsReason::NotValidForName,
                "upstream certificate rejected: not valid for the upstream's name",
            ),
            (
                Error::InvalidCertificate(Cert::ExpiredContext {
                    time: rustls_pki_types::UnixTime::since_unix_epoch(
                        std::time::Duration::from_secs(2_000_000_000),
                    ),
                    not_after: rustls_pki_types::UnixTime::since_unix_epoch(
                        std::time::Duration::from_secs(1_000_000_000),
                    ),
                }),
                UpstreamTlsReason::Expired,
                "upstream certificate rejected: expired",
            ),
            (
                Error::InvalidCertificate(Cert::Expired),
                UpstreamTlsReason::Expired,
                "upstream certificate rejected: expired",
            ),
            (
                Error::InvalidCertificate(Cert::BadSignature),
                UpstreamTlsReason::Other,
                "upstream TLS handshake failed: invalid peer certificate: BadSignature",
            ),
            (
                Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                UpstreamTlsReason::Other,
                "upstream TLS handshake failed: received fatal alert: HandshakeFailure",
            ),
        ];
        for (error, reason, text) in cases {
            let tls = UpstreamTlsError::new(error);
            assert_eq!(tls.reason(), reason);
            assert_eq!(tls.to_string(), text);
            assert!(tls.source().is_some_and(|e| e.is::<rustls::Error>()));
        }
    }

    #[test]
    fn chain_reaches_a_rustls_error_wrapped_in_io_errors() {
        // hyper-rustls: io::Error::other(tokio-rustls's io::Error(InvalidData, rustls::Error)).
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls);
        let outer: BoxError = Box::new(std::io::Error::other(inner));
        // Plain `source()` misses it: io::Error skips the error it wraps.
        let mut sources = std::iter::successors(
            Some(&*outer as &(dyn StdError + 'static)),
            |e: &&(dyn StdError + 'static)| (*e).source(),
        );
        assert!(sources.all(|e| !e.is::<rustls::Error>()));
        let found = chain(&*outer).find_map(|e| e.downcast_ref::<rustls::Error>());
        assert!(
            matches!(
                found,
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{found:?}"
        );
    }
}
