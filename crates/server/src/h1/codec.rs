//! The HTTP/1.1 server codec of the hot path: request heads parsed with `httparse`, response
//! heads and bodies written the way hyper's server writes them.
//!
//! Nothing here does I/O, so the fuzz target and the differential test against hyper drive
//! exactly the code the server runs.
//!
//! The codec takes only what it can serve with certainty: a well-formed HTTP/1.1 request
//! without a body. Everything else ([`Parsed::Hyper`]) is handed, with the bytes read so
//! far, to hyper's HTTP/1 connection, which then serves the connection to its end: requests
//! with a body (`Content-Length`, `Transfer-Encoding`; where smuggling lives), `Expect`,
//! upgrades and `CONNECT`, HTTP/1.0, heads over the limits (hyper answers 431 or 414) and
//! anything `httparse` or `http` refuses (hyper answers 400). So the codec never accepts a
//! request hyper would refuse, and a refusal always comes from the same code as before.
//!
//! `Connection` and `TE` tokens are read with the project's one list parser
//! (`kestra_edge_headers::list_contains`), which respects quoted strings and reads non-UTF-8
//! values; hyper splits on every comma and skips non-UTF-8 values. They differ only on such
//! values, where the codec honours a `close` hyper would miss.

use bytes::Bytes;
use http::{
    header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version,
};
use kestra_edge_headers::{list_contains, recycle};
use std::{
    cell::RefCell,
    mem::MaybeUninit,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The prior-knowledge HTTP/2 preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's longest request target; a longer one is answered 414 (by hyper).
pub const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// The header fields parsed on the stack; a server allowing more parses them on the heap.
const STACK_HEADERS: usize = 100;

/// Room in a request's header map for the fields a proxy's layers add (the forwarded
/// headers, a request id): the map is allocated once at its final size instead of growing
/// and rehashing in the forwarded layer (one allocation and one reallocation less).
const ADDED_FIELDS: usize = 8;

/// The result of [`parse_request`].
#[derive(Debug)]
// Returned by value once per request: boxing the request would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// The head is not complete: read more.
    Partial,
    /// A bodiless HTTP/1.1 request of `len` bytes, served by the codec.
    Request {
        /// The request, without body.
        request: Request<()>,
        /// How the response must be framed.
        info: RequestInfo,
        /// The head's length in the buffer.
        len: usize,
    },
    /// Not for the codec: hyper serves the connection from these bytes on.
    Hyper,
}

/// What the response writer needs to know of the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    /// The request was `HEAD`: the response has no body.
    pub head: bool,
    /// The client did not ask to close (`Connection: close`).
    pub keep_alive: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub trailers: bool,
}

/// Where a complete head can end in `buf`, scanning from `from`: the index after the empty
/// line, or `None`. A head ends with an empty line, whatever its line endings (`\n\n` or
/// `\n\r\n`); callers scan each byte once by passing where the last scan stopped.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Line feed to line feed with `memchr` (many bytes at a time), not byte by byte: the
    // scan was 500 of a proxied GET's 26,000 instructions.
    let rest = buf.get(from..)?;
    memchr::memchr_iter(b'\n', rest).find_map(|at| {
        let i = from + at;
        match buf.get(i + 1) {
            Some(b'\n') => Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
            _ => None,
        }
    })
}

/// Where the next [`head_end`] scan of a buffer of `len` bytes should start: far enough back
/// that a terminator split across two reads is still seen.
pub fn next_scan(len: usize) -> usize {
    len.saturating_sub(2)
}

/// Whether `buf` may still become the HTTP/2 preface (`Some(false)`: it cannot;
/// `Some(true)`: it is; `None`: too short to tell).
pub fn h2_preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Some(false)
    } else if n == H2_PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Parses the request head at the start of `buf` (the bytes read so far).
///
/// `max_headers` and `max_head` are the server's limits: a head over them goes to hyper,
/// which answers 431.
pub fn parse_request(buf: &[u8], max_headers: usize, max_head: usize) -> Parsed {
    match head_end(buf, 0) {
        Some(end) => parse_head(&buf[..end], max_headers, max_head),
        None if buf.len() > max_head => Parsed::Hyper,
        None => Parsed::Partial,
    }
}

/// Parses `head`, which ends where [`head_end`] found the end of a head: its bytes are
/// copied once, and the URI and header values are slices of that copy.
pub fn parse_head(head: &[u8], max_headers: usize, max_head: usize) -> Parsed {
    if head.len() > max_head {
        return Parsed::Hyper;
    }
    // One copy of the head: the request's values borrow it, and the read buffer goes back
    // to its pool.
    let bytes = Bytes::copy_from_slice(head);
    let mut parsed = httparse::Request::new(&mut []);
    if max_headers <= STACK_HEADERS {
        // Uninitialised slots: zeroing 100 of them costs more than parsing a head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let result = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut parsed,
            &bytes,
            &mut fields[..max_headers],
        );
        finish(&bytes, &parsed, result)
    } else {
        let mut fields = Vec::with_capacity(max_headers);
        fields.resize_with(max_headers, MaybeUninit::uninit);
        let result = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut parsed,
            &bytes,
            &mut fields,
        );
        finish(&bytes, &parsed, result)
    }
}

/// Builds the request httparse read from `bytes`.
fn finish(
    bytes: &Bytes,
    parsed: &httparse::Request<'_, '_>,
    result: httparse::Result<usize>,
) -> Parsed {
    let len = match result {
        Ok(httparse::Status::Complete(len)) => len,
        // A terminator was seen, yet the head is not complete (empty lines before the
        // request line), or httparse refused it: hyper decides.
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Hyper,
    };
    if parsed.version != Some(1) {
        return Parsed::Hyper;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parsed::Hyper;
    };
    if path.len() > MAX_URI_LEN {
        return Parsed::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT {
        return Parsed::Hyper;
    }
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice_ref(path.as_bytes())) else {
        return Parsed::Hyper;
    };
    let mut headers = recycle::header_map(parsed.headers.len() + ADDED_FIELDS);
    // Whether `Connection` and `TE` are there at all: most requests have neither, and a
    // lookup of an absent name costs a hash and a probe each.
    let (mut connection, mut te) = (false, false);
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Hyper;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice_ref(field.value)) else {
            return Parsed::Hyper;
        };
        // A body, an expectation or an upgrade: hyper's to serve.
        if matches!(name, CONTENT_LENGTH | TRANSFER_ENCODING | EXPECT | UPGRADE) {
            return Parsed::Hyper;
        }
        connection |= name == CONNECTION;
        te |= name == TE;
        headers.append(name, value);
    }
    if connection && list_contains(&headers, &CONNECTION, "upgrade") {
        return Parsed::Hyper;
    }
    let info = RequestInfo {
        head: method == Method::HEAD,
        keep_alive: !(connection && list_contains(&headers, &CONNECTION, "close")),
        trailers: te && list_contains(&headers, &TE, "trailers"),
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    *request.extensions_mut() = recycle::extensions();
    Parsed::Request { request, info, len }
}

/// What the response body is known to be when its head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// The body has already ended (`is_end_stream`).
    Empty,
    /// The body says it is exactly this long.
    Known(u64),
    /// Not known.
    Unknown,
}

impl BodyLength {
    /// From a body's `is_end_stream` and size hint, as hyper's dispatcher takes it.
    pub fn of<B: http_body::Body>(body: &B) -> Self {
        if body.is_end_stream() {
            Self::Empty
        } else {
            body.size_hint()
                .exact()
                .map_or(Self::Unknown, BodyLength::Known)
        }
    }
}

/// How the response body is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body at all, as for `HEAD`, 204 and 304).
    Length(u64),
    /// Chunked; trailer fields are sent only when the client accepts them and the response
    /// declared them in `Trailer` (hyper's rule).
    Chunked(Option<Vec<HeaderName>>),
    /// Until the connection closes (an HTTP/1.0 response of unknown length).
    Close,
}

/// The response head written by [`encode_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// How the body follows.
    pub framing: Framing,
    /// The connection closes once this response is written.
    pub last: bool,
}

/// Why a response head cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An informational (1xx) response other than 101: a service cannot answer with one
    /// (hyper's rule); the connection answers 500 and closes, as hyper does.
    #[error("1xx response from a service")]
    Informational,
    /// `Content-Length` unparsable or repeated with another value (or repeated at all on a
    /// bodiless HEAD answer), or after `Transfer-Encoding`: nothing is written and the
    /// connection closes, as hyper does.
    #[error("invalid Content-Length in the response")]
    ContentLength,
    /// `Transfer-Encoding` after `Content-Length`: nothing is written and the connection
    /// closes.
    #[error("Transfer-Encoding after Content-Length in the response")]
    TransferEncoding,
}

/// Writes the response head into `dst` as hyper's HTTP/1 server does for an HTTP/1.1
/// client: its status line, the fields (lowercase, in the map's order, repeated names on
/// lines of their own except `Content-Length`, `Transfer-Encoding`, `Connection` and
/// `Trailer`), the framing field hyper would add, `connection: close` when `keep_alive` is
/// false, and `date`.
///
/// On error `dst` is left as it was.
pub fn encode_head(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    body: BodyLength,
    request: RequestInfo,
    keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Result<Encoded, EncodeError> {
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(EncodeError::Informational);
    }
    let start = dst.len();
    let result = encode_fields(status, version, headers, body, request, keep_alive, dst);
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

fn encode_fields(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    body: BodyLength,
    request: RequestInfo,
    keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Result<Encoded, EncodeError> {
    let http10 = version == Version::HTTP_10;
    let chunkable = !http10 && can_have_body(request, status);
    dst.reserve(64 + headers.len() * 32);
    if !http10 && status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }

    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    // A 101 ends the HTTP/1 exchange: hyper writes it and closes (no upgrade is pending on
    // a request the codec serves).
    // Most responses have no `Connection`: a look along the few names costs less than a
    // hashed lookup.
    let has_connection = headers.keys().any(|name| *name == CONNECTION);
    let closes = has_connection && list_contains(headers, &CONNECTION, "close");
    let mut last = !keep_alive || closes || status == StatusCode::SWITCHING_PROTOCOLS;
    let mut trailer_names: Option<Vec<HeaderName>> = None;
    // Each (name, value) in order, a name's values one after the other. The names framing
    // depends on are written once, from all their values; the others as they come, with no
    // lookup by name.
    let mut handled: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        let special = matches!(
            *name,
            CONTENT_LENGTH | TRANSFER_ENCODING | CONNECTION | TRAILER
        );
        if !special {
            if *name == DATE {
                wrote_date = true;
            }
            field(dst, name.as_str().as_bytes(), value.as_bytes());
            continue;
        }
        if handled == Some(name) {
            continue;
        }
        handled = Some(name);
        let values = headers.get_all(name);
        match *name {
            CONTENT_LENGTH => {
                if wrote_len {
                    return Err(EncodeError::ContentLength);
                }
                let mut first = None;
                for value in values {
                    match body {
                        // hyper trusts a body that knows its length.
                        BodyLength::Known(known) => {
                            if first.is_none() {
                                framing = Framing::Length(known);
                                first = Some(value);
                            }
                        }
                        BodyLength::Unknown => {
                            let len = digits(value.as_bytes()).ok_or(EncodeError::ContentLength)?;
                            match first {
                                None => {
                                    framing = Framing::Length(len);
                                    first = Some(value);
                                }
                                Some(prev) if digits(prev.as_bytes()) != Some(len) => {
                                    return Err(EncodeError::ContentLength);
                                }
                                Some(_) => {}
                            }
                        }
                        // No body: only a HEAD response keeps the field, and only once
                        // (hyper refuses a repeated one there).
                        BodyLength::Empty => {
                            if request.head {
                                if wrote_len {
                                    return Err(EncodeError::ContentLength);
                                }
                                field(dst, b"content-length", value.as_bytes());
                                wrote_len = true;
                            }
                        }
                    }
                }
                if let Some(value) = first {
                    field(dst, b"content-length", value.as_bytes());
                    wrote_len = true;
                }
            }
            TRANSFER_ENCODING => {
                if wrote_len {
                    return Err(EncodeError::TransferEncoding);
                }
                if !chunkable {
                    continue;
                }
                wrote_len = true;
                framing = Framing::Chunked(None);
                joined(dst, b"transfer-encoding", &values);
                if !values.iter().next_back().is_some_and(is_chunked) {
                    dst.extend_from_slice(b", chunked");
                }
                dst.extend_from_slice(b"\r\n");
            }
            CONNECTION => {
                joined(dst, b"connection", &values);
                if !keep_alive && !closes {
                    dst.extend_from_slice(b", close");
                }
                dst.extend_from_slice(b"\r\n");
            }
            TRAILER => {
                if !chunkable {
                    continue;
                }
                joined(dst, b"trailer", &values);
                dst.extend_from_slice(b"\r\n");
                for value in values {
                    if let Ok(list) = value.to_str() {
                        trailer_names.get_or_insert_with(Vec::new).extend(
                            list.split(',')
                                .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok()),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    if !keep_alive && !has_connection {
        dst.extend_from_slice(b"connection: close\r\n");
    }

    if !wrote_len {
        framing = match body {
            BodyLength::Unknown if http10 || !can_have_body(request, status) => Framing::Close,
            BodyLength::Unknown => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked(None)
            }
            BodyLength::Empty | BodyLength::Known(0) => {
                if can_have_content_length(status) && !request.head {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(len) => {
                if can_have_content_length(status) {
                    dst.extend_from_slice(b"content-length: ");
                    write_decimal(dst, len);
                    dst.extend_from_slice(b"\r\n");
                    Framing::Length(len)
                } else {
                    Framing::Length(0)
                }
            }
        };
    }
    if !can_have_body(request, status) {
        framing = Framing::Length(0);
    }
    if let (Framing::Chunked(allowed), true) = (&mut framing, request.trailers) {
        *allowed = trailer_names;
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        cached_date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    if framing == Framing::Close {
        last = true;
    }
    Ok(Encoded { framing, last })
}

/// Writes `name: v1, v2, …` (no line end): hyper joins the lines of these fields.
fn joined(dst: &mut Vec<u8>, name: &[u8], values: &http::header::GetAll<'_, HeaderValue>) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            dst.extend_from_slice(b", ");
        }
        dst.extend_from_slice(value.as_bytes());
    }
}

fn field(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// Whether the response to this request may have a body (hyper's `can_chunked`).
fn can_have_body(request: RequestInfo, status: StatusCode) -> bool {
    !request.head
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

fn can_have_content_length(status: StatusCode) -> bool {
    !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// Whether `chunked` is the last transfer coding of `value`.
fn is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// A `Content-Length` value: decimal digits only, as hyper reads it.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn write_decimal(dst: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

/// Writes a chunk's size line (`{len:X}\r\n`, upper-case hex as hyper writes it).
pub fn chunk_header(dst: &mut Vec<u8>, len: usize) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = len;
    loop {
        i -= 1;
        hex[i] = b"0123456789ABCDEF"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&hex[i..]);
    dst.extend_from_slice(b"\r\n");
}

/// Writes the end of a chunked body: the last chunk, the trailer fields the response
/// declared (when the client accepts trailers), and the final empty line.
pub fn chunked_end(
    dst: &mut Vec<u8>,
    allowed: Option<&[HeaderName]>,
    trailers: Option<&HeaderMap>,
) {
    dst.extend_from_slice(b"0\r\n");
    if let (Some(allowed), Some(trailers)) = (allowed, trailers) {
        for (name, value) in trailers {
            if allowed.contains(name) && valid_trailer(name) {
                field(dst, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    dst.extend_from_slice(b"\r\n");
}

/// hyper's list of fields never sent as trailers.
fn valid_trailer(name: &HeaderName) -> bool {
    use http::header::{
        AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, HOST,
        MAX_FORWARDS, SET_COOKIE,
    };
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | SET_COOKIE
            | TRAILER
            | TRANSFER_ENCODING
            | TE
    )
}

/// The length of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_LEN: usize = 29;

thread_local! {
    /// The date of the current second, formatted once per second per thread (as hyper does).
    static CACHED_DATE: RefCell<(u64, [u8; DATE_LEN])> = const { RefCell::new((u64::MAX, [0; DATE_LEN])) };
}

/// Appends the current HTTP date.
fn cached_date(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    CACHED_DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == DATE_LEN {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = second;
            } else {
                dst.extend_from_slice(text.as_bytes());
                return;
            }
        }
        dst.extend_from_slice(&date.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Parsed {
        parse_request(text.as_bytes(), 100, 64 * 1024)
    }

    #[test]
    fn a_plain_get_is_served_by_the_codec() {
        let Parsed::Request { request, info, len } = parse(
            "GET /kestra/api/v1/flows?q=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET",
        ) else {
            panic!("not parsed");
        };
        assert_eq!(len, 66);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/kestra/api/v1/flows?q=1");
        assert_eq!(request.headers()["host"], "a");
        assert_eq!(request.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(
            info,
            RequestInfo {
                head: false,
                keep_alive: true,
                trailers: false
            }
        );
    }

    #[test]
    fn bodies_upgrades_and_old_versions_go_to_hyper() {
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(text), Parsed::Hyper), "{text:?}");
        }
    }

    #[test]
    fn limits_go_to_hyper_which_answers_them() {
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(&text), Parsed::Hyper));
        let text = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000));
        assert!(matches!(
            parse_request(text.as_bytes(), 100, 8192),
            Parsed::Hyper
        ));
        assert!(matches!(
            parse_request(&vec![b'a'; 9000], 100, 8192),
            Parsed::Hyper
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn head_end_finds_every_line_ending_once() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        let split = b"GET / HTTP/1.1\r\n\r";
        assert_eq!(head_end(split, 0), None);
        let whole = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(whole, next_scan(split.len())), Some(18));
    }

    proptest::proptest! {
        /// The scan finds what a plain walk over every byte finds, from any start.
        #[test]
        fn head_end_agrees_with_a_walk_over_every_byte(
            buf in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a', b':', b' ']),
                0..200,
            ),
            from in 0usize..220,
        ) {
            let walked = (from..buf.len()).find_map(|i| match (buf[i], buf.get(i + 1), buf.get(i + 2)) {
                (b'\n', Some(b'\n'), _) => Some(i + 2),
                (b'\n', Some(b'\r'), Some(b'\n')) => Some(i + 3),
                _ => None,
            });
            proptest::prop_assert_eq!(head_end(&buf, from), walked);
        }
    }

    #[test]
    fn connection_close_and_te_trailers_are_seen() {
        let Parsed::Request { info, .. } =
            parse("HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\nTE: trailers\r\n\r\n")
        else {
            panic!("not parsed");
        };
        assert!(info.head && !info.keep_alive && info.trailers);
    }

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        body: BodyLength,
        request: RequestInfo,
        keep_alive: bool,
    ) -> (String, Result<Encoded, EncodeError>) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let mut dst = Vec::new();
        let result = encode_head(
            StatusCode::from_u16(status).unwrap(),
            Version::HTTP_11,
            &map,
            body,
            request,
            keep_alive,
            &mut dst,
        );
        let text = String::from_utf8(dst).unwrap();
        let text = match text.find("date: ") {
            Some(at) => format!("{}date: D{}", &text[..at], &text[at + 6 + DATE_LEN..]),
            None => text,
        };
        (text, result)
    }

    const GET: RequestInfo = RequestInfo {
        head: false,
        keep_alive: true,
        trailers: false,
    };

    #[test]
    fn heads_are_framed_as_hyper_frames_them() {
        let (text, encoded) = encode(
            200,
            &[("content-type", "text/plain")],
            BodyLength::Known(4),
            GET,
            true,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            encoded.unwrap(),
            Encoded {
                framing: Framing::Length(4),
                last: false
            }
        );

        let (text, encoded) = encode(200, &[], BodyLength::Unknown, GET, false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            encoded.unwrap(),
            Encoded {
                framing: Framing::Chunked(None),
                last: true
            }
        );

        let (text, encoded) = encode(
            204,
            &[("content-length", "0")],
            BodyLength::Empty,
            GET,
            true,
        );
        assert_eq!(text, "HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n");
        assert_eq!(encoded.unwrap().framing, Framing::Length(0));

        let head = RequestInfo { head: true, ..GET };
        let (text, encoded) = encode(
            200,
            &[("content-length", "10")],
            BodyLength::Empty,
            head,
            true,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ndate: D\r\n\r\n"
        );
        assert_eq!(encoded.unwrap().framing, Framing::Length(0));

        let (_, encoded) = encode(
            200,
            &[("content-length", "x")],
            BodyLength::Unknown,
            GET,
            true,
        );
        assert_eq!(encoded, Err(EncodeError::ContentLength));
        let (_, encoded) = encode(103, &[], BodyLength::Empty, GET, true);
        assert_eq!(encoded, Err(EncodeError::Informational));
    }

    #[test]
    fn trailers_are_kept_only_when_asked_and_declared() {
        let asked = RequestInfo {
            trailers: true,
            ..GET
        };
        let (_, encoded) = encode(
            200,
            &[("trailer", "grpc-status")],
            BodyLength::Unknown,
            asked,
            true,
        );
        let Framing::Chunked(Some(allowed)) = encoded.unwrap().framing else {
            panic!("no trailers allowed");
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("content-type", HeaderValue::from_static("x"));
        let mut dst = Vec::new();
        chunked_end(&mut dst, Some(&allowed), Some(&trailers));
        assert_eq!(dst, b"0\r\ngrpc-status: 0\r\n\r\n");
        let (_, encoded) = encode(
            200,
            &[("trailer", "grpc-status")],
            BodyLength::Unknown,
            GET,
            true,
        );
        assert_eq!(encoded.unwrap().framing, Framing::Chunked(None));
    }

    #[test]
    fn numbers_are_written_in_full() {
        let mut dst = Vec::new();
        chunk_header(&mut dst, 0x1a2b);
        write_decimal(&mut dst, 18_446_744_073_709_551_615);
        assert_eq!(dst, b"1A2B\r\n18446744073709551615");
    }
}
