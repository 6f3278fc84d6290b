//! Response bodies the layer writes itself: a denial relayed from the auth service, or 503.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// A response body type the layer can answer with on its own.
///
/// A denial from the auth service is relayed with its body (read whole, it is bounded), and
/// an unreachable auth service is answered 503: both need a body of the inner service's
/// type. Implemented for kestra-edge's [`ProxyBody`](kestra_edge_proxy::ProxyBody), axum's
/// `Body`, `Full<Bytes>` and `UnsyncBoxBody<Bytes, E>`; implement it for your own body type
/// to use the layer in another stack.
pub trait MessageBody {
    /// A complete body holding `bytes`.
    fn message(bytes: Bytes) -> Self;
}

impl MessageBody for kestra_edge_proxy::ProxyBody {
    fn message(bytes: Bytes) -> Self {
        kestra_edge_proxy::ProxyBody::message(bytes)
    }
}

impl MessageBody for axum::body::Body {
    fn message(bytes: Bytes) -> Self {
        axum::body::Body::from(bytes)
    }
}

impl MessageBody for Full<Bytes> {
    fn message(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl<E> MessageBody for UnsyncBoxBody<Bytes, E> {
    fn message(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}
