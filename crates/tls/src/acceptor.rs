//! [`TlsAcceptor`]: the TLS [`Transport`] of kestra-edge's server.

use crate::{certs::provider, reload::CertStore, TlsError};
use kestra_edge_server::{Accepted, Protocol, Transport};
use rustls::{version, ServerConfig};
use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

/// ALPN `h2` (RFC 7540 §3.3) and `http/1.1` (RFC 7301 §6), in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The first byte of every TLS connection: a handshake record (RFC 8446 §5.1, content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP client on the TLS port reads before the connection closes.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
    content-type: text/plain; charset=utf-8\r\n\
    content-length: 37\r\n\
    connection: close\r\n\r\n\
    this port speaks HTTPS, use https://\n";

/// How long the refused plain-HTTP client's remaining bytes are read, so that closing does
/// not reset the connection before it has read the answer.
const PLAIN_HTTP_LINGER: Duration = Duration::from_millis(500);

/// Terminates TLS 1.2 and 1.3 with the certificate of a [`CertStore`], offers ALPN `h2` and
/// `http/1.1`, and hands each connection to HTTP/2 or HTTP/1 by what was negotiated, without
/// reading the protocol again. A client that offers no ALPN gets HTTP/1.1.
///
/// Plain HTTP sent to the TLS port is answered `400` at once and the connection closed.
/// A handshake is bounded by the server's header read timeout, which covers it.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor serving the certificates of `store`.
    pub fn new(store: CertStore) -> Result<Self, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(store));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption (RFC 5077 / RFC 8446 §2.2) for returning browsers, beside
        // rustls's default in-memory session cache.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self::from_config(Arc::new(config)))
    }

    /// An acceptor with a rustls configuration of your own; its ALPN list decides which
    /// HTTP version each connection gets (`h2`: HTTP/2, anything else: HTTP/1.1).
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl Transport for TlsAcceptor {
    type Io = TlsStream<TcpStream>;

    /// Boxed: the handshake's state (rustls's connection and its buffers) is several KB, and
    /// the server's connection task is as large as its largest phase for as long as the
    /// connection is open; boxed, the handshake's memory is freed once it is done.
    fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<Option<Accepted<Self::Io>>>> + Send {
        let acceptor = self.acceptor.clone();
        Box::pin(async move {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await? == 0 {
                return Ok(None);
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                tracing::debug!(%peer, "plain HTTP on the TLS port: answered 400");
                refuse_plain_http(tcp).await;
                return Ok(None);
            }
            let stream = acceptor.accept(tcp).await?;
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            Ok(Some(Accepted {
                io: stream,
                protocol,
                tls: true,
            }))
        })
    }
}

/// Answers 400 and closes, reading what the client sent meanwhile (bounded in time and size).
async fn refuse_plain_http(mut tcp: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tcp.try_read(&mut sink);
    if tcp.write_all(PLAIN_HTTP_ANSWER).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(PLAIN_HTTP_LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::self_signed;

    /// The server's connection task is as large as its largest phase while the connection
    /// is open: the handshake's state must not be part of it.
    #[tokio::test]
    async fn the_handshake_is_boxed() {
        let acceptor = TlsAcceptor::new(CertStore::new(
            self_signed(&["localhost"]).unwrap().certified,
        ))
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let accepting = acceptor.accept(tcp, peer);
        assert_eq!(
            std::mem::size_of_val(&accepting),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn the_plain_http_answer_is_well_framed() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
