//! Upgraded connections: bytes copied both ways, with limits, counted, closable.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::{
    any::Any,
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{watch, Notify},
    time::Instant,
};

/// The open tunnels of a stack: how many, and a way to close them all (at the end of a
/// graceful shutdown).
#[derive(Debug, Clone)]
pub struct Tunnels {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    open: AtomicUsize,
    changed: Notify,
    close: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self {
            inner: Arc::new(Registry {
                open: AtomicUsize::new(0),
                changed: Notify::new(),
                close: watch::channel(false).0,
            }),
        }
    }
}

impl Tunnels {
    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Closes every open tunnel (and any opened later).
    pub fn close_all(&self) {
        self.inner.close.send_replace(true);
    }

    /// Waits until no tunnel is open, or until `deadline`, when the rest are closed.
    pub async fn drain(&self, deadline: Instant) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::info!(open = self.open(), "closing remaining tunnels");
                    self.close_all();
                    return;
                }
            }
        }
    }

    fn opened(&self) -> OpenTunnel {
        let open = self.inner.open.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::debug!(open_tunnels = open, "tunnel opened");
        OpenTunnel(self.inner.clone())
    }
}

/// Counts one tunnel while it lives.
struct OpenTunnel(Arc<Registry>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::AcqRel) - 1;
        tracing::debug!(open_tunnels = open, "tunnel closed");
        self.0.changed.notify_waiters();
    }
}

/// Something that must stay alive as long as the tunnel behind an upstream's `101`: an inner
/// layer puts it in that response's extensions, and the upgrade layer moves it into the
/// tunnel and drops it once both directions have ended (or a limit, an error or shutdown
/// closed the tunnel, or the upgrade never completed).
///
/// A balancer keeps a WebSocket counted as load on its replica this way: the `101`'s body,
/// where an ordinary answer keeps that count, is dropped when the tunnel starts. One guard
/// per response (a second insert replaces the first); clones share it, so it is dropped
/// with the last one. Any answer but a valid `101` is relayed or replaced as usual, and the
/// guard goes with it.
#[derive(Clone)]
pub struct TunnelGuard {
    // Only held: its drop is the point.
    _held: Arc<dyn Any + Send + Sync>,
}

impl TunnelGuard {
    /// Keeps `guard` until the tunnel ends.
    pub fn new<T: Any + Send + Sync>(guard: T) -> Self {
        Self {
            _held: Arc::new(guard),
        }
    }
}

impl fmt::Debug for TunnelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelGuard").finish_non_exhaustive()
    }
}

/// How a tunnel ended: what it carried each way and how long it lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEnd {
    /// Bytes read from the client and passed on.
    pub from_client: u64,
    /// Bytes read from the upstream (the destination) and passed on.
    pub from_upstream: u64,
    /// From the start of the copy to its end.
    pub duration: Duration,
    /// Why it ended: `finished` (both directions closed), `error`, `idle`, `lifetime` or
    /// `shutdown`.
    pub reason: &'static str,
}

/// Told how a tunnel ended: an access log writes its line so. Put one in a request's
/// extensions as [`ObserveTunnel`], and the upgrade layer hands it to that request's
/// tunnel; it is dropped without a call when no tunnel started.
pub trait TunnelObserver: Send + Sync {
    /// The tunnel ended so.
    fn ended(&self, end: &TunnelEnd);
}

/// A request extension: the [`TunnelObserver`] of the tunnel this request may open.
#[derive(Clone)]
pub struct ObserveTunnel(pub Arc<dyn TunnelObserver>);

impl fmt::Debug for ObserveTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveTunnel").finish_non_exhaustive()
    }
}

/// Limits of every tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelLimits {
    pub(crate) idle_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
}

/// Waits for both sides to finish switching protocols, then copies bytes both ways until
/// both directions are done, a side fails, or a limit or shutdown closes the tunnel.
///
/// A FIN from one side is passed on and the other direction drains
/// (`copy_bidirectional` shuts down the writer when its reader ends); a reset or error on
/// either side closes both. `guard` is dropped on return, whichever way the tunnel ended.
pub(crate) async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    limits: TunnelLimits,
    tunnels: Tunnels,
    guard: Option<TunnelGuard>,
    observer: Option<ObserveTunnel>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let end = tunnels
        .splice(
            TokioIo::new(client),
            TokioIo::new(upstream),
            limits.idle_timeout,
            limits.max_lifetime,
        )
        .await;
    drop(guard);
    if let Some(observer) = observer {
        observer.0.ended(&end);
    }
}

impl Tunnels {
    /// Copies bytes both ways between two open connections with the limits of every tunnel
    /// (`idle_timeout` without a byte either way, an optional `max_lifetime`, shutdown),
    /// counted in [`open`](Self::open) while it runs: the hook a forward proxy's `CONNECT`
    /// tunnels use. A FIN is passed on while the other direction drains; an error closes both.
    /// Returns what the tunnel carried, however it ended.
    pub async fn splice<A, B>(
        &self,
        client: A,
        upstream: B,
        idle_timeout: Duration,
        max_lifetime: Option<Duration>,
    ) -> TunnelEnd
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let limits = TunnelLimits {
            idle_timeout,
            max_lifetime,
        };
        pump(client, upstream, limits, self).await
    }
}

async fn pump<A, B>(client: A, upstream: B, limits: TunnelLimits, tunnels: &Tunnels) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _open = tunnels.opened();
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Watched::new(client, started, &activity);
    let mut upstream = Watched::new(upstream, started, &activity);
    let mut close = tunnels.inner.close.subscribe();
    let lifetime = async {
        match limits.max_lifetime {
            Some(cap) => tokio::time::sleep(cap).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => {
                tracing::debug!(bytes_up = up, bytes_down = down, "tunnel finished");
                "finished"
            }
            Err(err) => {
                tracing::debug!(error = %err, "tunnel failed");
                "error"
            }
        },
        () = idle(started, &activity, limits.idle_timeout) => "idle",
        () = lifetime => "lifetime",
        _ = close.wait_for(|closed| *closed) => "shutdown",
    };
    let end = TunnelEnd {
        from_client: client.read,
        from_upstream: upstream.read,
        duration: started.elapsed(),
        reason,
    };
    tracing::debug!(
        reason,
        duration_ms = u64::try_from(end.duration.as_millis()).unwrap_or(u64::MAX),
        "tunnel ended"
    );
    end
}

/// Resolves once no byte has moved either way for `limit`.
async fn idle(started: Instant, activity: &AtomicU64, limit: Duration) {
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + limit;
        if deadline <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An upgraded connection that records when bytes last moved through it.
struct Watched<T> {
    io: T,
    started: Instant,
    activity: Arc<AtomicU64>,
    /// Bytes read from `io`.
    read: u64,
}

impl<T> Watched<T> {
    fn new(io: T, started: Instant, activity: &Arc<AtomicU64>) -> Self {
        Self {
            io,
            started,
            activity: activity.clone(),
            read: 0,
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(millis, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if matches!(poll, Poll::Ready(Ok(()))) && read > 0 {
            self.read += read as u64;
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
