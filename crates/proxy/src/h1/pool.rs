//! Idle upstream connections, kept per thread.
//!
//! The pool is sharded by thread: with [`PerCoreServer`]'s one runtime per core, a
//! connection is taken and given back on the runtime whose reactor it is registered with,
//! and the lock is never contended. (hyper-util's pool is one mutex for all cores, and
//! its connections are driven by their own tasks behind a channel.)
//!
//! [`PerCoreServer`]: https://docs.rs/kestra-edge-server

use std::{
    cell::Cell,
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Duration,
};
use tokio::{net::TcpStream, time::Instant};

/// Idle keep-alive connections to one upstream.
#[derive(Debug)]
pub(crate) struct Pool {
    shards: Box<[Mutex<Shard>]>,
    idle_timeout: Duration,
    max_idle: usize,
}

#[derive(Debug, Default)]
struct Shard {
    /// Oldest first; taken from the back (the most recently used is the most likely alive).
    idle: VecDeque<Idle>,
    /// Whether a task closes this shard's connections as they pass the idle timeout.
    reaping: bool,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
    /// The read size the connection's last body grew to, kept for its next one.
    read_size: usize,
}

thread_local! {
    /// This thread's shard, the same for every pool.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn shard_index() -> usize {
    SHARD.with(|shard| match shard.get() {
        Some(index) => index,
        None => {
            let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
            shard.set(Some(index));
            index
        }
    })
}

impl Pool {
    /// A pool whose connections close after `idle_timeout` unused; at most `max_idle` are
    /// kept per thread.
    pub(crate) fn new(idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let shards = (0..threads * 2).map(|_| Mutex::default()).collect();
        Arc::new(Self {
            shards,
            idle_timeout,
            max_idle,
        })
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[index % self.shards.len()];
        // A panic while holding the lock leaves only a list of sockets behind: still valid.
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open, if any.
    ///
    /// A connection the upstream closed while idle has a pending end of file: the reactor
    /// marked it readable, so the check reads it (one system call) and drops it. A quiet one
    /// costs no system call at all.
    pub(crate) fn take(&self) -> Option<(TcpStream, usize)> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut shard = self.shard(shard_index());
            loop {
                let Some(idle) = shard.idle.pop_back() else {
                    break None;
                };
                if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                    // Everything older has expired as well.
                    stale.push(idle);
                    stale.extend(shard.idle.drain(..));
                    break None;
                }
                if quiet(&idle.stream) {
                    break Some((idle.stream, idle.read_size));
                }
                stale.push(idle);
            }
        };
        // Closed outside the lock.
        drop(stale);
        found
    }

    /// Keeps `stream` for the next request, with the read size its last body grew to.
    pub(crate) fn put(self: &Arc<Self>, stream: TcpStream, read_size: usize) {
        if self.max_idle == 0 {
            return;
        }
        let index = shard_index();
        let (evicted, reap) = {
            let mut shard = self.shard(index);
            let evicted = if shard.idle.len() >= self.max_idle {
                shard.idle.pop_front()
            } else {
                None
            };
            shard.idle.push_back(Idle {
                stream,
                since: Instant::now(),
                read_size,
            });
            let reap = !shard.reaping;
            shard.reaping = true;
            (evicted, reap)
        };
        drop(evicted);
        if reap {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(reap_shard(Arc::downgrade(self), index));
                }
                Err(_) => self.shard(index).reaping = false,
            }
        }
    }

    /// Idle connections in this thread's shard.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.shard(shard_index()).idle.len()
    }
}

/// Whether an idle connection has nothing to read: no end of file, no reset, no bytes the
/// upstream should not have sent.
fn quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Closes a shard's connections as they pass the idle timeout; ends when the shard is
/// empty (the next `put` starts another) or the pool is gone.
async fn reap_shard(pool: Weak<Pool>, index: usize) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            let mut expired = Vec::new();
            let next = {
                let mut shard = pool.shard(index);
                while shard.idle.front().is_some_and(|idle| {
                    now.saturating_duration_since(idle.since) >= pool.idle_timeout
                }) {
                    expired.extend(shard.idle.pop_front());
                }
                match shard.idle.front() {
                    Some(idle) => Some(idle.since + pool.idle_timeout),
                    None => {
                        shard.reaping = false;
                        None
                    }
                }
            };
            drop(expired);
            next
        };
        match next {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncWriteExt, net::TcpListener};

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn connections_come_back_newest_first_and_closed_ones_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(Duration::from_secs(60), 8);
        let (a, a_server) = pair(&listener).await;
        let (b, mut b_server) = pair(&listener).await;
        let (a_port, b_port) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        pool.put(a, 8192);
        pool.put(b, 65536);
        // The upstream closes b: it is dropped, and a, older but open, is taken.
        b_server.shutdown().await.unwrap();
        drop(b_server);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (taken, read_size) = pool.take().unwrap();
        assert_eq!(
            (taken.local_addr().unwrap(), read_size),
            (a_port, 8192),
            "b was closed: {b_port}"
        );
        drop(a_server);
        assert!(pool.take().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_after_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(Duration::from_millis(100), 8);
        let (a, _a_server) = pair(&listener).await;
        pool.put(a, 8192);
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(pool.idle(), 0, "the reaper closed it");
        let (b, _b_server) = pair(&listener).await;
        pool.put(b, 8192);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take().is_some(), "not yet expired");
    }

    #[tokio::test]
    async fn at_most_max_idle_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(Duration::from_secs(60), 2);
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (client, server) = pair(&listener).await;
            servers.push(server);
            pool.put(client, 8192);
        }
        assert_eq!(pool.idle(), 2);
    }
}
