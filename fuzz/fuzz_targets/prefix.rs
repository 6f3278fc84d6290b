//! Context-path handling: any request target through the prefix layer (keep and strip), and
//! any `Location`/`Refresh`/`Set-Cookie` back through strip mode's rewriting.
//!
//! Checked: no panic; a forwarded path is never unsafe (`..`, encoded slashes, …), stays
//! under the prefix in keep mode and starts with `/` in strip mode; a refused target is
//! answered 400 or 404 and never forwarded.
#![no_main]

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode};
use kestra_edge_prefix::{is_unsafe_path, ContextPath, PrefixLayer, PrefixMode};
use libfuzzer_sys::fuzz_target;
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};
use tower::{service_fn, Layer, ServiceExt};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == b'\n');
    let target = parts.next().unwrap_or_default();
    let location = parts.next().unwrap_or_default().to_vec();
    let cookie = parts.next().unwrap_or_default().to_vec();
    let refresh = parts.next().unwrap_or_default().to_vec();

    // Arbitrary strings as a context path must be refused or accepted, never panic.
    if let Ok(text) = std::str::from_utf8(target) {
        let _ = ContextPath::new(text);
        let _ = is_unsafe_path(text);
    }
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mode = if mode & 1 == 0 {
        PrefixMode::Keep
    } else {
        PrefixMode::Strip
    };
    let seen: Arc<Mutex<Option<http::Uri>>> = Arc::default();
    let recorder = seen.clone();
    let upstream = service_fn(move |req: Request<()>| {
        *recorder.lock().unwrap() = Some(req.uri().clone());
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        for (name, value) in [
            ("location", &location),
            ("set-cookie", &cookie),
            ("refresh", &refresh),
            ("content-location", &location),
        ] {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(name, value);
            }
        }
        async { Ok::<_, Infallible>(response) }
    });
    let context = ContextPath::new("/kestra").unwrap();
    let service = PrefixLayer::new(context, mode)
        .upstream_authority("127.0.0.1:8080")
        .layer(upstream);
    let mut request = Request::get(uri).body(()).unwrap();
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("kestra.example"));
    let response = service
        .oneshot(request)
        .now_or_never()
        .expect("the prefix layer never waits on its own")
        .unwrap();

    let forwarded = seen.lock().unwrap().take();
    match forwarded {
        Some(forwarded) => {
            let path = forwarded.path();
            assert!(!is_unsafe_path(path), "forwarded an unsafe path: {path:?}");
            match mode {
                PrefixMode::Keep => assert!(
                    path == "/kestra" || path.starts_with("/kestra/"),
                    "keep mode forwarded {path:?}"
                ),
                _ => assert!(path.starts_with('/'), "strip mode forwarded {path:?}"),
            }
        }
        None => assert!(
            matches!(response.status().as_u16(), 400 | 404 | 308 | 301),
            "refused with {}",
            response.status()
        ),
    }
});
