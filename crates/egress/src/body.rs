//! The body of an egress response.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::{
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// The destination's body, streamed frame by frame, or the proxy's own short answer.
    pub struct EgressBody {
        #[pin]
        inner: Inner,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Destination { #[pin] body: Incoming },
        Own { body: Full<Bytes> },
    }
}

impl EgressBody {
    pub(crate) fn destination(body: Incoming) -> Self {
        Self {
            inner: Inner::Destination { body },
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project().inner.project() {
            InnerProj::Destination { body } => body.poll_frame(cx),
            InnerProj::Own { body } => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Destination { body } => body.is_end_stream(),
            Inner::Own { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Destination { body } => body.size_hint(),
            Inner::Own { body } => body.size_hint(),
        }
    }
}
