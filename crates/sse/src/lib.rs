//! Make every Server-Sent Events response safe to proxy: Kestra's live execution and log
//! views arrive event by event and survive quiet periods.
//!
//! Behind a buffering proxy Kestra's Gantt and Logs tabs stay blank until the run ends
//! (Kestra issue 2076); behind any hop with an idle limit a quiet execution's stream is cut,
//! and the logs stream then replays its whole history on reconnect. Kestra sends no
//! heartbeat. [`SseGuardLayer`] recognises event streams by `Content-Type:
//! text/event-stream` (any parameters, any case) and:
//!
//! - forwards each frame as soon as it arrives (nothing is coalesced or held back);
//! - drops `Content-Length`, adds `Cache-Control: no-cache` when absent (the nginx block's
//!   `proxy_cache off`) and `X-Accel-Buffering: no` (so an nginx further out does not
//!   buffer either);
//! - sends a `:` comment block (`:\n\n`) after `heartbeat` of quiet (default 15 s), only at
//!   an event boundary ([`EventBoundary`]: `\n\n`, `\r\n\r\n`, `\r\r`, mixed, across
//!   chunks), never inside a partly received event;
//! - ends the stream when the upstream has sent nothing for `idle_timeout` (default 60
//!   minutes, Kestra's own; heartbeats do not count), and, with `max_lifetime`, at the first
//!   boundary after the cap, after a `retry:` with jitter so reconnecting browsers spread
//!   out;
//! - tells the proxy not to apply its read timeout to event streams
//!   ([`EventStreamReadTimeout`](kestra_edge_proxy::EventStreamReadTimeout)): this layer
//!   governs their idleness;
//! - logs one record per stream when it ends: events, bytes, heartbeats, duration, and why
//!   (upstream end, upstream error, client gone, idle, lifetime).
//!
//! A client that goes away drops the body, which drops the upstream request and its
//! connection. `Last-Event-ID` passes through untouched. Compression must skip event
//! streams; tower-http's `CompressionLayer` does by default (`NotForContentType::SSE`).
//!
//! ```
//! use kestra_edge_sse::SseGuardLayer;
//! use std::time::Duration;
//!
//! let layer = SseGuardLayer::new()
//!     .heartbeat(Some(Duration::from_secs(15)))
//!     .idle_timeout(Some(Duration::from_secs(3600)))
//!     .max_lifetime(Some(Duration::from_secs(4 * 3600)));
//! # let _ = layer;
//! ```

mod body;
mod boundary;
mod caps;
mod service;

pub use body::{GuardedStream, SseBody};
pub use boundary::EventBoundary;
pub use caps::{StreamCapExceeded, DEFAULT_MAX_STREAMS_PER_CLIENT};
pub use service::{
    ResponseFuture, SseGuard, SseGuardLayer, DEFAULT_HEARTBEAT, DEFAULT_IDLE_TIMEOUT,
    X_ACCEL_BUFFERING,
};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body::{Body, Frame};
    use http_body_util::BodyExt;
    use kestra_edge_proxy::EventStreamReadTimeout;
    use std::{
        convert::Infallible,
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
        time::Duration,
    };
    use tokio::{sync::mpsc, time::Instant};
    use tower::{service_fn, Layer, ServiceExt};

    /// A scripted upstream body: each sent chunk is one frame; dropping the sender ends it.
    struct Script(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Script {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    const S: Duration = Duration::from_secs(1);

    /// An event-stream response through `layer`, its body fed by the returned sender.
    async fn guarded(
        layer: SseGuardLayer,
        headers: &[(&'static str, &'static str)],
    ) -> (
        mpsc::UnboundedSender<Bytes>,
        Response<SseBody<Script>>,
        Option<EventStreamReadTimeout>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = Arc::new(Mutex::new(Some(Script(rx))));
        let seen = Arc::new(Mutex::new(None));
        let recorder = seen.clone();
        let headers = headers.to_vec();
        let upstream = service_fn(move |req: Request<()>| {
            *recorder.lock().unwrap() = req.extensions().get::<EventStreamReadTimeout>().copied();
            let mut response = Response::new(body.lock().unwrap().take().unwrap());
            for (name, value) in &headers {
                response.headers_mut().insert(*name, value.parse().unwrap());
            }
            async move { Ok::<_, Infallible>(response) }
        });
        let response = layer
            .layer(upstream)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        let extension = *seen.lock().unwrap();
        (tx, response, extension)
    }

    const SSE: &[(&str, &str)] = &[
        ("content-type", "text/event-stream"),
        ("content-length", "42"),
    ];

    type Guarded = Pin<Box<SseBody<Script>>>;

    /// The next frame's bytes, or `None` at the end; panics if none comes within `limit`.
    async fn next(body: &mut Guarded, limit: Duration) -> Option<Bytes> {
        let frame = tokio::time::timeout(limit, body.frame())
            .await
            .expect("a frame in time")?;
        Some(frame.unwrap().into_data().unwrap())
    }

    /// Whether nothing at all arrives within `limit`.
    async fn silent(body: &mut Guarded, limit: Duration) -> bool {
        tokio::time::timeout(limit, body.frame()).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn headers_of_event_streams_are_rewritten_and_others_untouched() {
        let (_tx, response, extension) = guarded(SseGuardLayer::new(), SSE).await;
        let headers = response.headers();
        assert!(headers.get("content-length").is_none());
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        assert_eq!(extension, Some(EventStreamReadTimeout(None)));
        // Not marked when the proxy behind is told once (the facade's way).
        let (_tx, _, extension) = guarded(SseGuardLayer::new().mark_requests(false), SSE).await;
        assert_eq!(extension, None);

        let (_tx, response, _) = guarded(
            SseGuardLayer::new(),
            &[
                ("content-type", "Text/Event-Stream; charset=utf-8"),
                ("cache-control", "private, max-age=0"),
            ],
        )
        .await;
        assert_eq!(response.headers()["cache-control"], "private, max-age=0");

        let (_tx, response, _) = guarded(
            SseGuardLayer::new(),
            &[
                ("content-type", "application/json"),
                ("content-length", "2"),
            ],
        )
        .await;
        assert_eq!(response.headers()["content-length"], "2");
        assert!(response.headers().get("x-accel-buffering").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_pass_as_they_arrive() {
        let (tx, response, _) = guarded(SseGuardLayer::new(), SSE).await;
        let body = &mut Box::pin(response.into_body());
        for chunk in ["id: start\ndata: {}\n\n", "id: progress\n", "data: {}\n\n"] {
            tx.send(Bytes::from(chunk)).unwrap();
            assert_eq!(next(body, S).await.unwrap(), chunk);
        }
        drop(tx);
        assert_eq!(next(body, S).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_fill_quiet_gaps_only_at_event_boundaries() {
        let layer = SseGuardLayer::new().heartbeat(Some(15 * S));
        let (tx, response, _) = guarded(layer, SSE).await;
        let body = &mut Box::pin(response.into_body());
        let start = Instant::now();
        assert_eq!(next(body, 20 * S).await.unwrap(), ":\n\n");
        assert_eq!(start.elapsed(), 15 * S);

        // Mid-event (each line ending kind, split across chunks): no heartbeat, however long.
        for (partial, rest) in [
            ("data: a\n", "\n"),
            ("data: a\r\n", "\r\n"),
            ("data: a\r", "\r"),
            ("data: a", "\n\n"),
        ] {
            tx.send(Bytes::from(partial)).unwrap();
            assert_eq!(next(body, S).await.unwrap(), partial);
            assert!(silent(body, 60 * S).await, "heartbeat inside {partial:?}");
            tx.send(Bytes::from(rest)).unwrap();
            assert_eq!(next(body, S).await.unwrap(), rest);
            let before = Instant::now();
            assert_eq!(next(body, 20 * S).await.unwrap(), ":\n\n");
            assert_eq!(before.elapsed(), 15 * S, "after {partial:?}{rest:?}");
        }

        // Upstream data pushes the next heartbeat back.
        tokio::time::advance(10 * S).await;
        tx.send(Bytes::from(": upstream comment\n\n")).unwrap();
        assert_eq!(next(body, S).await.unwrap(), ": upstream comment\n\n");
        let before = Instant::now();
        assert_eq!(next(body, 20 * S).await.unwrap(), ":\n\n");
        assert_eq!(before.elapsed(), 15 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_ends_and_heartbeats_do_not_count_as_activity() {
        let layer = SseGuardLayer::new()
            .heartbeat(Some(15 * S))
            .idle_timeout(Some(60 * S));
        let (tx, response, _) = guarded(layer, SSE).await;
        let body = &mut Box::pin(response.into_body());
        let start = Instant::now();
        tx.send(Bytes::from("id: start\ndata: {}\n\n")).unwrap();
        next(body, S).await.unwrap();
        for _ in 0..3 {
            assert_eq!(next(body, 20 * S).await.unwrap(), ":\n\n");
        }
        assert_eq!(next(body, 20 * S).await, None);
        assert_eq!(start.elapsed(), 60 * S);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lifetime_cap_ends_at_a_boundary_after_a_jittered_retry() {
        let layer = SseGuardLayer::new()
            .heartbeat(None)
            .idle_timeout(None)
            .max_lifetime(Some(10 * S))
            .retry(Duration::from_millis(1000), Duration::from_millis(4000));
        let (tx, response, _) = guarded(layer, SSE).await;
        let body = &mut Box::pin(response.into_body());
        tx.send(Bytes::from("data: a\n")).unwrap();
        next(body, S).await.unwrap();
        // The cap passes mid-event: the stream waits for the event's end.
        assert!(silent(body, 12 * S).await);
        tx.send(Bytes::from("data: b\n\n")).unwrap();
        assert_eq!(next(body, S).await.unwrap(), "data: b\n\n");
        let retry = next(body, S).await.unwrap();
        let retry = std::str::from_utf8(&retry).unwrap();
        let millis: u64 = retry
            .strip_prefix("retry: ")
            .and_then(|r| r.strip_suffix("\n\n"))
            .unwrap()
            .parse()
            .unwrap();
        assert!((1000..5000).contains(&millis), "{retry:?}");
        assert_eq!(next(body, S).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_compressed_stream_passes_without_heartbeats() {
        let layer = SseGuardLayer::new().heartbeat(Some(S));
        let (_tx, response, _) = guarded(
            layer,
            &[
                ("content-type", "text/event-stream"),
                ("content-encoding", "gzip"),
            ],
        )
        .await;
        assert!(silent(&mut Box::pin(response.into_body()), 10 * S).await);
    }
}
