//! HTTP header rules that every kestra-edge layer shares, each written once.
//!
//! - [`remove_hop_by_hop`] drops the fields that describe one connection and must not be
//!   forwarded (RFC 9110 §7.6.1).
//! - [`list_items`] splits a comma-separated list field across all of its lines
//!   (RFC 9110 §5.6.1), honouring quoted strings.
//! - [`list_contains`] asks whether such a list holds a token, case-insensitively.
//! - [`split_unquoted`] splits on any separator outside quoted strings (`Forwarded`'s `;`).
//! - [`is_event_stream`] recognises a Server-Sent Events response.
//! - [`plain_text`] builds the gateway's own short answers (400, 404, 502…).
//! - [`recycle`] lends header maps and extension sets per thread to the own HTTP/1.1 paths.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use kestra_edge_headers::remove_hop_by_hop;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", HeaderValue::from_static("x-secret, keep-alive"));
//! headers.insert("x-secret", HeaderValue::from_static("1"));
//! headers.insert("te", HeaderValue::from_static("trailers, gzip"));
//! headers.insert("accept", HeaderValue::from_static("*/*"));
//! remove_hop_by_hop(&mut headers);
//!
//! assert!(headers.get("x-secret").is_none());
//! assert_eq!(headers["te"], "trailers");
//! assert_eq!(headers["accept"], "*/*");
//! ```

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Response, StatusCode};

pub mod recycle;

/// `Keep-Alive` (RFC 9112 Appendix C.2.2), not a constant in `http`.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`, a non-standard alias of `Connection` that clients still send.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fields that are hop-by-hop whatever `Connection` says.
///
/// RFC 9110 §7.6.1 names `Connection`, `Proxy-Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding` and `Upgrade`; `Trailer`, `Proxy-Authorization` and
/// `Proxy-Authenticate` concern this hop's framing and credentials too (as in Go's `httputil`).
pub const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    TRAILER,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Removes every hop-by-hop field from `headers`.
///
/// That is each name in [`HOP_BY_HOP`] and every field named by any `Connection` line
/// (RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection header field
/// before a message is forwarded and, for each connection-option in this field, remove any
/// header or trailer field(s) from the message with the same name"). A `TE` that lists
/// `trailers` is replaced by `TE: trailers`, so the next hop still knows the client accepts
/// trailers (RFC 9110 §10.1.4); its other codings concern this hop only. A `Trailer`
/// announcement is likewise rebuilt from the names that survive: hyper (like most HTTP/1.1
/// encoders) sends only announced trailers, so dropping it would drop the trailers.
///
/// Call it before adding the gateway's own fields: a client that lists `X-Forwarded-For` in
/// `Connection` removes only its own copy.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Without any of these names (`Connection` among them) there is nothing to remove: one
    // look at each present name, stopping at the first hit, spares nine removals by name on
    // the common request and response (an HTTP/2 request never has any).
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let te_trailers = list_contains(headers, &TE, "trailers");
    let mut listed: Vec<HeaderName> = Vec::new();
    if headers.contains_key(CONNECTION) {
        listed.extend(
            list_items(headers, &CONNECTION).filter_map(|item| HeaderName::from_bytes(item).ok()),
        );
        for name in &listed {
            headers.remove(name);
        }
    }
    let announced = headers
        .contains_key(TRAILER)
        .then(|| announced_trailers(headers, &listed))
        .flatten();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(announced) = announced {
        headers.insert(TRAILER, announced);
    }
}

/// The `Trailer` names that are neither hop-by-hop nor listed in `Connection`, as one value.
fn announced_trailers(headers: &HeaderMap, listed: &[HeaderName]) -> Option<HeaderValue> {
    let mut names: Vec<&[u8]> = Vec::new();
    for item in list_items(headers, &TRAILER) {
        let Ok(name) = HeaderName::from_bytes(item) else {
            continue;
        };
        if !HOP_BY_HOP.contains(&name) && !listed.contains(&name) {
            names.push(item);
        }
    }
    if names.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&names.join(&b", "[..])).ok()
}

/// Whether `headers` describe a Server-Sent Events stream: `Content-Type: text/event-stream`
/// with any parameters, in any case (WHATWG HTML §9.2.2; media types are case-insensitive,
/// RFC 9110 §8.3.1).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| is_event_stream_media_type(value.as_bytes()))
}

/// Whether one media type (`Content-Type`'s value, or one item of `Accept`) is
/// `text/event-stream`, with any parameters, in any case.
pub fn is_event_stream_media_type(value: &[u8]) -> bool {
    let media_type = value.split(|&b| b == b';').next().unwrap_or_default();
    trim_ows(media_type).eq_ignore_ascii_case(b"text/event-stream")
}

/// The gateway's own short answer: `status` with `text` as a `text/plain` body. `text`
/// names the failure class only, never an internal address. Marked as a [`GatewayAnswer`].
pub fn plain_text<B: From<&'static str>>(status: StatusCode, text: &'static str) -> Response<B> {
    let mut response = Response::new(B::from(text));
    *response.status_mut() = status;
    mark_gateway_answer(&mut response);
    response
}

/// A response extension on the gateway's own answers (400, 404, 413, 502, 504 …, never an
/// upstream's): an outer layer may add the request id to their `text/plain` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayAnswer;

/// A response extension naming the upstream that answered (a replica's `ip:port`, a forward
/// proxy's destination address), for an access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub std::sync::Arc<str>);

/// Sets `Content-Type: text/plain; charset=utf-8` on one of the gateway's own answers and
/// marks it as a [`GatewayAnswer`]; every layer's own answers go through here.
pub fn mark_gateway_answer<B>(response: &mut Response<B>) {
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.extensions_mut().insert(GatewayAnswer);
}

/// Returns whether the list field `name` holds `token`, compared ASCII case-insensitively.
pub fn list_contains(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// Iterates the items of the list field `name` over all of its lines, in order.
///
/// Items are split on commas outside quoted strings, trimmed of optional white space, and
/// empty items are skipped (RFC 9110 §5.6.1: "a recipient MUST parse and ignore a reasonable
/// number of empty list elements"). Items are bytes: a value with obs-text still yields its
/// ASCII items.
pub fn list_items<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| ListItems::new(value.as_bytes()))
}

/// Splits one field line into its list items.
#[derive(Debug)]
struct ListItems<'a> {
    parts: SplitUnquoted<'a>,
}

impl<'a> ListItems<'a> {
    fn new(line: &'a [u8]) -> Self {
        Self {
            parts: split_unquoted(line, b','),
        }
    }
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.parts
            .by_ref()
            .map(trim_ows)
            .find(|item| !item.is_empty())
    }
}

/// Splits `line` on `separator` wherever it stands outside a quoted string
/// (RFC 9110 §5.6.4: inside `"…"`, a backslash escapes the next byte). Pieces are returned
/// as they are, untrimmed, empty ones included.
///
/// ```
/// let parts: Vec<&[u8]> =
///     kestra_edge_headers::split_unquoted(br#"for="a;b";proto=http"#, b';').collect();
/// assert_eq!(parts, [&br#"for="a;b""#[..], b"proto=http"]);
/// ```
pub fn split_unquoted(line: &[u8], separator: u8) -> SplitUnquoted<'_> {
    SplitUnquoted {
        rest: Some(line),
        separator,
    }
}

/// Iterator of [`split_unquoted`].
#[derive(Debug, Clone)]
pub struct SplitUnquoted<'a> {
    rest: Option<&'a [u8]>,
    separator: u8,
}

impl<'a> Iterator for SplitUnquoted<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = !in_quotes;
            } else if b == self.separator && !in_quotes {
                self.rest = Some(&rest[i + 1..]);
                return Some(&rest[..i]);
            }
        }
        self.rest = None;
        Some(rest)
    }
}

/// Trims optional white space (SP / HTAB, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lines: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn removes_hop_by_hop_fields() {
        // (input lines, names that remain)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (&[("accept", "*/*")], &["accept"]),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "websocket"),
                    ("trailer", "x-checksum"),
                    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                    ("proxy-authenticate", "Basic"),
                    ("te", "gzip"),
                    ("host", "kestra.example"),
                ],
                &["host", "trailer"],
            ),
            // Names listed in Connection, across several lines, any case, with empty items.
            (
                &[
                    ("connection", "X-Forwarded-For, ,x-a"),
                    ("connection", " X-B\t"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                    ("x-c", "3"),
                ],
                &["x-c"],
            ),
            // A listed token that is no valid field name is ignored.
            (
                &[
                    ("connection", "close, bad name, x-a"),
                    ("x-a", "1"),
                    ("x-z", "1"),
                ],
                &["x-z"],
            ),
            // TE keeps only `trailers`.
            (&[("te", "gzip, Trailers")], &["te"]),
            (&[("connection", "te"), ("te", "trailers")], &["te"]),
            // Trailer is re-announced without hop-by-hop or Connection-listed names.
            (
                &[
                    ("trailer", "x-checksum, transfer-encoding"),
                    ("trailer", "x-private"),
                    ("connection", "x-private"),
                ],
                &["trailer"],
            ),
            (&[("trailer", "keep-alive, bad name")], &[]),
        ];
        for (input, expected) in cases {
            let mut headers = map(input);
            remove_hop_by_hop(&mut headers);
            assert_eq!(names(&headers), *expected, "input: {input:?}");
            if let Some(te) = headers.get(TE) {
                assert_eq!(te, "trailers");
            }
            if let Some(trailer) = headers.get(TRAILER) {
                assert_eq!(trailer, "x-checksum");
            }
        }
    }

    #[test]
    fn list_items_split_outside_quotes() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["a, b,c"], &["a", "b", "c"]),
            (&[" , a ,, ", "b"], &["a", "b"]),
            (
                &[r#"for="[2001:db8::1]:4711", for=x"#],
                &[r#"for="[2001:db8::1]:4711""#, "for=x"],
            ),
            (&[r#"a="x,y", b"#], &[r#"a="x,y""#, "b"]),
            (&[r#"a="x\",y", b"#], &[r#"a="x\",y""#, "b"]),
            (&[""], &[]),
        ];
        for (lines, expected) in cases {
            let input: Vec<(&str, &str)> = lines.iter().map(|l| ("x-list", *l)).collect();
            let headers = map(&input);
            let items: Vec<&[u8]> =
                list_items(&headers, &HeaderName::from_static("x-list")).collect();
            let expected: Vec<&[u8]> = expected.iter().map(|e| e.as_bytes()).collect();
            assert_eq!(items, expected, "lines: {lines:?}");
        }
    }

    #[test]
    fn event_streams_are_recognised() {
        let cases = [
            (Some("text/event-stream"), true),
            (Some("Text/Event-Stream; charset=utf-8"), true),
            (Some(" text/event-stream ;x=y"), true),
            (Some("text/event-streams"), false),
            (Some("text/plain"), false),
            (Some("application/json; text/event-stream"), false),
            (None, false),
        ];
        for (content_type, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = content_type {
                headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            }
            assert_eq!(is_event_stream(&headers), expected, "{content_type:?}");
        }
    }

    #[test]
    fn list_items_keep_ascii_items_of_obs_text_values() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_bytes(b"x-a, \xff").unwrap());
        headers.insert("x-a", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }
}
