//! The own HTTP/1.1 path on real sockets: keep-alive, pipelining, `Connection: close`,
//! HEAD, a streamed body, a client leaving mid-stream, the hand-over to hyper on the same
//! connection (a body, the h2c preface, an over-large head), the header timeout and
//! graceful shutdown. Each answer says which implementation read the request: the own codec
//! hands services an empty [`IncomingBody`], hyper its `Incoming`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use kestra_edge_server::{IncomingBody, Server};
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot},
};

/// A body fed by a channel: unknown length, written chunked.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|d| Ok(Frame::data(d))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// `/stream` answers a chunked body whose sender lives until the server drops the body or
/// 10 s pass (it sends `data: 1\n\n` first; `dropped` counts bodies the server dropped);
/// anything else answers `own N` or `hyper N`: who read the request, and its body's length.
async fn serve(timeout: Duration) -> (SocketAddr, Arc<AtomicUsize>, oneshot::Sender<()>) {
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
        .header_read_timeout(timeout)
        .shutdown_grace(Duration::from_secs(2));
    let addr = server.local_addr().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let service = tower::service_fn(move |req: Request<IncomingBody>| {
        let dropped = counter.clone();
        async move {
            if req.uri().path() == "/stream" {
                let (tx, rx) = mpsc::channel(4);
                tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
                tokio::spawn(async move {
                    tokio::select! {
                        () = tx.closed() => { dropped.fetch_add(1, Ordering::SeqCst); }
                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                });
                let body: Body = ChannelBody(rx).boxed_unsync();
                return Ok::<_, Infallible>(Response::new(body));
            }
            let who = if req.body().as_hyper().is_some() {
                "hyper"
            } else {
                "own"
            };
            let len = req
                .into_body()
                .collect()
                .await
                .map_or(0, |b| b.to_bytes().len());
            let body: Body = Full::new(Bytes::from(format!("{who} {len}"))).boxed_unsync();
            Ok(Response::new(body))
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(service, async {
        let _ = stopped.await;
    }));
    (addr, dropped, stop)
}

/// Reads until `needle` has been seen `times` times, or the connection ends, or 5 s pass.
async fn read_until(stream: &mut TcpStream, needle: &str, times: usize) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches(needle).count() < times {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closed the connection (end of stream within 2 s).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

/// A connection on which one GET was answered by the own codec.
async fn served_once(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut stream, "own 0", 1).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("content-length: 5\r\n"), "{answer}");
    assert!(answer.contains("\r\ndate: "), "{answer}");
    assert!(answer.ends_with("own 0"), "{answer}");
    stream
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_served_in_order() {
    let (addr, _, _stop) = serve(Duration::from_secs(5)).await;
    let mut stream = served_once(addr).await;
    // Three pipelined requests in one write, the last asking to close.
    stream
        .write_all(
            b"GET /b HTTP/1.1\r\nHost: t\r\n\r\nHEAD /c HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest.matches("HTTP/1.1 200 OK").count(), 3, "{rest}");
    // The HEAD answer has the length and no body: two bodies in all.
    assert_eq!(rest.matches("own 0").count(), 2, "{rest}");
    let last = rest.rsplit("HTTP/1.1 200 OK").next().unwrap();
    assert!(last.contains("connection: close\r\n"), "{last}");
}

#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_to_hyper() {
    let (addr, _, _stop) = serve(Duration::from_secs(5)).await;
    let mut stream = served_once(addr).await;
    // The POST's head and body arrive with the GET after it: hyper reads all three.
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
              GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let both = read_until(&mut stream, "hyper", 2).await;
    assert!(both.contains("hyper 5"), "{both}");
    assert!(both.contains("hyper 0"), "{both}");
}

#[tokio::test]
async fn smuggling_shapes_are_left_to_hyper_as_before() {
    let (addr, _, _stop) = serve(Duration::from_secs(5)).await;
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let answer = read_until(&mut stream, "\r\n\r\n", 1).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
    }
    // Content-Length with Transfer-Encoding: hyper reads the chunked body, drops the length
    // and closes after its answer (RFC 9112 §6.3), so nothing after it is read as a request.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("hyper 0"), "{answer}");
}

#[tokio::test]
async fn the_h2c_preface_is_served_by_hyper() {
    let (addr, _, _stop) = serve(Duration::from_secs(5)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let (response, _) = send
        .send_request(Request::get("http://t/").body(()).unwrap(), true)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    let data = body.data().await.unwrap().unwrap();
    assert_eq!(&data[..], b"hyper 0");
}

#[tokio::test]
async fn a_client_leaving_a_quiet_stream_drops_its_body() {
    let (addr, dropped, _stop) = serve(Duration::from_secs(5)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut stream, "data: 1", 1).await;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("9\r\ndata: 1\n\n\r\n"), "{head}");
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dropped.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the body outlived its client"
    );
}

#[tokio::test]
async fn a_silent_keep_alive_connection_is_closed_at_the_header_timeout() {
    let (addr, _, _stop) = serve(Duration::from_millis(300)).await;
    let mut stream = served_once(addr).await;
    let started = Instant::now();
    assert!(closed(&mut stream).await, "still open after 2 s");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    // Half a head, then silence: cut likewise.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    assert!(closed(&mut stream).await, "a half head kept the connection");
}

#[tokio::test]
async fn shutdown_closes_an_idle_keep_alive_connection() {
    let (addr, _, stop) = serve(Duration::from_secs(5)).await;
    let mut idle = served_once(addr).await;
    stop.send(()).unwrap();
    assert!(
        closed(&mut idle).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn an_over_large_head_is_431_from_hyper() {
    let (addr, _, _stop) = serve(Duration::from_secs(5)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "v".repeat(70 * 1024)
    );
    // The server may close while the head is still being written.
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = read_until(&mut stream, "\r\n\r\n", 1).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}
