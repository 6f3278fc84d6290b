//! Per-request cost of each kestra-edge layer, around an inner service that answers at once
//! (no network): `cargo bench -p kestra-edge-bench --bench layers`.
//!
//! Each figure includes building the request; `baseline` (the inner service alone) is that
//! share, so a layer's own cost is its figure minus the baseline.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use kestra_edge::{
    forwarded::ForwardedLayer,
    prefix::{ContextPath, PrefixLayer, PrefixMode},
    server::PeerAddr,
    sse::SseGuardLayer,
    upgrade::UpgradeLayer,
    ProxyBody,
};
use std::{convert::Infallible, hint::black_box, net::SocketAddr};
use tower::{Layer, Service};

/// A Kestra API request as a browser sends it, with the extension the server adds.
fn request() -> Request<()> {
    let mut request = Request::get("/kestra/api/v1/main/executions/search?page=1&size=25")
        .header("host", "kestra.example.com")
        .header("accept", "application/json")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .header("cookie", "JSESSIONID=abc123")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([203, 0, 113, 9], 50123))));
    request
}

fn inner() -> impl Service<Request<()>, Response = Response<ProxyBody>, Error = Infallible> + Clone
{
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(ProxyBody::message("")))
    })
}

/// Calls `service` once per iteration; every future here completes on its first poll.
fn bench<S>(c: &mut Criterion, name: &str, mut service: S)
where
    S: Service<Request<()>, Error = Infallible>,
{
    c.bench_function(name, |b| {
        b.iter(|| {
            let response = service.call(black_box(request())).now_or_never();
            black_box(response.expect("the inner service answers at once"))
        })
    });
}

fn layers(c: &mut Criterion) {
    // The SSE guard reads the clock for event streams: give it a runtime to read it from.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let forwarded = ForwardedLayer::builder().build().unwrap();
    let prefix = PrefixLayer::new(ContextPath::new("/kestra").unwrap(), PrefixMode::Keep);
    let strip = PrefixLayer::new(ContextPath::new("/kestra").unwrap(), PrefixMode::Strip);

    bench(c, "baseline", inner());
    bench(c, "upgrade", UpgradeLayer::new().layer(inner()));
    bench(c, "forwarded", forwarded.layer(inner()));
    bench(c, "prefix keep", prefix.layer(inner()));
    bench(c, "prefix strip", strip.layer(inner()));
    bench(c, "sse guard", SseGuardLayer::new().layer(inner()));
    bench(
        c,
        "all layers",
        UpgradeLayer::new()
            .layer(forwarded.layer(prefix.layer(SseGuardLayer::new().layer(inner())))),
    );
}

criterion_group!(benches, layers);
criterion_main!(benches);
