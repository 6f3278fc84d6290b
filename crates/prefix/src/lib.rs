//! Serve Kestra under a context path such as `/kestra`, keeping or stripping the prefix,
//! safely.
//!
//! The seed nginx block's `location /kestra { proxy_pass http://host:port/kestra; }`, as a
//! tower layer:
//!
//! - **keep** ([`PrefixMode::Keep`], the default): paths are forwarded unchanged to a Kestra
//!   that runs with `micronaut.server.context-path: /kestra`. The only setup in which Kestra's
//!   UI works: it builds absolute paths from its own context path. When the upstream
//!   redirects to `/kestra/kestra/…`, a warning (once) names the likely cause, the prefix
//!   configured twice (Kestra issue 2630).
//! - **strip** ([`PrefixMode::Strip`]): `/kestra/a` is forwarded as `/a` with
//!   `X-Forwarded-Prefix: /kestra`, and the answer is mapped back: `Location`,
//!   `Content-Location` and `Refresh` that are absolute paths, or absolute URLs to the
//!   upstream or to the public host, get the prefix; so do `Set-Cookie` paths.
//!
//! In both modes:
//!
//! - matching is on whole segments and case-sensitive (`/kestraX`, `/KESTRA/…` do not match);
//! - a request outside the prefix is answered 404 and never forwarded, unless a
//!   [fallback](PrefixLayer::fallback) serves the rest of the path space;
//! - a path with a `.` or `..` segment, raw or percent-encoded (`%2e%2e`, `.%2e`,
//!   `x%2F..%2Fy`, `..;x`), or an encoded NUL or backslash, is answered 400 and never
//!   forwarded ([`is_unsafe_path`]); everything else passes byte for byte, `%2F` included;
//! - the client's URI stays available as the [`OriginalUri`] request extension.
//!
//! ```
//! use kestra_edge_prefix::{ContextPath, PrefixLayer, PrefixMode};
//! use tower::{service_fn, Layer, ServiceExt};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = service_fn(|req: Request<()>| async move {
//!     // The upstream serves at `/` and redirects to its own paths.
//!     assert_eq!(req.uri().path(), "/");
//!     let response = Response::builder()
//!         .status(302)
//!         .header("location", "/ui/")
//!         .body(Full::<Bytes>::default())?;
//!     Ok::<_, http::Error>(response)
//! });
//! let layer = PrefixLayer::new(ContextPath::new("/kestra")?, PrefixMode::Strip);
//! let response = layer
//!     .layer(upstream)
//!     .oneshot(Request::get("/kestra").body(())?)
//!     .await?;
//! assert_eq!(response.headers()["location"], "/kestra/ui/");
//! # Ok(())
//! # }
//! ```

mod path;
mod rewrite;
mod service;

pub use path::{is_unsafe_path, ContextPath, ContextPathError};
pub use service::{
    Fallback, NotFound, OriginalUri, Prefix, PrefixLayer, PrefixMode, ResponseFuture,
    X_FORWARDED_PREFIX,
};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };
    use tower::{service_fn, Layer, ServiceExt};

    type Body = Full<Bytes>;

    /// One forwarded request: path and query, `X-Forwarded-Prefix`, `OriginalUri`.
    type Forwarded = (String, Option<String>, Option<String>);

    /// What the upstream saw.
    #[derive(Debug, Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Forwarded>>>);

    impl Seen {
        fn take(&self) -> Vec<Forwarded> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn upstream(
        seen: Seen,
        location: Option<&'static str>,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(move |req: Request<()>| {
            let original = req
                .extensions()
                .get::<OriginalUri>()
                .map(|o| o.0.to_string());
            let prefix = req
                .headers()
                .get(X_FORWARDED_PREFIX)
                .map(|v| v.to_str().unwrap().to_owned());
            let pq = req.uri().path_and_query().unwrap().as_str().to_owned();
            seen.0.lock().unwrap().push((pq, prefix, original));
            let mut response = Response::new(Body::from("upstream"));
            if let Some(location) = location {
                response
                    .headers_mut()
                    .insert("location", location.parse().unwrap());
            }
            async move { Ok::<_, Infallible>(response) }
        })
    }

    async fn call(
        mode: PrefixMode,
        seen: &Seen,
        location: Option<&'static str>,
        target: &str,
    ) -> Response<Body> {
        let layer = PrefixLayer::new(ContextPath::new("/kestra").unwrap(), mode);
        layer
            .layer(upstream(seen.clone(), location))
            .oneshot(Request::get(target).body(()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keep_mode_table() {
        // (target, status, what the upstream receives)
        let cases: [(&str, u16, Option<&str>); 16] = [
            ("/kestra", 200, Some("/kestra")),
            ("/kestra/", 200, Some("/kestra/")),
            (
                "/kestra/ui/flows?page=2",
                200,
                Some("/kestra/ui/flows?page=2"),
            ),
            (
                "/kestra/api/v1/a%2Fb?x=%2F&y=1;z",
                200,
                Some("/kestra/api/v1/a%2Fb?x=%2F&y=1;z"),
            ),
            ("/kestraX", 404, None),
            ("/kestra.x", 404, None),
            ("/KESTRA/ui", 404, None),
            ("/", 404, None),
            ("/ui/", 404, None),
            ("/kestra/../x", 400, None),
            ("/kestra/%2e%2e/x", 400, None),
            ("/kestra/.%2e/x", 400, None),
            ("/kestra/x%2F..%2Fy", 400, None),
            ("/kestra/..;x/y", 400, None),
            ("/kestra/a/%2e/b", 400, None),
            ("/kestra/a%00b", 400, None),
        ];
        for (target, status, forwarded) in cases {
            let seen = Seen::default();
            let response = call(PrefixMode::Keep, &seen, None, target).await;
            assert_eq!(response.status().as_u16(), status, "{target}");
            let seen = seen.take();
            assert_eq!(seen.first().map(|s| s.0.as_str()), forwarded, "{target}");
            if let Some((_, prefix, original)) = seen.first() {
                assert_eq!(prefix.as_deref(), None, "keep mode adds no prefix header");
                assert_eq!(original.as_deref(), Some(target));
            }
        }
    }

    #[tokio::test]
    async fn strip_mode_table() {
        let cases: [(&str, u16, Option<&str>); 9] = [
            ("/kestra", 200, Some("/")),
            ("/kestra/", 200, Some("/")),
            ("/kestra/a", 200, Some("/a")),
            ("/kestra/a/?q=1", 200, Some("/a/?q=1")),
            ("/kestra?q=%2F", 200, Some("/?q=%2F")),
            ("/kestra//a", 200, Some("//a")),
            ("/kestra/a%2Fb", 200, Some("/a%2Fb")),
            ("/kestrax/a", 404, None),
            ("/kestra/%2E./a", 400, None),
        ];
        for (target, status, forwarded) in cases {
            let seen = Seen::default();
            let response = call(PrefixMode::Strip, &seen, Some("/ui/"), target).await;
            assert_eq!(response.status().as_u16(), status, "{target}");
            let seen = seen.take();
            assert_eq!(seen.first().map(|s| s.0.as_str()), forwarded, "{target}");
            if let Some((_, prefix, original)) = seen.first() {
                assert_eq!(prefix.as_deref(), Some("/kestra"));
                assert_eq!(original.as_deref(), Some(target));
                assert_eq!(response.headers()["location"], "/kestra/ui/");
            }
        }
    }

    #[tokio::test]
    async fn keep_mode_leaves_locations_alone() {
        let seen = Seen::default();
        let response = call(PrefixMode::Keep, &seen, Some("/kestra/ui/"), "/kestra").await;
        assert_eq!(response.headers()["location"], "/kestra/ui/");
        // A doubled prefix is passed through (and logged), never "fixed" silently.
        let response = call(
            PrefixMode::Keep,
            &seen,
            Some("/kestra/kestra/ui/"),
            "/kestra",
        )
        .await;
        assert_eq!(response.headers()["location"], "/kestra/kestra/ui/");
    }

    #[tokio::test]
    async fn a_fallback_serves_the_rest_of_the_path_space() {
        let seen = Seen::default();
        let fallback = service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(Body::from(format!("fallback {}", req.uri()))))
        });
        let layer = PrefixLayer::new(ContextPath::new("/kestra").unwrap(), PrefixMode::Keep)
            .fallback(fallback);
        let service = layer.layer(upstream(seen.clone(), None));
        let response = service
            .clone()
            .oneshot(Request::get("/healthz").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "fallback /healthz");
        assert!(seen.take().is_empty());
        // Unsafe paths are refused before the fallback too.
        let response = service
            .oneshot(Request::get("/x/../kestra").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn strip_with_the_root_context_path_changes_nothing() {
        let seen = Seen::default();
        let layer = PrefixLayer::new(ContextPath::new("/").unwrap(), PrefixMode::Strip);
        let response = layer
            .layer(upstream(seen.clone(), Some("/ui/")))
            .oneshot(Request::get("/a?b").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.headers()["location"], "/ui/");
        assert_eq!(seen.take()[0].0, "/a?b");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that matter: the prefix, dots, escapes, separators.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_owned()),
                Just("kestra".to_owned()),
                Just("KESTRA".to_owned()),
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%2e".to_owned()),
                Just("%2E".to_owned()),
                Just("%2F".to_owned()),
                Just("%2f".to_owned()),
                Just("%5C".to_owned()),
                Just("%00".to_owned()),
                Just("%25".to_owned()),
                Just("%".to_owned()),
                Just(";".to_owned()),
                Just("x".to_owned()),
                "[a-z0-9._~-]{1,3}",
            ];
            // Three in four paths start inside the prefix, where an escape would matter.
            let start = prop_oneof![3 => Just("/kestra/"), 1 => Just("/")];
            (start, proptest::collection::vec(piece, 0..12))
                .prop_map(|(start, pieces)| format!("{start}{}", pieces.concat()))
        }

        /// Whether `path` would resolve outside `/kestra` once a backend removes dot
        /// segments (RFC 3986 §5.2.4), after decoding `%2F`, `%2E` and `%5C` once.
        fn resolves_under_prefix(path: &str) -> bool {
            let decoded = path
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%5C", "/")
                .replace("%2e", ".")
                .replace("%2E", ".")
                .replace('\\', "/");
            let mut stack: Vec<&str> = Vec::new();
            for segment in decoded.split('/').skip(1) {
                let name = segment.split(';').next().unwrap_or_default();
                match name {
                    "." => {}
                    ".." => {
                        stack.pop();
                    }
                    _ => stack.push(segment),
                }
            }
            stack.first() == Some(&"kestra")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn keep_never_forwards_outside_the_prefix(path in path()) {
                let Ok(uri) = path.parse::<http::Uri>() else { return Ok(()) };
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let seen = Seen::default();
                let response = runtime.block_on(async {
                    let layer = PrefixLayer::new(ContextPath::new("/kestra").unwrap(), PrefixMode::Keep);
                    layer.layer(upstream(seen.clone(), None))
                        .oneshot(Request::get(uri).body(()).unwrap())
                        .await
                        .unwrap()
                });
                let forwarded = seen.take();
                prop_assert!(matches!(response.status().as_u16(), 200 | 400 | 404));
                if let Some((forwarded, _, _)) = forwarded.first() {
                    prop_assert_eq!(forwarded, &path);
                    prop_assert!(path == "/kestra" || path.starts_with("/kestra/"));
                    prop_assert!(resolves_under_prefix(forwarded), "{} escapes", forwarded);
                }
            }

            #[test]
            fn strip_never_lets_a_path_escape(path in path()) {
                let Ok(uri) = path.parse::<http::Uri>() else { return Ok(()) };
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let seen = Seen::default();
                let response = runtime.block_on(async {
                    let layer = PrefixLayer::new(ContextPath::new("/kestra").unwrap(), PrefixMode::Strip);
                    layer.layer(upstream(seen.clone(), Some("/ui/")))
                        .oneshot(Request::get(uri).body(()).unwrap())
                        .await
                        .unwrap()
                });
                prop_assert!(matches!(response.status().as_u16(), 200 | 400 | 404));
                if let Some((forwarded, _, _)) = seen.take().first() {
                    prop_assert!(forwarded.starts_with('/'));
                    // Putting the prefix back gives exactly what the client asked for.
                    let restored = if forwarded == "/" && path == "/kestra" {
                        "/kestra".to_owned()
                    } else {
                        format!("/kestra{forwarded}")
                    };
                    prop_assert_eq!(&restored, &path);
                    prop_assert!(resolves_under_prefix(&restored), "{} escapes", forwarded);
                    prop_assert!(!is_unsafe_path(forwarded));
                }
            }
        }
    }
}
