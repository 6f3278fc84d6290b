//! One plain-TCP HTTP/1.1 connection served by the own codec, until it ends or hands over
//! to hyper.
//!
//! The connection's task does everything itself: it reads a request head into a lent
//! buffer, calls the service, writes the response head and body with as few system calls as
//! hyper (head and a ready body in one write), and watches the socket for the client leaving
//! while it waits on the service or on the body (an SSE stream). Buffers are lent by the
//! thread's pool only while bytes are in flight, and the service's future is boxed only
//! while it runs: a quiet SSE stream holds neither.

use super::{
    codec::{self, BodyLength, EncodeError, Encoded, Framing, Parsed, RequestInfo},
    pool,
    rewind::Rewind,
};
use crate::{body::IncomingBody, connection::ActiveBody};
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body;
use kestra_edge_headers::recycle;
use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    io::{self, IoSlice},
    pin::{pin, Pin},
    sync::atomic::{AtomicBool, Ordering},
    task::Poll,
    time::Duration,
};
use tokio::{
    io::{AsyncWrite, Interest},
    net::TcpStream,
    time::{sleep_until, Instant, Sleep},
};
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A data frame at least this large is written from its own buffer (vectored), not copied.
const COPY_BELOW: usize = 16 * 1024;
/// Written body bytes are flushed once this many are waiting, even when more are ready.
const FLUSH_AT: usize = 64 * 1024;

/// The server's limits, as the codec needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_headers: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) header_read_timeout: Duration,
}

/// Asks a connection to finish: an idle one closes at once, a busy one after its response.
///
/// One task waits on it (the connection's), so one waker slot is enough: polling it costs
/// a flag load and, while waiting, a waker comparison, where tokio's `Notify` takes a lock
/// for every poll and on every drop.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl Closing {
    pub(crate) fn close(&self) {
        self.flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once [`close`](Self::close) was called; one waiter at a time.
    pub(crate) async fn closed(&self) {
        poll_fn(|cx| {
            if self.is_closing() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A close between the load and the registration woke no one: look again.
            if self.is_closing() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// The header timeout's timer, moved lazily. Each request only records its new deadline;
/// the timer is moved there when the earlier deadline fires. tokio re-registers a timer on
/// every reset, which a busy keep-alive connection would otherwise pay once per request.
struct Deadline<'a> {
    sleep: Pin<&'a mut Sleep>,
    due: Instant,
}

impl<'a> Deadline<'a> {
    fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        let due = sleep.deadline();
        Self { sleep, due }
    }

    /// From now on the deadline is `due`.
    fn set(&mut self, due: Instant) {
        self.due = due;
        if due < self.sleep.deadline() {
            self.sleep.as_mut().reset(due);
        }
    }

    /// Resolves when the deadline passes.
    async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if self.sleep.deadline() >= self.due {
                return;
            }
            let due = self.due;
            self.sleep.as_mut().reset(due);
        }
    }
}

/// How the own codec left the connection.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Closed (or to be dropped): nothing more to do.
    Done,
    /// hyper takes over, first reading the bytes the codec read and did not use.
    Hyper {
        io: Rewind<TcpStream>,
        /// The client sent the HTTP/2 preface.
        h2: bool,
    },
}

/// Serves `tcp` until it closes, or until a request the codec does not take; `first` is
/// the deadline of the first request head.
///
/// A plain `fn` returning its `async` block, which uses the arguments where they are: an
/// `async fn` would copy each into a second slot of the connection's state.
#[allow(clippy::manual_async_fn)] // See above: an `async fn` copies its arguments.
pub(crate) fn serve<'a, S, B>(
    mut tcp: TcpStream,
    service: &'a mut S,
    limits: Limits,
    closing: &'a Closing,
    first: Instant,
) -> impl Future<Output = Ended> + 'a
where
    S: Service<Request<IncomingBody>, Response = Response<ActiveBody<B>>, Error = Infallible>,
    B: Body + 'a,
    B::Error: Into<BoxError>,
{
    async move {
        let mut read: Vec<u8> = Vec::new();
        let mut scanned = 0;
        let mut served = false;
        let timer = pin!(sleep_until(first));
        let mut deadline = Deadline::new(timer);
        // The service's future, boxed once and reused while requests come quickly; freed when a
        // response streams (an SSE stream keeps nothing of it).
        let mut slot: Option<Pin<Box<Option<S::Future>>>> = None;
        loop {
            // A request head.
            let (request, info, len) = loop {
                if read.is_empty() {
                    if closing.is_closing() {
                        return Ended::Done;
                    }
                } else {
                    // Only a connection's first bytes can be the HTTP/2 preface; `None`: too few
                    // to tell yet.
                    let h2 = if served {
                        Some(false)
                    } else {
                        codec::h2_preface(&read)
                    };
                    match h2 {
                        Some(true) => return hand_over(tcp, &mut read, true),
                        None => {}
                        Some(false) => {
                            if let Some(end) = codec::head_end(&read, scanned) {
                                let head = &read[..end];
                                match codec::parse_head(
                                    head,
                                    limits.max_headers,
                                    limits.max_header_bytes,
                                ) {
                                    Parsed::Request { request, info, len } => {
                                        break (request, info, len)
                                    }
                                    Parsed::Partial | Parsed::Hyper => {
                                        return hand_over(tcp, &mut read, false);
                                    }
                                }
                            }
                            scanned = codec::next_scan(read.len());
                            if read.len() > limits.max_header_bytes {
                                // hyper answers 431 (or 414).
                                return hand_over(tcp, &mut read, false);
                            }
                        }
                    }
                }
                if !wait_for_bytes(&tcp, &mut read, &mut deadline, closing).await {
                    return Ended::Done;
                }
            };
            served = true;
            read.drain(..len);
            scanned = 0;
            if read.is_empty() {
                pool::give(&mut read);
            }

            // The service's answer, unless the client leaves first.
            if let Err(never) = poll_fn(|cx| service.poll_ready(cx)).await {
                match never {}
            }
            let future = service.call(request.map(|()| IncomingBody::empty()));
            let running = match &mut slot {
                Some(running) => {
                    running.as_mut().set(Some(future));
                    running
                }
                None => slot.insert(Box::pin(Some(future))),
            };
            // The head is written as soon as the answer comes, and only the body is kept, pinned
            // once: the response and its parts end in this block, so the connection's state holds
            // one copy of the body and nothing else of the response.
            let keep_alive = info.keep_alive && !closing.is_closing();
            let mut out: Vec<u8>;
            let encoded;
            let mut body = pin!({
                let answer = poll_fn(|cx| match running.as_mut().as_pin_mut() {
                    Some(future) => future.poll(cx),
                    None => Poll::Pending,
                });
                let answer = tokio::select! {
                    biased;
                    answer = answer => answer,
                    () = client_gone(&tcp, &mut read, limits.max_header_bytes) => return Ended::Done,
                };
                running.as_mut().set(None);
                let Ok(response) = answer;
                let (parts, body) = response.into_parts();
                out = pool::take();
                encoded = codec::encode_head(
                    parts.status,
                    parts.version,
                    &parts.headers,
                    BodyLength::of(&body),
                    info,
                    keep_alive,
                    &mut out,
                );
                // Written: the map goes back to the thread's for the next head.
                recycle::give_header_map(parts.headers);
                body
            });
            let written = match encoded {
                Ok(encoded) => {
                    let sent = respond(
                        &tcp,
                        body.as_mut(),
                        encoded,
                        &mut out,
                        &mut read,
                        limits,
                        &mut slot,
                    );
                    sent.await
                }
                Err(err) => refuse(&tcp, err, info, &mut out).await,
            };
            pool::give(&mut out);
            match written {
                Ok(true) => {}
                Ok(false) => {
                    pool::give(&mut read);
                    // The response is whole: a FIN after it, as hyper closes.
                    let _ = poll_fn(|cx| Pin::new(&mut tcp).poll_shutdown(cx)).await;
                    return Ended::Done;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "HTTP/1.1 response not written whole: closed");
                    pool::give(&mut read);
                    return Ended::Done;
                }
            }
            deadline.set(after(limits.header_read_timeout));
        }
    }
}

/// `timeout` from now, or far in the future when that overflows.
fn after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// Waits until the client sends more of a head and reads it; false when the connection is
/// to close (end of stream, error, the header timeout, or a graceful close while idle).
async fn wait_for_bytes(
    tcp: &TcpStream,
    read: &mut Vec<u8>,
    deadline: &mut Deadline<'_>,
    closing: &Closing,
) -> bool {
    loop {
        let idle = read.is_empty();
        tokio::select! {
            biased;
            ready = poll_fn(|cx| tcp.poll_read_ready(cx)) => {
                if ready.is_err() {
                    return false;
                }
            }
            () = deadline.passed() => {
                tracing::debug!("no request head within the header timeout: closed");
                return false;
            }
            () = closing.closed(), if idle => return false,
        }
        if read.capacity() == 0 {
            *read = pool::take();
        } else if read.len() == read.capacity() {
            read.reserve(pool::BUFFER);
        }
        match read_available(tcp, read) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => give_back_if_empty(read),
            Err(_) => return false,
        }
    }
}

/// Resolves when the client has closed its side or the connection failed. Bytes the client
/// pipelines meanwhile are kept in `read` (up to `limit`, after which the socket is no
/// longer watched, as hyper stops reading a busy connection).
async fn client_gone(tcp: &TcpStream, read: &mut Vec<u8>, limit: usize) {
    loop {
        if read.len() >= limit {
            return std::future::pending().await;
        }
        if poll_fn(|cx| tcp.poll_read_ready(cx)).await.is_err() {
            return;
        }
        if read.capacity() == 0 {
            *read = pool::take();
        } else if read.len() == read.capacity() {
            read.reserve(pool::BUFFER);
        }
        match read_available(tcp, read) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => give_back_if_empty(read),
            Err(_) => return,
        }
    }
}

/// Reads what the socket holds into `read`'s spare capacity (`WouldBlock` when nothing).
///
/// A read that leaves room in the buffer has drained the socket, so the socket's readiness
/// is cleared then, as tokio's own `poll_read` clears it on epoll (`PollEvented::poll_read`);
/// `try_read_buf` alone keeps it. The next wait then goes to epoll, rather than to one more
/// read that could only return `EAGAIN`: one system call less on every request.
fn read_available(tcp: &TcpStream, read: &mut Vec<u8>) -> io::Result<usize> {
    let spare = read.capacity() - read.len();
    let mut drained = 0;
    let result = tcp.try_io(Interest::READABLE, || match tcp.try_read_buf(read) {
        // `WouldBlock` is how `try_io` is told to clear the readiness.
        Ok(n) if 0 < n && n < spare => {
            drained = n;
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    });
    match result {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock && drained > 0 => Ok(drained),
        other => other,
    }
}

/// After a read that found nothing: an empty buffer goes back to the pool rather than wait
/// with the connection. A connection accepted before its client's first bytes arrived
/// would otherwise hold one from then on; a thousand streams opened at once held 8 MB that
/// way, which glibc's malloc kept after they were freed.
fn give_back_if_empty(read: &mut Vec<u8>) {
    if read.is_empty() {
        pool::give(read);
    }
}

/// Gives the connection to hyper with the bytes read so far.
fn hand_over(tcp: TcpStream, read: &mut Vec<u8>, h2: bool) -> Ended {
    let prefix = Bytes::copy_from_slice(read);
    pool::give(read);
    Ended::Hyper {
        io: Rewind::new(prefix, tcp),
        h2,
    }
}

/// A response head the codec refused: hyper's answer to a 1xx from a service is a 500;
/// for the other errors nothing is written. The connection closes either way.
async fn refuse(
    tcp: &TcpStream,
    err: EncodeError,
    info: RequestInfo,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    tracing::warn!(error = %err, "response head refused: connection closed");
    out.clear();
    if err == EncodeError::Informational {
        let empty = HeaderMap::new();
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        let length = BodyLength::Empty;
        if codec::encode_head(status, Version::HTTP_11, &empty, length, info, true, out).is_ok() {
            flush(tcp, out).await?;
        }
    }
    Ok(false)
}

/// Writes the head in `out` and the body after it; `Ok(true)` when the connection may carry
/// another request.
///
/// A plain `fn` returning its `async` block, as [`serve`] is.
#[allow(clippy::manual_async_fn)] // See above: an `async fn` copies its arguments.
fn respond<'a, B, F>(
    tcp: &'a TcpStream,
    mut body: Pin<&'a mut ActiveBody<B>>,
    encoded: Encoded,
    out: &'a mut Vec<u8>,
    read: &'a mut Vec<u8>,
    limits: Limits,
    slot: &'a mut Option<Pin<Box<Option<F>>>>,
) -> impl Future<Output = io::Result<bool>> + 'a
where
    B: Body + 'a,
    B::Error: Into<BoxError>,
    F: 'a,
{
    async move {
        let Encoded { framing, last } = encoded;
        let mut remaining = match framing {
            Framing::Length(len) => len,
            Framing::Chunked(_) | Framing::Close => u64::MAX,
        };
        // Boxed: rare, and the map would otherwise sit in every streaming connection's state.
        let mut trailers: Option<Box<HeaderMap>> = None;
        if remaining == 0 {
            // A HEAD, 204 or 304 answer, or an empty body: the body is not read (as hyper).
            body.as_mut().finish();
        }
        let mut complete = remaining == 0;
        while !complete {
            let polled = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            let frame = match polled.map(settle) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing more for now: what is written goes out, the buffers go back, and
                    // the client is watched while the body waits (a quiet SSE stream).
                    flush(tcp, out).await?;
                    pool::give(out);
                    *slot = None;
                    let next = poll_fn(|cx| body.as_mut().poll_frame(cx));
                    tokio::select! {
                        biased;
                        frame = next => settle(frame),
                        () = client_gone(tcp, read, limits.max_header_bytes) => return Ok(false),
                    }
                }
            };
            match frame {
                None => {
                    if let Framing::Chunked(allowed) = &framing {
                        ensure(out);
                        codec::chunked_end(out, allowed.as_deref(), trailers.as_deref());
                    } else if remaining != u64::MAX && remaining != 0 {
                        // The body ended short of its Content-Length: the client must not take
                        // the next bytes for this response.
                        flush(tcp, out).await?;
                        return Ok(false);
                    }
                    complete = true;
                }
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "response body failed: transfer aborted");
                    flush(tcp, out).await?;
                    return Ok(false);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let mut len = data.remaining();
                        if len == 0 {
                            continue;
                        }
                        if let Framing::Length(_) = framing {
                            // More than announced is cut, as hyper cuts it.
                            len = len.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                            remaining -= len as u64;
                        }
                        ensure(out);
                        let chunked = matches!(framing, Framing::Chunked(_));
                        if chunked {
                            codec::chunk_header(out, len);
                        }
                        if len < COPY_BELOW {
                            let mut left = len;
                            while left > 0 {
                                let chunk = data.chunk();
                                let n = chunk.len().min(left);
                                out.extend_from_slice(&chunk[..n]);
                                data.advance(n);
                                left -= n;
                            }
                            if chunked {
                                out.extend_from_slice(b"\r\n");
                            }
                        } else {
                            let bytes = data.copy_to_bytes(len);
                            drop(data);
                            let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
                            write_all(
                                tcp,
                                &mut [IoSlice::new(out), IoSlice::new(&bytes), IoSlice::new(tail)],
                            )
                            .await?;
                            out.clear();
                        }
                        if remaining == 0 {
                            body.as_mut().finish();
                            complete = true;
                        } else if out.len() >= FLUSH_AT {
                            flush(tcp, out).await?;
                        }
                    }
                    Err(frame) => {
                        if let Ok(fields) = frame.into_trailers() {
                            trailers = Some(Box::new(fields));
                        }
                    }
                },
            }
        }
        flush(tcp, out).await?;
        if last || matches!(framing, Framing::Close) {
            return Ok(false);
        }
        Ok(true)
    }
}

/// A body frame with its error boxed (sendable, whatever the body's error type).
fn settle<D, E: Into<BoxError>>(
    frame: Option<Result<http_body::Frame<D>, E>>,
) -> Option<Result<http_body::Frame<D>, BoxError>> {
    frame.map(|frame| frame.map_err(Into::into))
}

/// Makes sure `out` has a lent buffer to write into.
fn ensure(out: &mut Vec<u8>) {
    if out.capacity() == 0 {
        *out = pool::take();
    }
}

/// Writes and empties `out`.
async fn flush(tcp: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        write_all(tcp, &mut [IoSlice::new(out)]).await?;
        out.clear();
    }
    Ok(())
}

/// Writes every byte of `bufs`, trying the socket before waiting on it.
async fn write_all(tcp: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match tcp.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| tcp.poll_write_ready(cx)).await?;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncWriteExt, net::TcpListener};

    /// A connection whose readiness says readable while the socket holds nothing: the
    /// client's bytes were read whole by a read that filled its buffer, which leaves tokio's
    /// readiness set (as a spurious wake-up does).
    async fn stale_readable() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"ab").await.unwrap();
        server.readable().await.unwrap();
        let mut exact = [0u8; 2];
        assert_eq!(server.try_read(&mut exact).unwrap(), 2);
        (server, client)
    }

    #[tokio::test]
    async fn a_read_that_finds_nothing_keeps_no_buffer() {
        let closing = Closing::default();
        let (server, _client) = stale_readable().await;
        let mut read = Vec::new();
        let timer = pin!(sleep_until(Instant::now() + Duration::from_millis(50)));
        let mut deadline = Deadline::new(timer);
        // The header timeout ends the wait: nothing ever came.
        assert!(!wait_for_bytes(&server, &mut read, &mut deadline, &closing).await);
        assert_eq!(read.capacity(), 0, "the buffer waited with the connection");

        let (server, _client) = stale_readable().await;
        let mut read = Vec::new();
        tokio::select! {
            () = client_gone(&server, &mut read, 1024) => panic!("the client is still there"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert_eq!(read.capacity(), 0, "the buffer waited with the stream");
    }

    #[tokio::test]
    async fn a_read_that_drains_the_socket_clears_its_readiness() {
        let (server, mut client) = stale_readable().await;
        client.write_all(b"GET").await.unwrap();
        let mut read = Vec::with_capacity(64);
        server.readable().await.unwrap();
        assert_eq!(read_available(&server, &mut read).unwrap(), 3);
        assert_eq!(read, b"GET");
        // Nothing more to read, and no wake-up pending: the next wait goes to epoll.
        let waited = tokio::time::timeout(Duration::from_millis(50), server.readable()).await;
        assert!(
            waited.is_err(),
            "readiness left set after a read that drained the socket"
        );
        client.write_all(b" /").await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(read_available(&server, &mut read).unwrap(), 2);
    }

    #[tokio::test]
    async fn a_deadline_moved_later_passes_at_the_later_time_only() {
        let start = Instant::now();
        let timer = pin!(sleep_until(start + Duration::from_millis(20)));
        let mut deadline = Deadline::new(timer);
        deadline.set(start + Duration::from_millis(80));
        deadline.passed().await;
        assert!(
            Instant::now() >= start + Duration::from_millis(80),
            "passed too early"
        );

        // Moved earlier than the timer: the timer follows at once.
        let timer = pin!(sleep_until(start + Duration::from_secs(60)));
        let mut deadline = Deadline::new(timer);
        deadline.set(Instant::now() + Duration::from_millis(10));
        let passed = tokio::time::timeout(Duration::from_secs(5), deadline.passed()).await;
        assert!(passed.is_ok(), "the earlier deadline did not pass");
    }

    #[tokio::test]
    async fn closing_wakes_the_connection_waiting_on_it() {
        let closing = std::sync::Arc::new(Closing::default());
        let waiter = tokio::spawn({
            let closing = closing.clone();
            async move { closing.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "closed before close()");
        closing.close();
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(
            matches!(woken, Ok(Ok(()))),
            "close() did not wake the waiter"
        );
        // Once closed, it stays closed.
        closing.closed().await;
    }
}
