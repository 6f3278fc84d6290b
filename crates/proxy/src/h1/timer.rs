//! Response timers lent per thread.
//!
//! Every exchange waits for a response head under a deadline. A new tokio timer per request
//! is registered in the timer wheel at its first wait and removed when dropped, each under
//! the driver's lock. A timer that is already registered moves to a later deadline with an
//! atomic update instead, so each thread keeps the timers of finished exchanges and lends
//! them to the next ones: deadlines only grow, as requests start later.

use std::{cell::RefCell, future::Future, pin::Pin, task::Context};
use tokio::{
    runtime,
    time::{Instant, Sleep},
};

/// Spare timers kept per thread, at most: enough for the exchanges one thread has in flight
/// at once under load. Each keeps the waker of the task that last waited on it until it is
/// lent again or its deadline passes.
const KEPT: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<Timer>> = const { RefCell::new(Vec::new()) };
}

/// A response timer. It is bound to the runtime that made it, which it names (a timer whose
/// runtime has shut down panics when polled). One pointer wide.
#[derive(Debug)]
pub(crate) struct Timer(Pin<Box<Inner>>);

pin_project_lite::pin_project! {
    #[derive(Debug)]
    struct Inner {
        #[pin]
        sleep: Sleep,
        runtime: runtime::Id,
    }
}

impl Timer {
    /// A timer set to `deadline`: one of the thread's spares made by the current runtime,
    /// else a new one; `None` outside a runtime.
    pub(crate) fn take(deadline: Instant) -> Option<Self> {
        let current = runtime::Handle::try_current().ok()?.id();
        let spare = SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                loop {
                    match spare.pop() {
                        // Spares of an earlier runtime on this thread are dropped.
                        Some(timer) if timer.0.runtime != current => {}
                        found => break found,
                    }
                }
            })
            .ok()
            .flatten();
        match spare {
            Some(mut timer) => {
                timer.0.as_mut().project().sleep.reset(deadline);
                Some(timer)
            }
            None => Some(Self(Box::pin(Inner {
                sleep: tokio::time::sleep_until(deadline),
                runtime: current,
            }))),
        }
    }

    /// Whether the deadline has passed; else the task is woken when it does.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.0.as_mut().project().sleep.poll(cx).is_ready()
    }

    /// Back to the thread's spares, or dropped when there are enough.
    pub(crate) fn give(self) {
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < KEPT {
                spare.push(self);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{future::poll_fn, task::Poll, time::Duration};

    /// Whether the timer has expired, polled once.
    async fn expired(timer: &mut Timer) -> bool {
        poll_fn(|cx| Poll::Ready(timer.poll_expired(cx))).await
    }

    /// Waits until the timer expires.
    async fn expiry(timer: &mut Timer) {
        poll_fn(|cx| {
            if timer.poll_expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_timer_fires_at_its_new_deadline() {
        let start = Instant::now();
        let mut first = Timer::take(start + Duration::from_millis(100)).unwrap();
        let pointer = &*first.0 as *const Inner;
        assert!(!expired(&mut first).await);
        first.give();
        let mut lent = Timer::take(start + Duration::from_millis(300)).unwrap();
        assert_eq!(&*lent.0 as *const Inner, pointer, "the spare is lent again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!expired(&mut lent).await, "not at the first deadline");
        expiry(&mut lent).await;
        assert!(Instant::now() >= start + Duration::from_millis(300));
    }

    #[test]
    fn spares_of_a_runtime_that_ended_are_not_lent() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        first.block_on(async {
            Timer::take(Instant::now() + Duration::from_secs(1))
                .unwrap()
                .give();
        });
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), 1);
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        second.block_on(async {
            let mut timer = Timer::take(Instant::now() + Duration::from_millis(10)).unwrap();
            assert_eq!(SPARE.with(|spare| spare.borrow().len()), 0);
            // Polling it panics if it is the first runtime's.
            expiry(&mut timer).await;
        });
    }
}
