//! The server's own HTTP/1.1 request-head reading, fed any bytes cut at any points.
//!
//! The first byte picks the limits and how many of the next bytes are piece sizes (cycled);
//! the rest is what the client sent. Checked: no panic; reading in pieces as the connection
//! does (`head_end` from `next_scan`, then `parse_head`) gives what `parse_request` gives on
//! the whole buffer; a served request's `len` is within the buffer and its head ends with
//! an empty line; it is HTTP/1.1, not `CONNECT`, and carries no `Content-Length`,
//! `Transfer-Encoding`, `Expect`, `Upgrade` nor `Connection: upgrade`; its `RequestInfo`
//! says what its fields say; and writing its head back out (method, target, fields) and
//! reading that again gives the same request.
#![no_main]

use http::{
    header::{CONNECTION, CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING, UPGRADE},
    HeaderMap, Method, Uri, Version,
};
use kestra_edge_server::h1::codec::{self, Parsed, RequestInfo};
use libfuzzer_sys::fuzz_target;

/// A reading, comparable.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Partial,
    Hyper,
    Request {
        method: Method,
        uri: Uri,
        version: Version,
        fields: Vec<(String, Vec<u8>)>,
        info: RequestInfo,
        len: usize,
    },
}

fn read(parsed: Parsed) -> Read {
    match parsed {
        Parsed::Partial => Read::Partial,
        Parsed::Hyper => Read::Hyper,
        Parsed::Request { request, info, len } => Read::Request {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            fields: request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            info,
            len,
        },
    }
}

/// The connection's reading (`crates/server/src/h1/conn.rs`): pieces of the given sizes,
/// each `head_end` scan from where `next_scan` said, the limit checked when no end is seen.
fn in_pieces(raw: &[u8], sizes: &[usize], max_headers: usize, max_head: usize) -> Parsed {
    let mut buf = Vec::new();
    let mut scanned = 0;
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    while at < raw.len() {
        let size = sizes.next().copied().unwrap_or(raw.len());
        let end = raw.len().min(at + size);
        buf.extend_from_slice(&raw[at..end]);
        at = end;
        if let Some(head) = codec::head_end(&buf, scanned) {
            assert!(head <= buf.len());
            return codec::parse_head(&buf[..head], max_headers, max_head);
        }
        scanned = codec::next_scan(buf.len());
        assert!(scanned <= buf.len());
        if buf.len() > max_head {
            return Parsed::Hyper;
        }
    }
    Parsed::Partial
}

fn has_token(fields: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    fields.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let max_headers = [100, 4, 1, 0][usize::from(control & 0x03)];
    let max_head = [64 * 1024, 512, 64, 16][usize::from((control >> 2) & 0x03)];
    let count = usize::from(control >> 4).min(rest.len());
    let (sizes, raw) = rest.split_at(count);
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();

    let _ = codec::h2_preface(raw);
    let whole = read(codec::parse_request(raw, max_headers, max_head));
    let pieces = read(in_pieces(raw, &sizes, max_headers, max_head));
    assert_eq!(whole, pieces, "the chunking changed the reading");
    let one_by_one = read(in_pieces(raw, &[1], max_headers, max_head));
    assert_eq!(whole, one_by_one, "byte by byte changed the reading");
    // Pure: read again for the request itself.
    let Parsed::Request { request, info, len } = codec::parse_request(raw, max_headers, max_head)
    else {
        return;
    };

    assert!(len <= raw.len() && len <= max_head);
    let head = &raw[..len];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "no empty line at the end"
    );
    assert_eq!(codec::head_end(raw, 0), Some(len));
    assert_eq!(request.version(), Version::HTTP_11);
    assert_ne!(request.method(), Method::CONNECT);
    let fields = request.headers();
    assert!(fields.len() <= max_headers);
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, EXPECT, UPGRADE] {
        assert!(!fields.contains_key(&name), "served with {name}");
    }
    assert!(
        !has_token(fields, CONNECTION, "upgrade"),
        "served an upgrade"
    );
    assert_eq!(info.head, request.method() == Method::HEAD);
    assert_eq!(info.keep_alive, !has_token(fields, CONNECTION, "close"));
    assert_eq!(info.trailers, has_token(fields, TE, "trailers"));

    // The head written back out, the way a client would send this request.
    let mut again = Vec::with_capacity(len + 64);
    again.extend_from_slice(request.method().as_str().as_bytes());
    again.push(b' ');
    again.extend_from_slice(request.uri().to_string().as_bytes());
    again.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields {
        again.extend_from_slice(name.as_str().as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(value.as_bytes());
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"\r\n");
    let reread = read(codec::parse_request(&again, max_headers, again.len()));
    let Read::Request {
        method,
        uri,
        version,
        fields: reread_fields,
        info: reread_info,
        len: reread_len,
    } = reread
    else {
        panic!("the head written back was not served: {reread:?}");
    };
    let Read::Request {
        fields: served_fields,
        ..
    } = whole
    else {
        unreachable!("served above");
    };
    assert_eq!(&method, request.method());
    assert_eq!(&uri, request.uri());
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(reread_fields, served_fields);
    assert_eq!(reread_info, info);
    assert_eq!(reread_len, again.len());
});
