//! [`Completion`]: the answer to a write handed to the group committer, which a thread can
//! block on ([`Completion::wait`]) and a task can `.await` — so request handlers on the async
//! runtime wait for durability without parking an OS thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use crate::{Error, Result};

type Value = Result<Vec<i64>>;

#[derive(Default)]
struct State {
    value: Option<Value>,
    waker: Option<Waker>,
    /// A thread is blocked in `wait` (so completing must signal the condvar: a futex wake is
    /// a syscall, not worth paying for async waiters).
    parked: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    ready: Condvar,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outcome of a submitted write: the ids it created once it is durable, or its error.
#[must_use = "a write is acknowledged only when its completion says so"]
pub struct Completion(Arc<Slot>);

/// The committer's end of a [`Completion`]. Dropped without an answer, it answers with an
/// error, so no waiter can hang on a write that will never commit.
pub(crate) struct Completer(Option<Arc<Slot>>);

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

impl Completion {
    /// A completion and the committer's end of it.
    pub(crate) fn pair() -> (Completion, Completer) {
        let slot = Arc::new(Slot::default());
        (Completion(slot.clone()), Completer(Some(slot)))
    }

    /// A completion that is already answered (backends that write synchronously).
    pub fn ready(value: Value) -> Completion {
        let (c, done) = Completion::pair();
        done.complete(value);
        c
    }

    /// Blocks until the write is durable (or failed). For threads, never async tasks.
    pub fn wait(self) -> Value {
        let mut s = self.0.lock();
        loop {
            if let Some(v) = s.value.take() {
                return v;
            }
            s.parked = true;
            s = self.0.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Future for Completion {
    type Output = Value;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Value> {
        let mut s = self.0.lock();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Completer {
    pub(crate) fn complete(mut self, value: Value) {
        if let Some(slot) = self.0.take() {
            let (waker, parked) = {
                let mut s = slot.lock();
                s.value = Some(value);
                (s.waker.take(), s.parked)
            };
            if parked {
                slot.ready.notify_one();
            }
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if self.0.is_some() {
            Completer(self.0.take()).complete(Err(Error::Backend(
                "the write was abandoned before it committed".into(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_and_a_task_both_get_the_answer() {
        let (c, done) = Completion::pair();
        let t = std::thread::spawn(move || c.wait());
        done.complete(Ok(vec![7]));
        assert_eq!(t.join().unwrap().unwrap(), vec![7]);

        let (c, done) = Completion::pair();
        std::thread::spawn(move || done.complete(Ok(vec![8])));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(c).unwrap(), vec![8]);
    }

    #[test]
    fn an_abandoned_write_is_an_error_not_a_hang() {
        let (c, done) = Completion::pair();
        drop(done);
        assert!(c.wait().is_err());
    }
}
