//! Typed failures of the proxy and the HTTP answer each one gets.

use http::StatusCode;
use std::error::Error as StdError;

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

impl ProxyError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Connect(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout | Self::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// Whether the upstream could not be connected to (refused, unreachable, or too slow to accept).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout)
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
            return if timed_out {
                Self::ConnectTimeout
            } else {
                Self::Connect(err.into())
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
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
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
            (ProxyError::BodyTooLarge, 413, "request body too large"),
            (ProxyError::BodyTimeout, 408, "request body timed out"),
            (ProxyError::UriTooLong, 414, "request target too long"),
        ];
        for (err, status, text) in cases {
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(err.to_string(), text);
        }
    }
}
