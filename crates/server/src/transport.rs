//! [`Transport`]: what turns an accepted TCP connection into a byte stream that speaks HTTP.

use std::{future::Future, io, net::SocketAddr};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// The HTTP version a connection speaks, when the transport already knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Not known: the server reads the first bytes and serves HTTP/2 after the prior-knowledge
    /// preface (h2c), HTTP/1 otherwise.
    Sniff,
    /// HTTP/1.1 (or 1.0), e.g. negotiated by ALPN `http/1.1` or no ALPN at all.
    Http1,
    /// HTTP/2, e.g. negotiated by ALPN `h2`.
    Http2,
}

/// A connection ready for HTTP.
#[derive(Debug)]
pub struct Accepted<Io> {
    /// The byte stream.
    pub io: Io,
    /// Which HTTP to serve on it.
    pub protocol: Protocol,
    /// Whether the stream is TLS-protected: then each request carries [`TlsConnection`].
    pub tls: bool,
}

/// A request extension present when the request arrived over TLS, so that layers such as the
/// forwarded headers can tell the upstream the client used `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsConnection;

/// Turns each accepted TCP connection into an [`Accepted`] stream: plain TCP ([`PlainTcp`]),
/// or a TLS handshake (`kestra-edge-tls`).
///
/// The server runs [`Transport::accept`] on the connection's own task and counts it against
/// the header read timeout, so a client that stalls during a handshake is cut like one that
/// stalls before its first request.
pub trait Transport: Clone + Send + Sync + 'static {
    /// The stream HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Prepares `tcp` (from `peer`) for HTTP. `Ok(None)` means the transport has already
    /// answered or refused the client, and the connection is closed without error.
    fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<Option<Accepted<Self::Io>>>> + Send;

    /// The TCP stream itself, when [`Transport::Io`] is one: the server then serves
    /// HTTP/1.1 on it with its own codec (see the crate docs). Any other stream is
    /// served by hyper alone.
    fn into_tcp(io: Self::Io) -> Result<TcpStream, Self::Io> {
        Err(io)
    }
}

/// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart by the first bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Transport for PlainTcp {
    type Io = TcpStream;

    async fn accept(
        &self,
        tcp: TcpStream,
        _peer: SocketAddr,
    ) -> io::Result<Option<Accepted<TcpStream>>> {
        Ok(Some(Accepted {
            io: tcp,
            protocol: Protocol::Sniff,
            tls: false,
        }))
    }

    fn into_tcp(io: TcpStream) -> Result<TcpStream, TcpStream> {
        Ok(io)
    }
}
