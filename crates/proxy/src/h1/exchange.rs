//! One bodiless request and its response over an own HTTP/1.1 connection, driven inline by
//! the task that polls the proxy's future and then the response body: no connection task,
//! no channel, no oneshot between the client's connection and the upstream's.

use super::{
    codec::{parse_head, BodyDecoder, Decoded, H1Error},
    pool::Pool,
    timer::Timer,
};
use crate::error::ProxyError;
use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Frame, SizeHint};
use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncWrite, Interest},
    net::TcpStream,
    time::Instant,
};

/// Bytes read at a time at first. hyper's read buffer starts at the same size.
const READ_SIZE: usize = 8 * 1024;
/// The most bytes a body reads at a time, once reads keep filling the buffer: about
/// hyper's own largest read buffer (`max_buf_size`, 408 KiB), so that a large download
/// costs as few system calls as it did on hyper's client.
const MAX_READ_SIZE: usize = 512 * 1024;

/// A plain `http://` upstream reached over the own HTTP/1.1 path.
#[derive(Debug)]
pub(crate) struct Upstream {
    target: Target,
    authority: String,
    pool: Arc<Pool>,
    connect_timeout: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    Addr(SocketAddr),
    /// Resolved for each new connection, like hyper-util's `HttpConnector`.
    Name(Arc<str>, u16),
}

impl Upstream {
    pub(crate) fn new(
        host: &str,
        port: u16,
        authority: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let target = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name(host.into(), port),
        };
        Self {
            target,
            authority: authority.to_owned(),
            pool: Pool::new(idle_timeout, max_idle),
            connect_timeout,
        }
    }

    /// The authority written as `Host` when the request has none.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    fn connect(&self) -> Pin<Box<dyn Future<Output = Result<TcpStream, ProxyError>> + Send>> {
        let target = self.target.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let connect = async {
                match target {
                    Target::Addr(addr) => TcpStream::connect(addr).await,
                    Target::Name(host, port) => TcpStream::connect((&*host, port)).await,
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(stream)) => {
                    // Small writes go out at once: a request head is one segment.
                    let _ = stream.set_nodelay(true);
                    Ok(stream)
                }
                Ok(Err(err)) => Err(ProxyError::Connect(Box::new(err))),
                Err(_) => Err(ProxyError::ConnectTimeout),
            }
        })
    }
}

/// The exchange: connect or take a pooled connection, write the head, read the response
/// head. Resolves to the response, whose body then owns the connection.
pub(crate) struct Exchange {
    upstream: Arc<Upstream>,
    head: Vec<u8>,
    head_request: bool,
    /// GET, HEAD, OPTIONS: may be sent again once if the connection closes unanswered.
    replayable: bool,
    retried: bool,
    /// What the body's reads start at: a pooled connection's last size, else [`READ_SIZE`].
    read_size: usize,
    /// The response head's deadline, lent by the thread while the exchange lasts (given
    /// back when it is dropped, which its caller does once the head has come).
    timer: Option<Timer>,
    state: State,
}

enum State {
    Start,
    Connecting(Pin<Box<dyn Future<Output = Result<TcpStream, ProxyError>> + Send>>),
    Writing {
        stream: TcpStream,
        reused: bool,
        written: usize,
    },
    Reading {
        stream: TcpStream,
        buf: BytesMut,
        interim: usize,
    },
    Done,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::Connecting(_) => "connecting",
            State::Writing { .. } => "writing",
            State::Reading { .. } => "reading",
            State::Done => "done",
        };
        f.debug_struct("Exchange").field("state", &state).finish()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.give();
        }
    }
}

/// The connection failed before any byte of an answer.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("upstream closed the connection before answering")]
    Closed,
    #[error(transparent)]
    Io(io::Error),
}

impl Exchange {
    pub(crate) fn new(
        upstream: Arc<Upstream>,
        head: Vec<u8>,
        head_request: bool,
        replayable: bool,
        deadline: Instant,
    ) -> Self {
        Self {
            upstream,
            head,
            head_request,
            replayable,
            retried: false,
            read_size: READ_SIZE,
            timer: Timer::take(deadline),
            state: State::Start,
        }
    }

    /// Waits for the connection, under the response deadline: the upstream took too long
    /// when the timer fires.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<H1Body>, ProxyError>> {
        // Outside a runtime no timer runs; the connection's wake-up still does.
        if self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.poll_expired(cx))
        {
            Poll::Ready(Err(ProxyError::ResponseTimeout))
        } else {
            Poll::Pending
        }
    }

    /// Whether a failure before any answer may be retried on a new connection: a request
    /// never written to a reused connection (its upstream had closed it), or a safe
    /// bodiless one once (RFC 9110 §9.2.2).
    fn retry(&mut self, unsent_on_reused: bool) -> bool {
        if self.retried || !(unsent_on_reused || self.replayable) {
            return false;
        }
        self.retried = true;
        self.read_size = READ_SIZE;
        self.state = State::Connecting(self.upstream.connect());
        true
    }

    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<H1Body>, ProxyError>> {
        loop {
            // Taken out and put back: each arm owns the connection it works on.
            match std::mem::replace(&mut self.state, State::Done) {
                State::Start => {
                    self.state = match self.upstream.pool.take() {
                        Some((stream, read_size)) => {
                            self.read_size = read_size;
                            State::Writing {
                                stream,
                                reused: true,
                                written: 0,
                            }
                        }
                        None => State::Connecting(self.upstream.connect()),
                    };
                }
                State::Connecting(mut connect) => match connect.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = State::Connecting(connect);
                        return self.wait(cx);
                    }
                    Poll::Ready(Ok(stream)) => {
                        self.state = State::Writing {
                            stream,
                            reused: false,
                            written: 0,
                        };
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                },
                State::Writing {
                    mut stream,
                    reused,
                    mut written,
                } => match Pin::new(&mut stream).poll_write(cx, &self.head[written..]) {
                    Poll::Pending => {
                        self.state = State::Writing {
                            stream,
                            reused,
                            written,
                        };
                        return self.wait(cx);
                    }
                    Poll::Ready(Ok(n)) if n > 0 => {
                        written += n;
                        self.state = if written == self.head.len() {
                            State::Reading {
                                stream,
                                buf: BytesMut::new(),
                                interim: 0,
                            }
                        } else {
                            State::Writing {
                                stream,
                                reused,
                                written,
                            }
                        };
                    }
                    Poll::Ready(result) => {
                        let err = match result {
                            Err(err) => Unanswered::Io(err),
                            Ok(_) => Unanswered::Closed,
                        };
                        if !self.retry(reused && written == 0) {
                            return Poll::Ready(Err(ProxyError::Upstream(Box::new(err))));
                        }
                        tracing::debug!(error = %err, "upstream connection failed unanswered: retried");
                    }
                },
                State::Reading {
                    stream,
                    mut buf,
                    mut interim,
                } => {
                    match parse_head(&mut buf, self.head_request, &mut interim) {
                        Ok(Some(head)) => {
                            let mut body = H1Body {
                                stream: Some(stream),
                                buf,
                                decoder: BodyDecoder::new(head.framing),
                                keep_alive: head.keep_alive,
                                pool: self.upstream.pool.clone(),
                                read_size: self.read_size,
                                failed: None,
                            };
                            if body.decoder.is_done() {
                                body.finish();
                            }
                            let mut response = Response::new(body);
                            *response.status_mut() = head.status;
                            *response.version_mut() = head.version;
                            *response.headers_mut() = head.headers;
                            return Poll::Ready(Ok(response));
                        }
                        Ok(None) => {}
                        Err(err) => return Poll::Ready(Err(ProxyError::Upstream(Box::new(err)))),
                    }
                    let read = match stream.poll_read_ready(cx) {
                        Poll::Pending => {
                            self.state = State::Reading {
                                stream,
                                buf,
                                interim,
                            };
                            return self.wait(cx);
                        }
                        Poll::Ready(Err(err)) => Err(err),
                        Poll::Ready(Ok(())) => {
                            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                                buf.reserve(READ_SIZE);
                            }
                            read_available(&stream, &mut buf)
                        }
                    };
                    let err = match read {
                        Ok(0) => Unanswered::Closed,
                        Err(err) if err.kind() != io::ErrorKind::WouldBlock => Unanswered::Io(err),
                        _ => {
                            self.state = State::Reading {
                                stream,
                                buf,
                                interim,
                            };
                            continue;
                        }
                    };
                    if !buf.is_empty() || interim > 0 {
                        // Part of an answer came: never sent again.
                        let err = match err {
                            Unanswered::Closed => Box::new(H1Error::Incomplete) as _,
                            Unanswered::Io(err) => Box::new(err) as _,
                        };
                        return Poll::Ready(Err(ProxyError::Upstream(err)));
                    }
                    if !self.retry(false) {
                        return Poll::Ready(Err(ProxyError::Upstream(Box::new(err))));
                    }
                    tracing::debug!(error = %err, "upstream closed unanswered: retried");
                }
                State::Done => return Poll::Pending,
            }
        }
    }
}

/// A response body read from the own HTTP/1.1 connection, which it owns until the body
/// ends: then the connection goes back to the pool when it may carry another request.
///
/// While it waits for the upstream it holds no buffer: an idle event stream costs its
/// socket and this struct, not 8 KiB of read buffer.
pub(crate) struct H1Body {
    stream: Option<TcpStream>,
    buf: BytesMut,
    decoder: BodyDecoder,
    keep_alive: bool,
    pool: Arc<Pool>,
    /// How much the next read asks for: grows while reads fill the buffer.
    read_size: usize,
    /// A failure found, reported at the next poll: the server first writes out the bytes
    /// it was given before it aborts the transfer, so the client sees how far it got.
    failed: Option<H1BodyError>,
}

impl fmt::Debug for H1Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H1Body")
            .field("open", &self.stream.is_some())
            .field("buffered", &self.buf.len())
            .field("decoder", &self.decoder)
            .finish()
    }
}

/// The upstream's response body failed; the client's transfer is aborted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1BodyError {
    #[error(transparent)]
    Framing(#[from] H1Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl H1Body {
    /// The body is complete: the connection is pooled when nothing but this message came
    /// on it and it may stay open; otherwise closed.
    fn finish(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.pool.put(stream, self.read_size);
            }
        }
        self.buf = BytesMut::new();
    }

    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        err: H1BodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        self.stream = None;
        self.buf = BytesMut::new();
        self.failed = Some(err);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        if let Some(err) = self.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(err) => return self.fail(cx, err.into()),
            }
            let Some(stream) = &self.stream else {
                // Polled again after its failure was reported.
                return Poll::Ready(Some(Err(H1Error::Incomplete.into())));
            };
            match stream.poll_read_ready(cx) {
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // Idle: give the buffer back rather than hold it while waiting.
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(err)) => return self.fail(cx, err.into()),
                Poll::Ready(Ok(())) => {}
            }
            if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
                self.buf.reserve(self.read_size);
            }
            let spare = self.buf.capacity() - self.buf.len();
            match read_available(stream, &mut self.buf) {
                // A read that filled the buffer: a large body is flowing, read more at once
                // (as hyper's adaptive read strategy does), up to MAX_READ_SIZE.
                Ok(n) if n == spare && self.read_size < MAX_READ_SIZE => self.read_size *= 2,
                // Small reads again (an event stream after a download): back down, so that
                // each event does not reserve a large buffer.
                Ok(n) if n < self.read_size / 4 && self.read_size > READ_SIZE => {
                    self.read_size /= 2;
                }
                Ok(0) => {
                    self.stream = None;
                    return match self.decoder.eof() {
                        Ok(()) => {
                            self.buf = BytesMut::new();
                            Poll::Ready(None)
                        }
                        Err(err) => self.fail(cx, err.into()),
                    };
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return self.fail(cx, err.into()),
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Reads what the socket holds into `buf`'s spare capacity (`WouldBlock` when nothing).
///
/// A read that leaves room in the buffer has drained the socket, so the socket's readiness
/// is cleared then, as tokio's own `poll_read` clears it on epoll (`PollEvented::poll_read`);
/// `try_read_buf` alone keeps it. The pool's check of an idle connection and the wait for
/// the next response then cost no system call, rather than a read that could only return
/// `EAGAIN`.
fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut drained = 0;
    let result = stream.try_io(Interest::READABLE, || match stream.try_read_buf(buf) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncWriteExt, net::TcpListener};

    #[tokio::test]
    async fn a_read_that_drains_the_socket_clears_its_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        upstream.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        stream.readable().await.unwrap();
        assert_eq!(read_available(&stream, &mut buf).unwrap(), 17);
        // The pool's check of an idle connection now reads nothing: readiness is clear.
        let waited = tokio::time::timeout(Duration::from_millis(50), stream.readable()).await;
        assert!(
            waited.is_err(),
            "readiness left set after a read that drained the socket"
        );
        // The upstream closing still wakes it.
        drop(upstream);
        stream.readable().await.unwrap();
        assert_eq!(read_available(&stream, &mut buf).unwrap(), 0);
    }
}
