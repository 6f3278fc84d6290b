//! The body of an egress response.

use crate::idle::Activity;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// The destination's body, streamed frame by frame and ended with
    /// [`BodyError::Idle`] after the idle timeout without a byte either way, or the proxy's
    /// own short answer.
    pub struct EgressBody {
        #[pin]
        inner: Inner,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Destination {
            #[pin]
            body: Incoming,
            #[pin]
            idle: Sleep,
            activity: Arc<Activity>,
        },
        Own { body: Full<Bytes> },
    }
}

/// Why a forwarded response body ended before its end: the client sees an aborted
/// transfer, never a body that looks complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The destination's connection failed or closed mid-body.
    #[error("destination body failed: {0}")]
    Destination(#[from] hyper::Error),
    /// No byte moved either way for the idle timeout.
    #[error("destination idle beyond the idle timeout")]
    Idle,
}

impl BodyError {
    /// Whether the body ended because the exchange went idle.
    pub fn is_idle(&self) -> bool {
        matches!(self, Self::Idle)
    }
}

impl EgressBody {
    pub(crate) fn destination(body: Incoming, activity: Arc<Activity>) -> Self {
        Self {
            inner: Inner::Destination {
                body,
                idle: tokio::time::sleep_until(activity.deadline()),
                activity,
            },
        }
    }

    /// No bytes (the `200` that opens a tunnel).
    pub fn empty() -> Self {
        Self {
            inner: Inner::Own {
                body: Full::default(),
            },
        }
    }
}

impl From<&'static str> for EgressBody {
    fn from(text: &'static str) -> Self {
        Self {
            inner: Inner::Own {
                body: Full::new(Bytes::from_static(text.as_bytes())),
            },
        }
    }
}

impl std::fmt::Debug for EgressBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressBody").finish_non_exhaustive()
    }
}

impl Body for EgressBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project().inner.project() {
            InnerProj::Destination {
                body,
                mut idle,
                activity,
            } => {
                if let Poll::Ready(frame) = body.poll_frame(cx) {
                    if let Some(Ok(_)) = &frame {
                        activity.touch();
                    }
                    return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
                }
                // The timer was armed for the last frame known then; a later frame (either
                // way) moves the deadline on.
                loop {
                    ready!(idle.as_mut().poll(cx));
                    let deadline = activity.deadline();
                    if deadline <= Instant::now() {
                        tracing::debug!("egress: forwarded response idle, ended");
                        return Poll::Ready(Some(Err(BodyError::Idle)));
                    }
                    idle.as_mut().reset(deadline);
                }
            }
            InnerProj::Own { body } => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Destination { body, .. } => body.is_end_stream(),
            Inner::Own { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Destination { body, .. } => body.size_hint(),
            Inner::Own { body } => body.size_hint(),
        }
    }
}
