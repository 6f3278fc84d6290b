//! One connection's life: the transport's handshake, HTTP on the negotiated version, the
//! first-request deadline, the idle limit and graceful shutdown.

use crate::{
    body::IncomingBody,
    h1::{
        self,
        conn::{Closing, Ended, Limits},
    },
    transport::{Accepted, Protocol, TlsConnection, Transport},
    LocalAddr, PeerAddr, Settings,
};
use futures_util::{
    future::{self, FutureExt},
    task::AtomicWaker,
};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    error::Error as StdError,
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::{
    net::TcpStream,
    sync::{watch, Notify},
    time::{sleep, sleep_until, Instant},
};
use tower::Service;

/// How many quiet checks in a row make a connection idle: it is closed between 1 and 1¼ idle
/// timeouts after its last stream ended, without a clock read per request.
const IDLE_CHECKS: u32 = 4;

/// Rapid reset (CVE-2023-44487): a connection on which at least this many requests were
/// abandoned by the client (reset or closed before their response ended), and more than half of
/// all its requests, is closed with GOAWAY. hyper's own limit counts only streams reset before
/// they were handed to the service, which a client beats by waiting a round trip before each
/// reset; Envoy closes on the same ratio (`premature_reset`).
const ABANDONED_MIN: u64 = 200;

/// How long an abusive connection's open streams may run after its GOAWAY before it is cut.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// The three ways of serving HTTP, built once from the settings.
#[derive(Debug)]
pub(crate) struct Builders {
    sniff: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// Applies the HTTP/1 settings to hyper's builder or to hyper-util's auto builder's half.
macro_rules! configure_http1 {
    ($builder:expr, $settings:expr) => {{
        let settings: &Settings = $settings;
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes)
            .keep_alive(true);
        if settings.max_headers != crate::DEFAULT_MAX_HEADERS {
            // Moves hyper's header array from the stack to the heap: only when asked.
            $builder.max_headers(settings.max_headers);
        }
    }};
}

/// Applies the HTTP/2 settings likewise.
macro_rules! configure_http2 {
    ($builder:expr, $settings:expr) => {{
        let settings: &Settings = $settings;
        $builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.h2_max_concurrent_streams)
            .keep_alive_interval(settings.h2_keep_alive_interval)
            .keep_alive_timeout(settings.h2_keep_alive_timeout)
            // RFC 8441: HTTP/2 clients may open WebSockets with extended CONNECT.
            .enable_connect_protocol();
    }};
}

impl Builders {
    pub(crate) fn new(settings: &Settings) -> Self {
        let mut sniff = auto::Builder::new(TokioExecutor::new());
        configure_http1!(sniff.http1(), settings);
        configure_http2!(sniff.http2(), settings);
        let mut http1 = http1::Builder::new();
        configure_http1!(http1, settings);
        // The head limit by itself, not only by the read buffer's size: a connection the own
        // codec hands over comes with its bytes already read, maybe all at once.
        http1.max_header_size(settings.max_header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        configure_http2!(http2, settings);
        Self {
            sniff,
            http1,
            http2,
        }
    }
}

/// What a connection's requests have done so far, shared with its watchdog.
#[derive(Debug, Default)]
struct ConnState {
    requests: AtomicU64,
    /// Requests whose response has not ended (an open SSE stream counts).
    active: AtomicUsize,
    /// Requests the client gave up before their response ended.
    abandoned: AtomicU64,
    /// Woken once when the abandoned requests pass the rapid-reset limit.
    abuse: Notify,
    flagged: AtomicBool,
}

impl ConnState {
    /// Counts an abandoned request; wakes the watchdog when the connection looks like a
    /// rapid-reset attack.
    fn abandoned(&self) {
        let abandoned = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        if abandoned >= ABANDONED_MIN
            && abandoned * 2 > requests
            && !self.flagged.swap(true, Ordering::Relaxed)
        {
            self.abuse.notify_one();
        }
    }
}

/// Everything one connection task needs.
pub(crate) struct Connection<T, S> {
    pub(crate) transport: T,
    pub(crate) tcp: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) service: S,
    pub(crate) builders: Arc<Builders>,
    pub(crate) settings: Settings,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl<T, S, B> Connection<T, S>
where
    T: Transport,
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Runs the connection to its end; true when it ended on a request head over the limits
    /// (answered 431 or 414 by hyper).
    ///
    /// The handshake and the watched connection are two futures, one after the other in one
    /// enum ([`FutureExt::then`]): the task is as large as the larger of the two. One `async
    /// fn` for both kept a slot for every value it moved along (2,680 bytes for the
    /// gateway's task, where the watched connection needs about 1,000), and a quiet
    /// keep-alive connection or SSE stream holds its task for as long as it is open.
    pub(crate) fn run(self) -> impl Future<Output = bool> + Send {
        self.accept().then(|open| match open {
            Some(open) => future::Either::Left(Self::serve(open)),
            None => future::Either::Right(future::ready(false)),
        })
    }

    /// The handshake (TLS, or none), under the header timeout; `None` when the connection
    /// ends there.
    fn accept(self) -> impl Future<Output = Option<Open<T::Io, S>>> + Send {
        let Self {
            transport,
            tcp,
            peer,
            local,
            service,
            builders,
            settings,
            mut shutdown,
        } = self;
        // The handshake and the first request share the header timeout (slowloris, TLS
        // stalls, hyper-util's protocol sniffing, which has no deadline of its own).
        let deadline = Instant::now() + settings.header_read_timeout;
        async move {
            let accepted = tokio::select! {
                accepted = tokio::time::timeout_at(deadline, transport.accept(tcp, peer)) => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return None,
            };
            let accepted = match accepted {
                Ok(Ok(Some(accepted))) => accepted,
                Ok(Ok(None)) => return None,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%peer, "handshake not done within the header timeout: closed");
                    return None;
                }
            };
            let state = Arc::new(ConnState::default());
            let service = ConnectionService {
                inner: service,
                peer: PeerAddr(peer),
                local: LocalAddr(local),
                tls: accepted.tls,
                state: state.clone(),
            };
            let watch = Watch {
                state,
                deadline,
                idle: settings.h2_idle_timeout,
                shutdown,
                peer,
            };
            Some(Open {
                accepted,
                service,
                watch,
                builders,
                settings,
            })
        }
    }

    /// Serves HTTP on the connection, watched, to its end: the own codec on plain TCP, else
    /// hyper. The own codec's watched future is built here rather than awaited in an `async
    /// fn` (which would keep a slot for each value moved along).
    fn serve(open: Open<T::Io, S>) -> impl Future<Output = bool> + Send {
        use future::Either::{Left, Right};
        let Open {
            accepted,
            service,
            watch,
            builders,
            settings,
        } = open;
        let io = match (accepted.protocol, settings.own_http1) {
            (Protocol::Sniff, true) => match T::into_tcp(accepted.io) {
                Ok(tcp) => {
                    let limits = Limits {
                        max_headers: settings.max_headers,
                        max_header_bytes: settings.max_header_bytes,
                        header_read_timeout: settings.header_read_timeout,
                    };
                    let conn = own_connection(tcp, service, builders, limits, watch.deadline);
                    return Left(watch.drive(conn));
                }
                Err(io) => io,
            },
            _ => accepted.io,
        };
        let io = TokioIo::new(io);
        let service = TowerToHyperService::new(service);
        // hyper's connections borrow their builder: the future owns it, and is boxed (hyper's
        // connection inside it), so that it does not make every connection's task larger.
        Right(Box::pin(async move {
            match accepted.protocol {
                Protocol::Sniff => {
                    let conn = builders.sniff.serve_connection_with_upgrades(io, service);
                    watch.drive(conn).await
                }
                Protocol::Http1 => {
                    let conn = builders.http1.serve_connection(io, service).with_upgrades();
                    watch.drive(conn).await
                }
                Protocol::Http2 => {
                    let conn = builders.http2.serve_connection(io, service);
                    watch.drive(conn).await
                }
            }
        }))
    }
}

/// A connection past its handshake, ready to serve HTTP.
struct Open<Io, S> {
    accepted: Accepted<Io>,
    service: ConnectionService<S>,
    watch: Watch,
    builders: Arc<Builders>,
    settings: Settings,
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A plain-TCP connection served by the own HTTP/1.1 codec, then by hyper if the codec
/// hands it over. Its state is boxed once, so that the connection's task stays small whatever
/// the service's response body is (a quiet SSE stream holds one allocation of it).
struct OwnConnection<F> {
    serving: Pin<Box<F>>,
    closing: Arc<Closing>,
}

/// Serves `tcp` with the own HTTP/1.1 codec, and with hyper from the first request the codec
/// hands over.
fn own_connection<S, B>(
    tcp: TcpStream,
    mut service: ConnectionService<S>,
    builders: Arc<Builders>,
    limits: Limits,
    first: Instant,
) -> OwnConnection<impl Future<Output = Result<(), BoxError>> + Send>
where
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let closing = Arc::new(Closing::default());
    let signal = closing.clone();
    let serving = async move {
        let ended = h1::conn::serve(tcp, &mut service, limits, &signal, first).await;
        let Ended::Hyper { io, h2 } = ended else {
            return Ok(());
        };
        let io = TokioIo::new(io);
        let service = TowerToHyperService::new(service);
        // Boxed: only connections handed over pay for hyper's connection state.
        if h2 {
            let conn = Box::pin(builders.http2.serve_connection(io, service));
            finish_gracefully(conn, &signal).await
        } else {
            let conn = Box::pin(builders.http1.serve_connection(io, service).with_upgrades());
            finish_gracefully(conn, &signal).await
        }
    };
    OwnConnection {
        serving: Box::pin(serving),
        closing,
    }
}

/// Drives a hyper connection, asking it to finish when `closing` says so.
async fn finish_gracefully<C>(mut conn: Pin<Box<C>>, closing: &Closing) -> Result<(), BoxError>
where
    C: GracefulConnection,
    C::Error: Into<BoxError>,
{
    if !closing.is_closing() {
        tokio::select! {
            ended = conn.as_mut() => return ended.map_err(Into::into),
            () = closing.closed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(Into::into)
}

impl<F: Future<Output = Result<(), BoxError>>> Future for OwnConnection<F> {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.serving.as_mut().poll(cx)
    }
}

impl<F: Future<Output = Result<(), BoxError>>> GracefulConnection for OwnConnection<F> {
    type Error = BoxError;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.closing.close();
    }
    fn head_too_large(err: &BoxError) -> bool {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse_too_large)
    }
}

/// A hyper connection that can be asked to finish gracefully.
trait GracefulConnection: Future<Output = Result<(), Self::Error>> {
    type Error: fmt::Display;
    fn graceful_shutdown(self: Pin<&mut Self>);
    /// Whether the connection ended on a request head over the limits, which hyper answered
    /// itself (431, or 414 for the request line).
    fn head_too_large(err: &Self::Error) -> bool;
}

impl<I, S, E, B> GracefulConnection for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Error = Box<dyn StdError + Send + Sync>;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
    fn head_too_large(err: &Self::Error) -> bool {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse_too_large)
    }
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Error = hyper::Error;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
    fn head_too_large(err: &hyper::Error) -> bool {
        err.is_parse_too_large()
    }
}

impl<I, S, E, B> GracefulConnection for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Error = hyper::Error;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
    fn head_too_large(err: &hyper::Error) -> bool {
        err.is_parse_too_large()
    }
}

/// Watches a running connection: first-request deadline, idle limit, shutdown.
struct Watch {
    state: Arc<ConnState>,
    deadline: Instant,
    idle: Option<Duration>,
    shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
}

/// What woke a watched connection, other than the connection itself.
enum Signal {
    Abuse,
    AbuseGraceOver,
    FirstDeadline,
    Shutdown,
    IdleCheck,
}

impl Watch {
    /// Runs `conn` to its end; true when it ended on a request head over the limits.
    async fn drive<C: GracefulConnection>(mut self, conn: C) -> bool {
        let peer = self.peer;
        tokio::pin!(conn);
        let first = sleep_until(self.deadline);
        let check = self.idle.map(|idle| idle / IDLE_CHECKS);
        let next_check = sleep(check.unwrap_or(Duration::MAX / 2));
        tokio::pin!(first, next_check);
        let mut waiting_first = true;
        let mut closing = false;
        let (mut quiet, mut seen) = (0, 0);
        if *self.shutdown.borrow_and_update() {
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
        let abuse_deadline = sleep(Duration::MAX / 2);
        tokio::pin!(abuse_deadline);
        let mut abusive = false;
        // The signals are polled only when one of them woke the task, not on each of the
        // connection's own wake-ups (several per request).
        let woken = Arc::new(Woken::default());
        let ended = loop {
            let signal = {
                let signals = std::pin::pin!(async {
                    tokio::select! {
                        () = self.state.abuse.notified(), if !abusive => Signal::Abuse,
                        () = &mut abuse_deadline, if abusive => Signal::AbuseGraceOver,
                        () = &mut first, if waiting_first => Signal::FirstDeadline,
                        _ = self.shutdown.changed(), if !closing => Signal::Shutdown,
                        () = &mut next_check, if check.is_some() && !closing => Signal::IdleCheck,
                        else => std::future::pending().await,
                    }
                });
                tokio::select! {
                    biased;
                    ended = &mut conn => break ended,
                    signal = OnlyWhenWoken::new(&woken, signals) => signal,
                }
            };
            match signal {
                Signal::Abuse => {
                    tracing::warn!(
                        %peer,
                        requests = self.state.requests.load(Ordering::Relaxed),
                        abandoned = self.state.abandoned.load(Ordering::Relaxed),
                        "client abandons most of its requests (rapid reset): GOAWAY"
                    );
                    abusive = true;
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    abuse_deadline.as_mut().reset(Instant::now() + ABUSE_GRACE);
                }
                Signal::AbuseGraceOver => {
                    tracing::debug!(%peer, "abusive connection cut");
                    return false;
                }
                Signal::FirstDeadline => {
                    waiting_first = false;
                    if self.state.requests.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(%peer, "no request within the header timeout: closed");
                        return false;
                    }
                }
                Signal::Shutdown => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Signal::IdleCheck => {
                    let requests = self.state.requests.load(Ordering::Relaxed);
                    if self.state.active.load(Ordering::Relaxed) == 0 && requests == seen {
                        quiet += 1;
                    } else {
                        (quiet, seen) = (0, requests);
                    }
                    if quiet >= IDLE_CHECKS {
                        tracing::debug!(%peer, "idle connection: closing gracefully");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    if let Some(check) = check {
                        next_check.as_mut().reset(Instant::now() + check);
                    }
                }
            }
        };
        if let Err(err) = ended {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
            return C::head_too_large(&err);
        }
        false
    }
}

/// Whether a future's own wakers fired since it was last polled, and the task to wake when
/// they do.
#[derive(Debug, Default)]
struct Woken {
    since_poll: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.since_poll.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls `future` only when its own wakers fired (and once at first), with a waker of its
/// own: the task's other wake-ups skip it, as `FuturesUnordered` skips its quiet futures.
struct OnlyWhenWoken<'a, F> {
    woken: &'a Arc<Woken>,
    future: Pin<&'a mut F>,
}

impl<'a, F: Future> OnlyWhenWoken<'a, F> {
    fn new(woken: &'a Arc<Woken>, future: Pin<&'a mut F>) -> Self {
        // A new future is polled once, to register its wakers.
        woken.since_poll.store(true, Ordering::Release);
        Self { woken, future }
    }
}

impl<F: Future> Future for OnlyWhenWoken<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.woken.task.register(cx.waker());
        if !self.woken.since_poll.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(Arc::clone(self.woken));
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

/// Inserts [`PeerAddr`], [`LocalAddr`] and [`TlsConnection`] into every request of one
/// connection, and counts its requests and open responses for the idle limit.
#[derive(Debug, Clone)]
struct ConnectionService<S> {
    inner: S,
    peer: PeerAddr,
    local: LocalAddr,
    tls: bool,
    state: Arc<ConnState>,
}

impl<S, B, ResBody> Service<Request<B>> for ConnectionService<S>
where
    B: Into<IncomingBody>,
    S: Service<Request<IncomingBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ActiveBody<ResBody>>;
    type Error = S::Error;
    type Future = ConnectionFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        self.state.active.fetch_add(1, Ordering::Relaxed);
        let extensions = req.extensions_mut();
        extensions.insert(self.peer);
        extensions.insert(self.local);
        if self.tls {
            extensions.insert(TlsConnection);
        }
        ConnectionFuture {
            inner: self.inner.call(req.map(Into::into)),
            active: Some(Active {
                state: self.state.clone(),
                ended: false,
            }),
        }
    }
}

/// One open request of a connection; dropped when its response ends or is abandoned.
#[derive(Debug)]
struct Active {
    state: Arc<ConnState>,
    /// Whether the response was sent to its end.
    ended: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        if !self.ended {
            self.state.abandoned();
        }
    }
}

pin_project! {
    /// Response future of [`ConnectionService`].
    struct ConnectionFuture<F> {
        #[pin]
        inner: F,
        active: Option<Active>,
    }
}

impl<F, ResBody, E> Future for ConnectionFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ActiveBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut active = this.active.take();
        Poll::Ready(Ok(response.map(|inner| {
            if inner.is_end_stream() {
                // hyper never polls an empty body.
                if let Some(active) = &mut active {
                    active.ended = true;
                }
            }
            ActiveBody { inner, active }
        })))
    }
}

pin_project! {
    /// A response body that keeps its connection counted as busy until it ends.
    #[derive(Debug)]
    pub(crate) struct ActiveBody<B> {
        #[pin]
        inner: B,
        active: Option<Active>,
    }
}

impl<B> ActiveBody<B> {
    /// Counts the response as sent whole although its body is not read to its end (a
    /// `HEAD` answer, or a body that reached its `Content-Length`).
    pub(crate) fn finish(self: Pin<&mut Self>) {
        if let Some(active) = self.project().active {
            active.ended = true;
        }
    }
}

impl<B: Body> Body for ActiveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => inner.is_end_stream(),
        };
        if ended {
            if let Some(active) = this.active {
                active.ended = true;
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PlainTcp;
    use tokio::net::TcpListener;

    type Answer = std::future::Ready<Result<Response<String>, Infallible>>;
    type TestService = tower::util::ServiceFn<fn(Request<IncomingBody>) -> Answer>;

    fn answer(_: Request<IncomingBody>) -> Answer {
        std::future::ready(Ok(Response::new(String::new())))
    }

    async fn connection() -> (Connection<PlainTcp, TestService>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let settings = Settings::default();
        let service: TestService = tower::service_fn(answer as fn(_) -> _);
        let (_stop, shutdown) = watch::channel(false);
        let connection = Connection {
            transport: PlainTcp,
            tcp,
            peer,
            local: addr,
            service,
            builders: Arc::new(Builders::new(&settings)),
            settings,
            shutdown,
        };
        (connection, client)
    }

    /// A quiet keep-alive connection or SSE stream holds its task while open: the task is
    /// the larger of its two phases, not both (as one `async fn` made it).
    #[tokio::test]
    async fn the_task_is_as_large_as_its_larger_phase() {
        let (first, _client) = connection().await;
        let accepting = std::mem::size_of_val(&first.accept());
        let (second, _client) = connection().await;
        let open = Open {
            accepted: Accepted {
                io: second.tcp,
                protocol: Protocol::Sniff,
                tls: false,
            },
            service: ConnectionService {
                inner: second.service,
                peer: PeerAddr(second.peer),
                local: LocalAddr(second.local),
                tls: false,
                state: Arc::default(),
            },
            watch: Watch {
                state: Arc::default(),
                deadline: Instant::now(),
                idle: None,
                shutdown: second.shutdown,
                peer: second.peer,
            },
            builders: second.builders,
            settings: second.settings,
        };
        let serving = std::mem::size_of_val(&Connection::<PlainTcp, TestService>::serve(open));
        let (third, _client) = connection().await;
        let task = std::mem::size_of_val(&third.run());
        assert!(
            task <= accepting.max(serving) + 32,
            "task {task} bytes, phases {accepting} and {serving}"
        );
    }
}
