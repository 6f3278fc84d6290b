//! [`IncomingBody`]: the request body every service behind the server receives.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::{
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// A request's body: none at all for the requests the server's own HTTP/1.1 codec
    /// serves (they have no body), or hyper's [`Incoming`] for everything hyper serves
    /// (requests with a body, upgrades, HTTP/2).
    #[derive(Debug, Default)]
    pub struct IncomingBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug, Default)]
    enum Kind {
        #[default]
        Empty,
        Hyper {
            #[pin]
            body: Incoming,
        },
    }
}

impl IncomingBody {
    /// A body that has already ended.
    pub fn empty() -> Self {
        Self::default()
    }

    /// hyper's body, when hyper read the request.
    pub fn as_hyper(&self) -> Option<&Incoming> {
        match &self.kind {
            Kind::Empty => None,
            Kind::Hyper { body } => Some(body),
        }
    }
}

impl From<Incoming> for IncomingBody {
    fn from(body: Incoming) -> Self {
        Self {
            kind: Kind::Hyper { body },
        }
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Hyper { body } => body.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Hyper { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Hyper { body } => body.size_hint(),
        }
    }
}
