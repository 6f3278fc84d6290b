//! The response body of [`SseGuard`](crate::SseGuard).

use crate::{boundary::EventBoundary, caps::StreamSlot, service::Config};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// The comment block sent when a stream has been quiet: ignored by `EventSource`, seen by
/// every hop (WHATWG HTML §9.2.6: a line starting with `:` is a comment).
const HEARTBEAT: &[u8] = b":\n\n";

pin_project! {
    /// Body of [`SseGuard`](crate::SseGuard) responses: event streams are guarded, anything
    /// else passes untouched.
    #[derive(Debug)]
    pub struct SseBody<B> {
        #[pin]
        kind: Kind<B>,
        // The stream's place under the stream caps, freed when the body ends.
        slot: Option<StreamSlot>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Plain {
            #[pin]
            inner: B,
        },
        // Boxed: an event stream's guard (its timer, clocks and boundary) is as large as the
        // body it wraps; inline, every response would carry and move it.
        Guarded {
            stream: Pin<Box<GuardedStream<B>>>,
        },
        // The layer's own short answer (a stream refused over a cap).
        Message {
            text: Option<Bytes>,
        },
    }
}

impl<B> SseBody<B> {
    pub(crate) fn plain(inner: B) -> Self {
        Self {
            kind: Kind::Plain { inner },
            slot: None,
        }
    }

    pub(crate) fn guarded(stream: GuardedStream<B>) -> Self {
        Self {
            kind: Kind::Guarded {
                stream: Box::pin(stream),
            },
            slot: None,
        }
    }

    pub(crate) fn message(text: &'static str) -> Self {
        Self {
            kind: Kind::Message {
                text: Some(Bytes::from_static(text.as_bytes())),
            },
            slot: None,
        }
    }

    pub(crate) fn holding(self, slot: Option<StreamSlot>) -> Self {
        Self { slot, ..self }
    }
}

impl<B: From<&'static str>> From<&'static str> for SseBody<B> {
    fn from(text: &'static str) -> Self {
        Self::plain(B::from(text))
    }
}

impl<B> Body for SseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(match this.kind.project() {
            KindProj::Plain { inner } => inner.poll_frame(cx),
            KindProj::Guarded { stream } => stream.as_mut().poll_frame(cx),
            KindProj::Message { text } => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        });
        // Ended, by the upstream or with an error: the slot is free now, not when the
        // connection gets round to dropping the body.
        if !matches!(frame, Some(Ok(_))) {
            *this.slot = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { inner } => inner.is_end_stream(),
            Kind::Guarded { stream } => stream.done && stream.pending.is_none(),
            Kind::Message { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { inner } => inner.size_hint(),
            // Heartbeats and the closing `retry:` change the length.
            Kind::Guarded { .. } => SizeHint::default(),
            Kind::Message { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

/// Why a guarded stream ended, as its tracing record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    ClientGone,
    UpstreamEnd,
    UpstreamError,
    Idle,
    Lifetime,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientGone => "client gone",
            Self::UpstreamEnd => "upstream end",
            Self::UpstreamError => "upstream error",
            Self::Idle => "idle",
            Self::Lifetime => "lifetime",
        }
    }
}

/// What a stream did; logged once when it is dropped, however it ended.
#[derive(Debug)]
struct StreamLog {
    started: Instant,
    events: u64,
    bytes: u64,
    heartbeats: u64,
    reason: EndReason,
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        tracing::info!(
            events = self.events,
            bytes = self.bytes,
            heartbeats = self.heartbeats,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reason = self.reason.as_str(),
            "event stream ended"
        );
    }
}

pin_project! {
    /// An event stream under the guard: frames pass as they arrive; heartbeats fill quiet
    /// gaps at event boundaries; idleness and lifetime end it at a boundary.
    #[derive(Debug)]
    pub struct GuardedStream<B> {
        #[pin]
        inner: B,
        // One timer for heartbeat, idle limit and lifetime: the nearest of their deadlines.
        #[pin]
        timer: Sleep,
        boundary: EventBoundary,
        last_upstream: Instant,
        last_sent: Instant,
        lifetime_end: Option<Instant>,
        // Set when the stream must end at the next boundary.
        closing: Option<EndReason>,
        // A last frame to send before ending (the `retry:` field).
        pending: Option<Bytes>,
        done: bool,
        config: Arc<Config>,
        log: StreamLog,
    }
}

impl<B> GuardedStream<B> {
    pub(crate) fn new(inner: B, config: Arc<Config>) -> Self {
        let now = Instant::now();
        let lifetime_end = config.max_lifetime.map(|cap| now + cap);
        Self {
            inner,
            timer: tokio::time::sleep_until(next_wake(&config, now, now, lifetime_end, false)),
            boundary: EventBoundary::default(),
            last_upstream: now,
            last_sent: now,
            lifetime_end,
            closing: None,
            pending: None,
            done: false,
            config,
            log: StreamLog {
                started: now,
                events: 0,
                bytes: 0,
                heartbeats: 0,
                reason: EndReason::ClientGone,
            },
        }
    }
}

impl<B> GuardedStream<B>
where
    B: Body<Data = Bytes>,
{
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(last) = this.pending.take() {
                return Poll::Ready(Some(Ok(Frame::data(last))));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let now = Instant::now();
                        *this.last_upstream = now;
                        *this.last_sent = now;
                        this.log.events += this.boundary.feed(data) as u64;
                        this.log.bytes += data.len() as u64;
                        // After an overdue heartbeat was held back mid-event the timer waits
                        // for the idle limit only; bring it back to the next heartbeat.
                        if let Some(heartbeat) = this.config.heartbeat {
                            let due = now + heartbeat;
                            if this.timer.deadline() > due {
                                this.timer.as_mut().reset(due);
                            }
                        }
                        if let Some(reason) = *this.closing {
                            if this.boundary.at_boundary() {
                                finish(this.log, this.done, this.pending, this.config, reason);
                            }
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.log.reason = EndReason::UpstreamError;
                    *this.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    this.log.reason = EndReason::UpstreamEnd;
                    *this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }

            // The upstream has nothing now: is a timer due?
            ready!(this.timer.as_mut().poll(cx));
            let now = Instant::now();
            let config = &**this.config;
            if this.closing.is_none() && this.lifetime_end.is_some_and(|end| end <= now) {
                *this.closing = Some(EndReason::Lifetime);
            }
            if config
                .idle_timeout
                .is_some_and(|idle| *this.last_upstream + idle <= now)
            {
                // Nothing more is coming: end now. A partial event, if any, is discarded by
                // `EventSource` as it would be at any end of stream.
                finish(
                    this.log,
                    this.done,
                    this.pending,
                    this.config,
                    EndReason::Idle,
                );
                continue;
            }
            if let Some(reason) = *this.closing {
                if this.boundary.at_boundary() {
                    finish(this.log, this.done, this.pending, this.config, reason);
                    continue;
                }
            }
            let send_heartbeat = this.boundary.at_boundary()
                && config.heartbeat.is_some_and(|h| *this.last_sent + h <= now);
            if send_heartbeat {
                *this.last_sent = now;
                this.log.heartbeats += 1;
            }
            let wake = next_wake(
                config,
                *this.last_sent,
                *this.last_upstream,
                *this.lifetime_end,
                this.closing.is_some(),
            );
            this.timer.as_mut().reset(wake);
            if send_heartbeat {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(HEARTBEAT)))));
            }
        }
    }
}

/// When the timer must next wake: the nearest deadline still ahead among heartbeat, idle
/// limit and lifetime. While closing (or mid-event, when the heartbeat is overdue but cannot
/// be sent), only the idle limit and upstream data can move the stream on.
fn next_wake(
    config: &Config,
    last_sent: Instant,
    last_upstream: Instant,
    lifetime_end: Option<Instant>,
    closing: bool,
) -> Instant {
    let now = Instant::now();
    let heartbeat = config.heartbeat.map(|h| last_sent + h).filter(|&d| d > now);
    let idle = config.idle_timeout.map(|i| last_upstream + i);
    let lifetime = lifetime_end.filter(|_| !closing);
    // With nothing to wait for, sleep for a year: only upstream data wakes the stream.
    let far = now + Duration::from_secs(60 * 60 * 24 * 365);
    [heartbeat, idle, lifetime]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(far)
}

/// Ends the stream; a lifetime end first sends a `retry:` with jitter so that reconnecting
/// browsers spread out (WHATWG HTML §9.2.6, the `retry` field).
fn finish(
    log: &mut StreamLog,
    done: &mut bool,
    pending: &mut Option<Bytes>,
    config: &Config,
    reason: EndReason,
) {
    log.reason = reason;
    *done = true;
    if reason == EndReason::Lifetime {
        let retry = config.retry_base.as_millis() as u64 + jitter(config.retry_jitter);
        *pending = Some(Bytes::from(format!("retry: {retry}\n\n")));
    }
}

/// A random number of milliseconds below `max`.
fn jitter(max: Duration) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let max = max.as_millis() as u64;
    if max == 0 {
        return 0;
    }
    // std's per-instance random keys are enough to spread reconnects.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    random % max
}
