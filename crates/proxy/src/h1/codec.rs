//! The HTTP/1.1 message codec of the upstream hot path: request heads written, response
//! heads parsed with `httparse`, and response bodies framed (RFC 9112 §6), strictly.
//!
//! Nothing here does I/O: each function works on the bytes read so far, so the fuzz target
//! and the differential test against hyper drive exactly the code the proxy runs.

use bytes::{Buf, Bytes, BytesMut};
use http::{
    header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING},
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version,
};
use kestra_edge_headers::recycle;
use std::mem::MaybeUninit;

/// The largest response head (status line and fields), like nginx's
/// `proxy_buffer_size` times eight; larger is a 502.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head: hyper's default, so that the two paths
/// refuse the same heads.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The most interim (1xx) responses before the final one.
pub const MAX_INTERIM: usize = 16;

/// Why an upstream's response is refused; every one is answered 502 before the head, or
/// aborts the client's transfer after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum H1Error {
    /// The status line or a header field is not valid HTTP/1.x (httparse refused it).
    #[error("invalid response head")]
    Head,
    /// The response head is larger than [`MAX_HEAD`].
    #[error("response head too large")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("too many response header fields")]
    TooManyHeaders,
    /// The status code is outside 100–999 or is `101` unasked.
    #[error("invalid response status")]
    Status,
    /// More than [`MAX_INTERIM`] interim responses.
    #[error("too many interim responses")]
    TooManyInterim,
    /// `Content-Length` is not one decimal number (or a list of the same one).
    #[error("invalid Content-Length")]
    ContentLength,
    /// `Content-Length` and `Transfer-Encoding` together (RFC 9112 §6.3: a smuggling sign).
    #[error("Content-Length with Transfer-Encoding")]
    LengthAndEncoding,
    /// `Transfer-Encoding` other than exactly `chunked`, or on an HTTP/1.0 response.
    #[error("unsupported Transfer-Encoding")]
    TransferEncoding,
    /// A chunk-size line is not hex digits with valid extensions ended by CRLF, or a
    /// chunk's data is not followed by CRLF.
    #[error("invalid chunk")]
    Chunk,
    /// A chunk-size line is longer than [`MAX_CHUNK_LINE`].
    #[error("chunk line too long")]
    ChunkLine,
    /// The trailer section is invalid or larger than [`MAX_TRAILERS`].
    #[error("invalid trailers")]
    Trailers,
    /// The connection ended before the message did.
    #[error("upstream closed before the end of the response")]
    Incomplete,
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 204 or 304, or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection (never reused).
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header fields, as sent (hop-by-hop ones included).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once this body is read whole.
    pub keep_alive: bool,
}

/// Writes the head of a bodiless request: `method target HTTP/1.1`, the fields of
/// `headers` in order, `Host: authority` when `headers` has none, and
/// `Content-Length: 0` for a method whose requests usually carry a body.
pub fn write_request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    authority: &str,
) -> Vec<u8> {
    let mut size = method.as_str().len() + target.len() + 32 + authority.len();
    // Found on the way rather than looked up: a lookup hashes the name.
    let (mut host, mut length) = (false, false);
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        host |= *name == HOST;
        length |= *name == CONTENT_LENGTH;
    }
    // A `Vec`, not `Bytes`: it is only written, and freezing a buffer that is not full would
    // allocate once more (the shared header `Bytes` keeps).
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !host {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(authority.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let body_method = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if body_method && !length {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Where one field's name and value lie in a response head: offsets from its first byte.
#[derive(Debug, Clone, Copy, Default)]
struct FieldSpan {
    name: (u16, u16),
    value: (u16, u16),
}

impl FieldSpan {
    /// The span of `name` and `value`, slices of the buffer that starts at address `base`.
    fn of(base: usize, name: &[u8], value: &[u8]) -> Result<Self, H1Error> {
        let at = |part: &[u8]| -> Result<(u16, u16), H1Error> {
            // An empty value is empty wherever it points.
            if part.is_empty() {
                return Ok((0, 0));
            }
            let start = (part.as_ptr() as usize).wrapping_sub(base);
            let start = u16::try_from(start).map_err(|_| H1Error::Head)?;
            let len = u16::try_from(part.len()).map_err(|_| H1Error::Head)?;
            Ok((start, len))
        };
        Ok(Self {
            name: at(name)?,
            value: at(value)?,
        })
    }

    fn name(self) -> std::ops::Range<usize> {
        range(self.name)
    }

    fn value(self) -> std::ops::Range<usize> {
        range(self.value)
    }
}

fn range((start, len): (u16, u16)) -> std::ops::Range<usize> {
    let start = usize::from(start);
    start..start + usize::from(len)
}

/// Parses the response head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(head))`: the head's bytes are removed from
/// `buf`; interim (1xx) responses before it are skipped, counted in `interim`. A `101`
/// is refused: the hot path never asks for an upgrade.
pub fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    interim: &mut usize,
) -> Result<Option<Head>, H1Error> {
    loop {
        // Uninitialised field slots: zeroing 100 of them costs more than parsing a head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Err(H1Error::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::TooManyHeaders),
            Err(_) => return Err(H1Error::Head),
        };
        if len > MAX_HEAD {
            return Err(H1Error::HeadTooLarge);
        }
        let code = response.code.ok_or(H1Error::Head)?;
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Status)?;
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            Some(1) => Version::HTTP_11,
            _ => return Err(H1Error::Head),
        };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(H1Error::Status);
            }
            *interim += 1;
            if *interim > MAX_INTERIM {
                return Err(H1Error::TooManyInterim);
            }
            buf.advance(len);
            continue;
        }
        // The head's bytes are taken out once; the values are slices of them, not copies.
        // The fields borrow `buf`, so where each lies is noted first (httparse's slices are
        // always inside the buffer it parsed; `len` ≤ `MAX_HEAD`, so every offset fits in
        // 16 bits), then read from the frozen bytes: one parse, not a second over them.
        let count = response.headers.len();
        let mut spans = [FieldSpan::default(); MAX_HEADERS];
        let base = buf.as_ptr() as usize;
        for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
            *span = FieldSpan::of(base, field.name.as_bytes(), field.value)?;
        }
        let bytes = buf.split_to(len).freeze();
        let mut headers = recycle::header_map(count);
        // Which of the names the framing reads are there at all: a lookup of an absent name
        // costs a hash and a probe, and most responses lack `Transfer-Encoding` and
        // `Connection`.
        let mut present = Present::default();
        for span in &spans[..count] {
            let name = bytes.get(span.name()).ok_or(H1Error::Head)?;
            let name = HeaderName::from_bytes(name).map_err(|_| H1Error::Head)?;
            present.note(&name);
            let value = span.value();
            if value.end > bytes.len() {
                return Err(H1Error::Head);
            }
            let value =
                HeaderValue::from_maybe_shared(bytes.slice(value)).map_err(|_| H1Error::Head)?;
            headers.append(name, value);
        }
        let framing = framing(status, version, &headers, present, head_request)?;
        let keep_alive =
            framing != Framing::Close && keeps_alive(version, &headers, present.connection);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Which of the fields that frame a response a head has.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl Present {
    fn note(&mut self, name: &HeaderName) {
        self.transfer_encoding |= name == TRANSFER_ENCODING;
        self.content_length |= name == CONTENT_LENGTH;
        self.connection |= name == CONNECTION;
    }
}

/// RFC 9112 §6.3, strictly: CL with TE, an invalid or conflicting CL, and any TE but
/// exactly `chunked` are refused rather than guessed at. `present` says which of the
/// framing fields `headers` has.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    present: Present,
    head_request: bool,
) -> Result<Framing, H1Error> {
    // Nothing frames a body that cannot exist, so nothing is checked (as hyper does): a
    // byte after such a head is never read as a body, and the connection is then not reused.
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if present.transfer_encoding {
        // Whatever the length says, valid or not: both framings at once is refused.
        if present.content_length {
            return Err(H1Error::LengthAndEncoding);
        }
        if version == Version::HTTP_10 {
            return Err(H1Error::TransferEncoding);
        }
        let mut chunked = false;
        for value in headers.get_all(TRANSFER_ENCODING) {
            for coding in value.as_bytes().split(|&b| b == b',') {
                let coding = trim(coding);
                if coding.is_empty() {
                    continue;
                }
                // `chunked` once, and nothing else: no other coding before or after it.
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(H1Error::TransferEncoding);
                }
                chunked = true;
            }
        }
        if !chunked {
            return Err(H1Error::TransferEncoding);
        }
        return Ok(Framing::Chunked);
    }
    if !present.content_length {
        return Ok(Framing::Close);
    }
    Ok(match content_length(headers)? {
        Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
        None => Framing::Close,
    })
}

/// The value of every `Content-Length` field, which must all be the same decimal number
/// (a comma-separated list of one repeated value is accepted, RFC 9110 §8.6).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = trim(item);
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(H1Error::ContentLength);
            }
            let n = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            match length {
                Some(seen) if seen != n => return Err(H1Error::ContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// Whether the connection stays open after this response (RFC 9112 §9.3); `connection`:
/// whether it has a `Connection` field at all.
fn keeps_alive(version: Version, headers: &HeaderMap, connection: bool) -> bool {
    let has = |token: &[u8]| {
        connection
            && headers.get_all(CONNECTION).iter().any(|value| {
                value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(token))
            })
    };
    match version {
        Version::HTTP_11 => !has(b"close"),
        _ => has(b"keep-alive") && !has(b"close"),
    }
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// What [`BodyDecoder::decode`] found in the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The chunked body's trailer fields; the body is complete.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// Read more bytes first.
    More,
}

/// Reads a response body out of the bytes received, by its [`Framing`].
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes left.
    Length(u64),
    /// At a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data, this many bytes left.
    ChunkData(u64),
    /// After a chunk's data: CRLF expected.
    ChunkEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// Until the connection closes.
    Close,
    /// Complete.
    Done,
}

impl BodyDecoder {
    /// A decoder for a body framed by `framing`.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Self { state }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the body ends only when the connection does.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Close
    }

    /// The exact number of body bytes left, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let left = left - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        // A wrong first byte need not wait for the second.
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(H1Error::Chunk);
                        }
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunk);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkSize => {
                    let Some(line) = line_end(buf, MAX_CHUNK_LINE, H1Error::ChunkLine)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    // Every line ends in CRLF: a bare LF is refused, never read as a line end.
                    let end = find(buf, b"\r\n\r\n", MAX_TRAILERS);
                    let scanned = &buf[..end.map_or(buf.len().min(MAX_TRAILERS), |e| e + 4)];
                    let bare_lf = scanned
                        .iter()
                        .enumerate()
                        .any(|(i, &b)| b == b'\n' && (i == 0 || scanned[i - 1] != b'\r'));
                    if bare_lf || (buf.len() >= 2 && buf[0] == b'\r') {
                        return Err(H1Error::Trailers);
                    }
                    let Some(end) = end else {
                        if buf.len() >= MAX_TRAILERS {
                            return Err(H1Error::Trailers);
                        }
                        return Ok(Decoded::More);
                    };
                    let section = &buf[..end + 4];
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let parsed = httparse::parse_headers(section, &mut fields)
                        .map_err(|_| H1Error::Trailers)?;
                    let httparse::Status::Complete((len, fields)) = parsed else {
                        return Err(H1Error::Trailers);
                    };
                    if len != section.len() {
                        return Err(H1Error::Trailers);
                    }
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields {
                        let name = HeaderName::from_bytes(field.name.as_bytes())
                            .map_err(|_| H1Error::Trailers)?;
                        let value =
                            HeaderValue::from_bytes(field.value).map_err(|_| H1Error::Trailers)?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    self.state = State::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }

    /// The connection ended: a close-delimited body is complete, any other is not.
    pub fn eof(&mut self) -> Result<(), H1Error> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(H1Error::Incomplete),
        }
    }
}

/// Where the CRLF ending the line at the start of `buf` is. A bare LF, or no CRLF within
/// `max` bytes, is `too_long`'s or a chunk error.
fn line_end(buf: &[u8], max: usize, too_long: H1Error) -> Result<Option<usize>, H1Error> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(H1Error::Chunk),
        Some(lf) if window[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(H1Error::Chunk),
        None if window.len() >= max + 2 => Err(too_long),
        None => Ok(None),
    }
}

fn find(buf: &[u8], needle: &[u8], max: usize) -> Option<usize> {
    buf[..buf.len().min(max)]
        .windows(needle.len())
        .position(|w| w == needle)
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): 1 to 16 hex digits, then nothing, or
/// optional whitespace and `;` extensions of visible characters, spaces and tabs.
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(H1Error::Chunk);
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    });
    let ext = trim(&line[digits..]);
    if !ext.is_empty() {
        let valid = ext[0] == b';'
            && ext
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
        if !valid {
            return Err(H1Error::Chunk);
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Option<Head>, H1Error> {
        parse_head(&mut BytesMut::from(raw), false, &mut 0)
    }

    fn body(framing: Framing, raw: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        // One byte at a time: every state must wait for more rather than guess.
        for &byte in raw {
            buf.extend_from_slice(&[byte]);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::Trailers(t) => return Ok((data, Some(t))),
                    Decoded::End => return Ok((data, None)),
                    Decoded::More => break,
                }
            }
        }
        decoder.eof()?;
        Ok((data, None))
    }

    #[test]
    fn request_heads_are_written_in_order_with_host_when_missing() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let head = write_request_head(&Method::GET, "/a?b=%2F", &headers, "kestra:8080");
        assert_eq!(
            &head[..],
            b"GET /a?b=%2F HTTP/1.1\r\nhost: kestra:8080\r\naccept: */*\r\n\r\n"
        );
        headers.insert(HOST, HeaderValue::from_static("edge"));
        let head = write_request_head(&Method::POST, "/", &headers, "kestra:8080");
        assert_eq!(
            &head[..],
            b"POST / HTTP/1.1\r\naccept: */*\r\nhost: edge\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn heads_are_parsed_and_framed() {
        let parsed = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.framing, Framing::Length(2));
        assert!(parsed.keep_alive);
        assert_eq!(parsed.headers["x-a"], "b");
        let cases: [(&[u8], Framing, bool); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Framing::Close, false),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Framing::Empty, true),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\n",
                Framing::Length(3),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                Framing::Empty,
                false,
            ),
        ];
        for (raw, framing, keep_alive) in cases {
            let parsed = head(raw).unwrap().unwrap();
            assert_eq!(
                (parsed.framing, parsed.keep_alive),
                (framing, keep_alive),
                "{raw:?}"
            );
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..]);
        let parsed = parse_head(&mut buf, true, &mut 0).unwrap().unwrap();
        assert_eq!(
            parsed.framing,
            Framing::Empty,
            "a HEAD response has no body"
        );
    }

    #[test]
    fn field_values_are_the_head_s_own_bytes_up_to_its_largest_size() {
        let parsed = head(b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Blank:   \r\nX-Pad:  a b \r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(parsed.headers["x-empty"], "");
        assert_eq!(parsed.headers["x-blank"], "");
        assert_eq!(parsed.headers["x-pad"], "a b");
        // The last fields of a head of exactly `MAX_HEAD` bytes lie at offsets near 2^16.
        let start = b"HTTP/1.1 200 OK\r\nX-Big: ";
        let end = b"\r\nX-Last: z\r\nContent-Length: 0\r\n\r\n";
        let mut raw = start.to_vec();
        raw.resize(MAX_HEAD - end.len(), b'v');
        raw.extend_from_slice(end);
        assert_eq!(raw.len(), MAX_HEAD);
        let parsed = head(&raw).unwrap().unwrap();
        assert_eq!(
            parsed.headers["x-big"].len(),
            MAX_HEAD - end.len() - start.len()
        );
        assert_eq!(parsed.headers["x-last"], "z");
        assert_eq!(parsed.headers["content-length"], "0");
        raw.insert(start.len(), b'v');
        assert_eq!(head(&raw).unwrap_err(), H1Error::HeadTooLarge);
    }

    #[test]
    fn interim_responses_are_skipped_and_bounded() {
        let mut interim = 0;
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let parsed = parse_head(&mut buf, false, &mut interim).unwrap().unwrap();
        assert_eq!((parsed.status.as_u16(), interim), (200, 2));
        assert!(buf.is_empty());
        let many = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1);
        assert_eq!(head(&many).unwrap_err(), H1Error::TooManyInterim);
        let switching = head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(switching.unwrap_err(), H1Error::Status);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let refused: [(&[u8], H1Error); 12] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", H1Error::LengthAndEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", H1Error::TransferEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", H1Error::TransferEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", H1Error::TransferEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", H1Error::TransferEncoding),
            (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", H1Error::TransferEncoding),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", H1Error::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n", H1Error::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n", H1Error::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", H1Error::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n", H1Error::ContentLength),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", H1Error::Head),
        ];
        for (raw, error) in refused {
            assert_eq!(
                head(raw).unwrap_err(),
                error,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            head(b"HTTP/1.1 2000 Huge\r\n\r\n").unwrap_err(),
            H1Error::Head
        );
        assert_eq!(head(b"garbage\r\n\r\n").unwrap_err(), H1Error::Head);
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(head(&big).unwrap_err(), H1Error::HeadTooLarge);
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(head(&many).unwrap_err(), H1Error::TooManyHeaders);
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-").unwrap().is_none());
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte_with_trailers() {
        let (data, trailers) = body(
            Framing::Chunked,
            b"5;name=value\r\nhello\r\nB\r\n 0123456789\r\n0\r\nx-checksum: abc\r\n\r\n",
        )
        .unwrap();
        assert_eq!(data, b"hello 0123456789");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        let (data, trailers) = body(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
        assert_eq!(body(Framing::Length(3), b"abc").unwrap().0, b"abc");
        assert_eq!(body(Framing::Close, b"abc").unwrap().0, b"abc");
    }

    #[test]
    fn bad_chunks_are_refused() {
        let refused: [&[u8]; 11] = [
            b"zz\r\n",
            b"\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"-3\r\nabc\r\n",
            b"0x3\r\nabc\r\n",
            b"3 x\r\nabc\r\n",
            b"11111111111111111\r\n",
            b"3;a\x01\r\nabc\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ];
        for raw in refused {
            assert!(
                body(Framing::Chunked, raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = format!("1;{}\r\n", "a".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            body(Framing::Chunked, long.as_bytes()).unwrap_err(),
            H1Error::ChunkLine
        );
        assert_eq!(
            body(Framing::Chunked, b"3\r\nab").unwrap_err(),
            H1Error::Incomplete
        );
        assert_eq!(
            body(Framing::Length(3), b"ab").unwrap_err(),
            H1Error::Incomplete
        );
        let huge = format!("0\r\nx: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert_eq!(
            body(Framing::Chunked, huge.as_bytes()).unwrap_err(),
            H1Error::Trailers
        );
    }
}
