//! The own HTTP/1.1 codec of the proxy's hot path, fed any response bytes cut at any points.
//!
//! The first byte picks the piece size and whether the request was HEAD. Checked: no panic;
//! the result (status, fields, body, trailers, or the error) is the same whatever the
//! chunking; the body never holds more bytes than were received, nor more than a
//! `Content-Length` promised; a chunked body's pieces are bounded by what arrived.
#![no_main]

use bytes::BytesMut;
use kestra_edge_proxy::h1::{codec, BodyDecoder, Decoded, Framing};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Read {
    Message {
        status: u16,
        fields: Vec<(String, Vec<u8>)>,
        framing: Framing,
        body: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
        complete: bool,
    },
    Refused(String),
}

fn read(raw: &[u8], cut: usize, head_request: bool) -> Read {
    let mut pieces = raw.chunks(cut);
    let mut buf = BytesMut::new();
    let mut interim = 0;
    let head = loop {
        match codec::parse_head(&mut buf, head_request, &mut interim) {
            Ok(Some(head)) => break head,
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return Read::Refused("incomplete head".into()),
            },
            Err(err) => return Read::Refused(format!("{err:?}")),
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let (mut body, mut trailers, mut complete) = (Vec::new(), Vec::new(), false);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data frame");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::Trailers(map)) => {
                trailers = map
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                complete = true;
                break;
            }
            Ok(Decoded::End) => {
                complete = true;
                break;
            }
            Ok(Decoded::More) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    complete = decoder.eof().is_ok();
                    break;
                }
            },
            Err(_) => break,
        }
    }
    assert!(body.len() <= raw.len());
    if let Framing::Length(n) = head.framing {
        assert!(body.len() as u64 <= n, "more than Content-Length");
    }
    if head.framing == Framing::Empty {
        assert!(body.is_empty());
    }
    Read::Message {
        status: head.status.as_u16(),
        fields: head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        framing: head.framing,
        body,
        trailers,
        complete,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, raw)) = data.split_first() else {
        return;
    };
    let cut = usize::from(control & 0x3f) + 1;
    let head_request = control & 0x40 != 0;
    let whole = read(raw, raw.len().max(1), head_request);
    let pieces = read(raw, cut, head_request);
    assert_eq!(whole, pieces, "the chunking changed the reading");
});
