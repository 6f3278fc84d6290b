//! Which requests may upgrade, and what a valid answer looks like.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{
    header::{CONNECTION, UPGRADE},
    HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use kestra_edge_headers::{list_contains, list_items};
use sha1::{Digest, Sha1};

pub(crate) const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
pub(crate) const SEC_WEBSOCKET_VERSION: HeaderName =
    HeaderName::from_static("sec-websocket-version");
pub(crate) const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
pub(crate) const SEC_WEBSOCKET_PROTOCOL: HeaderName =
    HeaderName::from_static("sec-websocket-protocol");
pub(crate) const SEC_WEBSOCKET_EXTENSIONS: HeaderName =
    HeaderName::from_static("sec-websocket-extensions");
/// `HTTP2-Settings` (RFC 7540 §3.2.1) only accompanies an `h2c` upgrade, which is never
/// forwarded.
pub(crate) const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// RFC 6455 §1.3: the GUID appended to the client's key.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Plan {
    /// An ordinary request (no upgrade, or one that is not allowed: served as plain HTTP/1.1).
    Plain,
    /// An allowed upgrade to `protocol` (lower case); for WebSocket, the client's key.
    Upgrade {
        protocol: HeaderValue,
        key: Option<HeaderValue>,
    },
    /// A malformed upgrade, answered with this status.
    Refuse(StatusCode, &'static str),
}

/// Classifies an HTTP/1.1 request against the `allowed` protocols (lower case).
///
/// An upgrade needs `Connection: upgrade` and an `Upgrade` token (RFC 9110 §7.8); the first
/// allowed token is chosen. `h2c` is never allowed. A WebSocket upgrade must be a GET with
/// `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` of 16 base64-encoded bytes
/// (RFC 6455 §4.1), else 400.
pub(crate) fn plan<B>(req: &Request<B>, allowed: &[String]) -> Plan {
    let headers = req.headers();
    if !list_contains(headers, &CONNECTION, "upgrade") {
        return Plan::Plain;
    }
    let chosen = list_items(headers, &UPGRADE).find_map(|item| {
        let token = std::str::from_utf8(item).ok()?.to_ascii_lowercase();
        (token != "h2c" && allowed.contains(&token)).then_some(token)
    });
    let Some(protocol) = chosen.and_then(|t| HeaderValue::from_str(&t).ok()) else {
        return Plan::Plain;
    };
    if protocol != "websocket" {
        return Plan::Upgrade {
            protocol,
            key: None,
        };
    }
    if req.method() != Method::GET {
        return Plan::Refuse(StatusCode::BAD_REQUEST, "websocket upgrade must be a GET\n");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Plan::Refuse(StatusCode::BAD_REQUEST, "websocket version must be 13\n");
    }
    match headers.get(SEC_WEBSOCKET_KEY) {
        Some(key) if is_websocket_key(key) => Plan::Upgrade {
            protocol,
            key: Some(key.clone()),
        },
        _ => Plan::Refuse(StatusCode::BAD_REQUEST, "invalid websocket key\n"),
    }
}

fn is_websocket_key(key: &HeaderValue) -> bool {
    STANDARD
        .decode(key.as_bytes())
        .is_ok_and(|bytes| bytes.len() == 16)
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
pub(crate) fn websocket_accept(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// A fresh random `Sec-WebSocket-Key`, for upgrades the gateway starts itself (an HTTP/2
/// extended CONNECT becomes an HTTP/1.1 upgrade upstream).
pub(crate) fn new_websocket_key() -> HeaderValue {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_mut(8) {
        // std's per-instance random keys: a nonce, not a secret (RFC 6455 §4.1).
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        half.copy_from_slice(&random.to_le_bytes());
    }
    HeaderValue::from_str(&STANDARD.encode(bytes))
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// Whether the upstream's 101 really switched to `protocol` and, for WebSocket, accepted
/// `key` (RFC 6455 §4.1, the client "MUST _Fail the WebSocket Connection_" otherwise).
pub(crate) fn upstream_agrees<B>(
    response: &Response<B>,
    protocol: &HeaderValue,
    key: Option<&HeaderValue>,
) -> bool {
    let headers = response.headers();
    let protocol = protocol.to_str().unwrap_or_default();
    if !list_contains(headers, &UPGRADE, protocol) {
        return false;
    }
    match key {
        Some(key) => headers
            .get(SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|accept| accept.as_bytes() == websocket_accept(key.as_bytes()).as_bytes()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, lines: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/kestra/ws");
        for (name, value) in lines {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn the_rfc_6455_example_accept() {
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept(KEY.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn requests_are_classified() {
        let allowed = vec!["websocket".to_owned()];
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", KEY),
        ];
        assert!(matches!(
            plan(&request(Method::GET, &ws), &allowed),
            Plan::Upgrade { ref protocol, key: Some(_) } if protocol == "websocket"
        ));
        let status = |p: Plan| match p {
            Plan::Refuse(status, _) => Some(status.as_u16()),
            _ => None,
        };
        assert_eq!(
            status(plan(&request(Method::POST, &ws), &allowed)),
            Some(400)
        );
        let mut no_key = ws.to_vec();
        no_key.pop();
        assert_eq!(
            status(plan(&request(Method::GET, &no_key), &allowed)),
            Some(400)
        );
        let mut bad_key = no_key.clone();
        bad_key.push(("sec-websocket-key", "c2hvcnQ="));
        assert_eq!(
            status(plan(&request(Method::GET, &bad_key), &allowed)),
            Some(400)
        );
        let mut v8 = ws.to_vec();
        v8[2] = ("sec-websocket-version", "8");
        assert_eq!(
            status(plan(&request(Method::GET, &v8), &allowed)),
            Some(400)
        );

        // Not upgrades: no Connection token, h2c, protocols not allowed.
        for lines in [
            &[("upgrade", "websocket")][..],
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ][..],
            &[("connection", "upgrade"), ("upgrade", "foo/1")][..],
        ] {
            assert!(
                matches!(plan(&request(Method::GET, lines), &allowed), Plan::Plain),
                "{lines:?}"
            );
        }
        // Another allowed protocol, chosen among several offered.
        let allowed = vec!["websocket".to_owned(), "foo".to_owned()];
        let offered = [("connection", "upgrade"), ("upgrade", "h2c, foo")];
        assert!(matches!(
            plan(&request(Method::GET, &offered), &allowed),
            Plan::Upgrade { ref protocol, key: None } if protocol == "foo"
        ));
    }

    #[test]
    fn upstream_answers_are_checked() {
        let key = HeaderValue::from_static(KEY);
        let protocol = HeaderValue::from_static("websocket");
        let answer = |lines: &[(&str, &str)]| {
            let mut builder = Response::builder().status(101);
            for (name, value) in lines {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap()
        };
        let good = answer(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(upstream_agrees(&good, &protocol, Some(&key)));
        let forged = answer(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "forged="),
        ]);
        assert!(!upstream_agrees(&forged, &protocol, Some(&key)));
        let other = answer(&[
            ("upgrade", "h2c"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(!upstream_agrees(&other, &protocol, Some(&key)));
    }

    #[test]
    fn generated_keys_are_valid_and_differ() {
        let a = new_websocket_key();
        let b = new_websocket_key();
        assert!(is_websocket_key(&a) && is_websocket_key(&b));
        assert_ne!(a, b);
    }
}
