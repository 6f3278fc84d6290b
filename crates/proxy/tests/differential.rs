//! The own HTTP/1.1 codec against hyper's client on the same response bytes.
//!
//! Generated responses (valid ones, and the shapes smuggling and framing bugs are made of:
//! CL with TE, duplicate or signed lengths, other transfer codings, bare LF, bad chunk
//! lines, trailers, interim responses, one flipped byte) are read by both:
//!
//! - when both read a complete message, status, header fields, body and trailers agree;
//! - the codec never reads a complete message where hyper fails;
//! - where hyper reads a message the codec refuses, the refusal is one of the documented
//!   stricter rules (see `STRICTER`), never anything else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kestra_edge_proxy::h1::{codec, BodyDecoder, Decoded, H1Error};
use proptest::{prelude::*, strategy::ValueTree};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a reader made of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A complete message.
    Complete {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
    },
    /// The head was read, the body failed.
    BodyFailed { status: u16 },
    /// No head.
    Refused,
}

/// The codec's own refusals that hyper does not make, each a deliberate RFC 9112 choice.
const STRICTER: &[H1Error] = &[
    // `Transfer-Encoding` other than exactly `chunked` (hyper reads `gzip, chunked` as
    // chunked and other codings as close-delimited) and TE on HTTP/1.0.
    H1Error::TransferEncoding,
    // CL with TE: hyper lets TE win; RFC 9112 §6.3 allows refusing.
    H1Error::LengthAndEncoding,
    // Bare LF in chunk lines and chunk extensions hyper tolerates.
    H1Error::Chunk,
    // Trailer sections with bare LF or fields hyper drops.
    H1Error::Trailers,
];

fn fields(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The codec, fed `raw` `cut` bytes at a time, as the proxy's reads would.
fn ours(raw: &[u8], head_request: bool, cut: usize) -> (Outcome, Option<H1Error>) {
    let mut pieces = raw.chunks(cut.max(1));
    let mut buf = BytesMut::new();
    let mut interim = 0;
    let head = loop {
        match codec::parse_head(&mut buf, head_request, &mut interim) {
            Ok(Some(head)) => break head,
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return (Outcome::Refused, Some(H1Error::Incomplete)),
            },
            Err(err) => return (Outcome::Refused, Some(err)),
        }
    };
    let status = head.status.as_u16();
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
            Ok(Decoded::Trailers(map)) => {
                trailers = fields(&map);
                break;
            }
            Ok(Decoded::End) => break,
            Ok(Decoded::More) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    if let Err(err) = decoder.eof() {
                        return (Outcome::BodyFailed { status }, Some(err));
                    }
                    break;
                }
            },
            Err(err) => return (Outcome::BodyFailed { status }, Some(err)),
        }
    }
    let outcome = Outcome::Complete {
        status,
        headers: fields(&head.headers),
        body,
        trailers,
    };
    (outcome, None)
}

/// hyper's HTTP/1 client connection reading `raw` from an in-memory peer that then closes.
async fn hypers(raw: Vec<u8>, head_request: bool) -> Outcome {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(client)).await
    else {
        return Outcome::Refused;
    };
    tokio::spawn(conn);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            match server.read(&mut byte).await {
                Ok(1) => seen.push(byte[0]),
                _ => return,
            }
        }
        let _ = server.write_all(&raw).await;
        let _ = server.shutdown().await;
        // Hold the peer open until the client is done reading.
        let _ = server.read(&mut byte).await;
    });
    let method = if head_request {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let request = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let Ok(response) = sender.send_request(request).await else {
        return Outcome::Refused;
    };
    let status = response.status().as_u16();
    let headers = fields(response.headers());
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else {
            return Outcome::BodyFailed { status };
        };
        match frame.into_data() {
            Ok(data) => body.extend_from_slice(&data),
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers = fields(&map);
                }
            }
        }
    }
    Outcome::Complete {
        status,
        headers,
        body,
        trailers,
    }
}

/// Compares one input; returns which stricter refusal it hit, if any.
fn compare(
    raw: &[u8],
    head_request: bool,
    cut: usize,
    runtime: &tokio::runtime::Runtime,
) -> Option<H1Error> {
    let (ours, refusal) = ours(raw, head_request, cut);
    let theirs = runtime.block_on(hypers(raw.to_vec(), head_request));
    let shown = String::from_utf8_lossy(raw);
    match (&ours, &theirs) {
        (Outcome::Complete { .. }, Outcome::Complete { .. }) => {
            assert_eq!(ours, theirs, "both complete but different on {shown:?}");
            None
        }
        (Outcome::Complete { .. }, _) => {
            panic!("the codec read a message hyper refused ({theirs:?}): {shown:?}: {ours:?}")
        }
        (_, Outcome::Complete { .. }) => {
            let refusal = refusal.unwrap_or(H1Error::Incomplete);
            assert!(
                STRICTER.contains(&refusal),
                "the codec refused ({refusal:?}) what hyper read: {shown:?}: {theirs:?}"
            );
            Some(refusal)
        }
        _ => None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn known_shapes_agree_or_are_refused_for_a_documented_reason() {
    let runtime = runtime();
    let cases: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
    ];
    for raw in cases {
        for cut in [1, 3, 7, 1024] {
            compare(raw, false, cut, &runtime);
        }
        compare(raw, true, 1024, &runtime);
    }
}

/// One field line of a generated head.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Content-Length: 5".to_owned()),
        Just("Content-Length: 0".to_owned()),
        Just("Content-Length: 5, 5".to_owned()),
        Just("Content-Length: 5,6".to_owned()),
        Just("Content-Length: +5".to_owned()),
        Just("Content-Length: 05".to_owned()),
        Just("Content-Length:".to_owned()),
        Just("Content-Length: 99999999999999999999".to_owned()),
        Just("Transfer-Encoding: chunked".to_owned()),
        Just("Transfer-Encoding: CHUNKED".to_owned()),
        Just("Transfer-Encoding: gzip, chunked".to_owned()),
        Just("Transfer-Encoding: chunked, identity".to_owned()),
        Just("Transfer-Encoding: identity".to_owned()),
        Just("Transfer-Encoding:  chunked ".to_owned()),
        Just("Connection: close".to_owned()),
        Just("Connection: keep-alive".to_owned()),
        Just("Content-Type: text/event-stream".to_owned()),
        "[a-zA-Z-]{1,12}: [ -~]{0,20}",
        "[ -~]{0,16}",
    ]
}

/// A body: random bytes, or chunks (well-formed or not) with optional trailers.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 0..24),
        prop_oneof![
            Just("\r\n"),
            Just("\n"),
            Just(""),
            Just(" \r\n"),
            Just(";x=1\r\n")
        ],
        prop_oneof![Just("\r\n"), Just("\n"), Just("x")],
        any::<bool>(),
    )
        .prop_map(|(data, after_size, after_data, upper)| {
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            let mut out = size.into_bytes();
            out.extend_from_slice(after_size.as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(after_data.as_bytes());
            out
        });
    let last = prop_oneof![
        Just(b"0\r\n\r\n".to_vec()),
        Just(b"0\r\nx-sum: 1\r\n\r\n".to_vec()),
        Just(b"0\r\nx-sum: 1\n\r\n".to_vec()),
        Just(b"0\r\n".to_vec()),
        Just(Vec::new()),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (prop::collection::vec(chunk, 0..4), last).prop_map(|(chunks, last)| {
            let mut out = chunks.concat();
            out.extend_from_slice(&last);
            out
        }),
    ]
}

fn response() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just("HTTP/1.1 200 OK"),
            Just("HTTP/1.0 200 OK"),
            Just("HTTP/1.1 204 No Content"),
            Just("HTTP/1.1 304 Not Modified"),
            Just("HTTP/1.1 404 Not Found"),
            Just("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
            Just("HTTP/1.1 200"),
            Just("HTTP/1.1 099 Low"),
            Just("HTTP/2 200 OK"),
        ],
        prop::collection::vec(field(), 0..5),
        prop_oneof![Just("\r\n"), Just("\n")],
        body(),
        prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(status, fields, eol, body, flip)| {
            let mut out = status.as_bytes().to_vec();
            out.extend_from_slice(eol.as_bytes());
            for field in fields {
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(&body);
            if let Some((at, byte)) = flip {
                let at = at.index(out.len());
                out[at] = byte;
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn generated_responses_agree_with_hyper(
        raw in response(),
        cut in 1usize..64,
        head_request in prop::bool::weighted(0.1),
    ) {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = runtime();
        }
        RUNTIME.with(|runtime| compare(&raw, head_request, cut, runtime));
    }
}

/// How often each stricter refusal occurs on the generated inputs (printed with
/// `--nocapture`): shows the generator reaches them.
#[test]
fn stricter_refusals_are_reached() {
    let runtime = runtime();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = response();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut complete = 0;
    for _ in 0..1500 {
        let raw = strategy.new_tree(&mut runner).unwrap().current();
        if let Some(refusal) = compare(&raw, false, 16, &runtime) {
            *seen.entry(format!("{refusal:?}")).or_default() += 1;
        }
        complete += usize::from(matches!(ours(&raw, false, 16).0, Outcome::Complete { .. }));
    }
    println!(
        "of 1500 generated responses, {complete} read whole by both; stricter refusals: {seen:?}"
    );
    assert!(
        complete > 300,
        "the generator must mostly make readable messages: {complete}"
    );
    assert!(seen.contains_key("TransferEncoding"), "{seen:?}");
    assert!(seen.contains_key("LengthAndEncoding"), "{seen:?}");
}
