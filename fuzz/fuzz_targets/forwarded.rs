//! Forwarded headers: any `X-Forwarded-For`, `Forwarded`, `X-Real-IP`, `X-Forwarded-*` and
//! `Host` lines from a trusted or an untrusted peer, through the forwarded layer.
//!
//! Checked: no panic; an untrusted peer is always the client (`X-Real-IP` is its address);
//! what the layer sends is well formed: `X-Real-IP` parses as an address, each `Forwarded`
//! element parses back and the last one names the same client, and the last
//! `X-Forwarded-For` item is that client too.
#![no_main]

use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use kestra_edge_forwarded::{parse_node, ForwardedElement, ForwardedLayer};
use kestra_edge_server::{LocalAddr, PeerAddr};
use libfuzzer_sys::fuzz_target;
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
};
use tower::{service_fn, Layer, ServiceExt};

const NAMES: [&str; 8] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "host",
    "connection",
];

const PEERS: [&str; 4] = [
    "198.51.100.7:40000",     // untrusted
    "10.1.2.3:40000",         // trusted
    "[::ffff:10.9.9.9]:1",    // trusted, IPv4-mapped
    "[2001:db8::5]:40000",    // untrusted IPv6
];

fn layer() -> &'static ForwardedLayer {
    static LAYER: OnceLock<ForwardedLayer> = OnceLock::new();
    LAYER.get_or_init(|| {
        ForwardedLayer::builder()
            .trusted_proxy("10.0.0.0/8")
            .trusted_proxy("fd00::/8")
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    // Parsers alone, on anything.
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = parse_node(text);
        let _ = ForwardedElement::parse(text);
    }

    let peer: SocketAddr = PEERS[usize::from(choice % 4)].parse().unwrap();
    let trusted = matches!(choice % 4, 1 | 2);
    let mut request = Request::get("/kestra/api/v1/flows").body(()).unwrap();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(which) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            request.headers_mut().append(name, value);
        }
    }
    request.extensions_mut().insert(PeerAddr(peer));
    request
        .extensions_mut()
        .insert(LocalAddr("127.0.0.1:8000".parse().unwrap()));

    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let recorder = seen.clone();
    let upstream = service_fn(move |req: Request<()>| {
        *recorder.lock().unwrap() = Some(req.headers().clone());
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    let response = layer()
        .layer(upstream)
        .oneshot(request)
        .now_or_never()
        .expect("the forwarded layer never waits on its own")
        .unwrap();
    let seen = seen.lock().unwrap().take();
    let Some(headers) = seen else {
        assert_eq!(response.status(), 400, "refused with {}", response.status());
        return;
    };

    let text = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("sent headers are visible ASCII").to_owned())
            .collect()
    };
    let real_ip = text("x-real-ip");
    assert_eq!(real_ip.len(), 1, "{headers:?}");
    let client: IpAddr = real_ip[0].parse().expect("X-Real-IP is an address");
    let peer_ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if !trusted {
        assert_eq!(client, peer_ip, "an untrusted peer was not the client: {headers:?}");
    }

    let forwarded = text("forwarded").join(",");
    let elements: Vec<_> = kestra_edge_forwarded_split(&forwarded)
        .map(|e| ForwardedElement::parse(e).expect("a sent Forwarded element parses"))
        .collect();
    let last = elements.last().expect("at least the gateway's own element");
    assert_eq!(last.for_node, Some(peer_ip), "{forwarded}");

    let xff = text("x-forwarded-for").join(",");
    let last_hop = xff.rsplit(',').next().unwrap_or_default().trim();
    assert_eq!(last_hop.parse::<IpAddr>().ok(), Some(peer_ip), "{xff}");
});

/// Splits a `Forwarded` value into elements at commas outside quoted strings.
fn kestra_edge_forwarded_split(value: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out.into_iter().map(str::trim).filter(|e| !e.is_empty())
}
