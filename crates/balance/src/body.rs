//! The request body the balancer can take back, and the response body that counts as load.

use crate::endpoint::{InFlight, Stats};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use kestra_edge_proxy::{BodyError, ProxyBody};
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

/// A request body the balancer can take back when the replica never read it.
///
/// A request that was never sent (connection refused, connect timeout) may go to another
/// replica whatever its method, but only with its body intact. The body waits in a slot the
/// balancer shares until its first poll moves it out; after that first poll (a byte may have
/// left) it is never re-sent. Requests that cannot be retried skip the slot.
pub struct Reclaim<B> {
    state: State<B>,
}

enum State<B> {
    /// Not read yet: the balancer may still take it back.
    Shared(Arc<Mutex<Option<B>>>),
    /// Read (or never retryable): streamed directly.
    Owned(B),
    /// No body: a retried request that had none.
    Empty,
}

impl<B> fmt::Debug for Reclaim<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Shared(_) => "shared",
            State::Owned(_) => "owned",
            State::Empty => "empty",
        };
        f.debug_struct("Reclaim").field("state", &state).finish()
    }
}

/// The balancer's side of a [`Reclaim`] body.
pub(crate) struct Slot<B>(Arc<Mutex<Option<B>>>);

impl<B> Slot<B> {
    /// The body, when no replica has read a byte of it.
    pub(crate) fn take(&self) -> Option<B> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl<B> Reclaim<B> {
    /// A body the balancer keeps a handle on.
    pub(crate) fn shared(body: B) -> (Self, Slot<B>) {
        let slot = Arc::new(Mutex::new(Some(body)));
        (
            Self {
                state: State::Shared(slot.clone()),
            },
            Slot(slot),
        )
    }

    /// A body streamed as is.
    pub(crate) fn owned(body: B) -> Self {
        Self {
            state: State::Owned(body),
        }
    }

    /// No body.
    pub(crate) fn empty() -> Self {
        Self {
            state: State::Empty,
        }
    }
}

impl<B> Body for Reclaim<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if let State::Shared(slot) = &self.state {
            // First read: from now on the body belongs to this replica.
            let body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            self.state = match body {
                Some(body) => State::Owned(body),
                None => State::Empty,
            };
        }
        match &mut self.state {
            State::Owned(body) => Pin::new(body).poll_frame(cx),
            State::Shared(_) | State::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Shared(slot) => slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_none_or(Body::is_end_stream),
            State::Owned(body) => body.is_end_stream(),
            State::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Shared(slot) => slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
            State::Owned(body) => body.size_hint(),
            State::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project! {
    /// The body of a balanced response: the replica's body, counted as load on that replica
    /// until it ends or is dropped, so that an open SSE stream weighs on its replica.
    ///
    /// A body that fails mid-stream (the replica died or went silent) ejects its replica and
    /// passes the error on: the client's transfer aborts, and an `EventSource` reconnects,
    /// landing on a live replica.
    #[derive(Debug)]
    pub struct BalanceBody {
        #[pin]
        inner: ProxyBody,
        load: Option<Load>,
    }
}

/// What a response body keeps of its replica while it is open.
#[derive(Debug)]
pub(crate) struct Load {
    pub(crate) in_flight: InFlight,
    pub(crate) backoff: crate::EjectionBackoff,
}

impl BalanceBody {
    pub(crate) fn new(inner: ProxyBody, load: Option<Load>) -> Self {
        Self { inner, load }
    }

    fn stats(&self) -> Option<&Arc<Stats>> {
        self.load.as_ref().map(|l| &l.in_flight.0)
    }
}

impl From<&'static str> for BalanceBody {
    fn from(text: &'static str) -> Self {
        Self::new(ProxyBody::from(text), None)
    }
}

impl Body for BalanceBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => *this.load = None,
            Poll::Ready(Some(Err(err))) => {
                if let Some(load) = this.load.take() {
                    let stats = &load.in_flight.0;
                    if let Some(period) = stats.ejection.fail(stats.now(), &load.backoff) {
                        tracing::warn!(error = %err, ejected_for = ?period, "replica failed mid-body: ejected");
                    }
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl BalanceBody {
    /// Whether this body still counts as load on its replica.
    pub fn is_counted(&self) -> bool {
        self.stats().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn an_unread_body_can_be_taken_back_a_read_one_cannot() {
        let (body, slot) = Reclaim::shared(Full::new(Bytes::from_static(b"abc")));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(3));
        drop(body);
        let back = slot.take().unwrap();
        assert_eq!(back.collect().await.unwrap().to_bytes(), "abc");

        let (body, slot) = Reclaim::shared(Full::new(Bytes::from_static(b"abc")));
        let read = body.collect().await.unwrap().to_bytes();
        assert_eq!(read, "abc");
        assert!(slot.take().is_none());
    }

    #[tokio::test]
    async fn an_empty_reclaim_is_at_its_end() {
        let body: Reclaim<Full<Bytes>> = Reclaim::empty();
        assert!(body.is_end_stream());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
