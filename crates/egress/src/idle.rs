//! The idle timeout of a forwarded exchange: it ends after the idle timeout without a byte
//! either way, so that neither a silent destination nor a stalled client holds the
//! destination connection forever, while a long upload or download that keeps moving is
//! never cut.

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;

/// When an exchange last moved a frame, either way. Written with one relaxed store per
/// frame; the timers read it only when they fire, and re-arm to the later deadline.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Nanoseconds from `base` to the last frame.
    last: AtomicU64,
    idle: Duration,
}

impl Activity {
    pub(crate) fn new(idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
            idle,
        })
    }

    pub(crate) fn touch(&self) {
        let since = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    /// The moment the exchange is idle unless a frame moves first.
    pub(crate) fn deadline(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + self.idle
    }
}

pin_project! {
    /// The client's request body on its way to the destination, marking each frame as
    /// activity (a slow upload that keeps moving is not a silent destination).
    pub(crate) struct Progress<B> {
        #[pin]
        body: B,
        activity: Arc<Activity>,
    }
}

impl<B> Progress<B> {
    pub(crate) fn new(body: B, activity: Arc<Activity>) -> Self {
        Self { body, activity }
    }
}

impl<B: Body> Body for Progress<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            this.activity.touch();
        }
        frame
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
