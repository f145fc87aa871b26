//! One waiter queued on a primitive (a parked thread or a coroutine's opaque token) and
//! the FIFO queue that holds them.
//! Invariant: a waiter leaves its queue exactly once, under the queue's mutex: popped and
//! granted by a releaser, removed by its own cancellation, or (a thread waiter whose
//! thread a fork left behind, see `fork`) dropped ungranted; never two of these.

use std::collections::VecDeque;
use std::sync::Arc;
#[cfg(not(loom))]
use std::time::Instant;

use super::fork::{self, Origin};
use super::prim::{current, AtomicU8, Ordering::*, Thread};

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
/// A granted coroutine waiter gave up (cancelled); it passes its grant on.
const CLAIMED: u8 = 2;
/// A granted coroutine waiter whose loop could not be woken; the releaser passed it on.
const REVOKED: u8 = 3;

enum Kind<T> {
    Thread(Thread, Origin),
    Task(T),
}

/// A thread or a coroutine waiting on a primitive.
pub struct Waiter<T> {
    state: AtomicU8,
    kind: Kind<T>,
}

/// What a waiter that gives up (timeout, cancellation) learns about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// It was still queued: removed, it holds nothing.
    Removed,
    /// It had been granted meanwhile: it holds the grant (a thread keeps it; a cancelled
    /// coroutine must pass it on).
    Granted,
    /// It had been granted, but its loop could not be woken and the releaser already
    /// passed the grant on: it holds nothing.
    Revoked,
}

impl<T> Waiter<T> {
    /// A waiter for the calling thread.
    pub fn thread() -> Arc<Self> {
        Arc::new(Waiter {
            state: AtomicU8::new(WAITING),
            kind: Kind::Thread(current(), Origin::here()),
        })
    }

    /// A coroutine waiter, woken by whoever receives it back in a [`Granted`].
    pub fn task(token: T) -> Arc<Self> {
        Arc::new(Waiter {
            state: AtomicU8::new(WAITING),
            kind: Kind::Task(token),
        })
    }

    /// The coroutine's token (None for a thread waiter).
    pub fn token(&self) -> Option<&T> {
        match &self.kind {
            Kind::Task(t) => Some(t),
            Kind::Thread(..) => None,
        }
    }

    /// A thread waiter whose thread does not exist in this process (a fork left it).
    fn is_gone(&self) -> bool {
        match &self.kind {
            Kind::Thread(_, origin) => origin.is_gone(),
            Kind::Task(_) => false,
        }
    }

    pub fn is_waiting(&self) -> bool {
        self.state.load(Acquire) == WAITING
    }

    /// Thread side of any waiter queue: a new thread waiter is handed to `enqueue`
    /// (true: no need to wait), then parks until granted or `deadline`; a grant that
    /// races the timeout is kept (`cancel` reports it).
    #[cfg(not(loom))]
    pub fn wait_as_thread(
        deadline: Option<Instant>,
        enqueue: impl FnOnce(&Arc<Self>) -> bool,
        cancel: impl FnOnce(&Arc<Self>) -> Cancel,
    ) -> bool {
        let w = Self::thread();
        if enqueue(&w) {
            return true;
        }
        w.park_until(deadline) || cancel(&w) == Cancel::Granted
    }

    /// Thread waiter: parks until granted or until `deadline` passes (None: forever).
    /// Returns true once granted. Spurious unparks are absorbed here.
    #[cfg(not(loom))]
    pub fn park_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            if !self.is_waiting() {
                return true;
            }
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return !self.is_waiting();
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
    }

    /// Releaser: the coroutine's loop could not be woken (it is closed). Returns true
    /// when the caller now owns the grant and must pass it on.
    pub fn revoke(&self) -> bool {
        self.state
            .compare_exchange(GRANTED, REVOKED, AcqRel, Acquire)
            .is_ok()
    }

    /// Marks a waiter popped from its queue as granted (caller holds the queue's mutex).
    fn grant(&self) {
        self.state.store(GRANTED, Release);
    }

    /// The waiter, no longer queued, gives up: who owns its grant?
    fn claim(&self) -> Cancel {
        match self
            .state
            .compare_exchange(GRANTED, CLAIMED, AcqRel, Acquire)
        {
            Ok(_) => Cancel::Granted,
            Err(REVOKED) => Cancel::Revoked,
            // Thread waiters are never revoked; a second cancel is a caller bug: be inert.
            Err(_) => Cancel::Revoked,
        }
    }

    fn unpark(&self) {
        if let Kind::Thread(t, _) = &self.kind {
            t.unpark();
        }
    }
}

/// Waiters popped and granted under a queue's mutex, to be woken after it is released.
#[must_use = "granted waiters must be woken"]
pub struct Popped<T>(Vec<Arc<Waiter<T>>>);

impl<T> Popped<T> {
    pub fn new() -> Self {
        Popped(Vec::new())
    }

    /// Unparks the threads; returns the coroutine waiters, FIFO, for the caller to wake.
    pub fn wake(self) -> Granted<T> {
        let mut tasks = Vec::new();
        for w in self.0 {
            match w.kind {
                Kind::Thread(..) => w.unpark(),
                Kind::Task(_) => tasks.push(w),
            }
        }
        Granted(tasks)
    }
}

impl<T> Default for Popped<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Coroutine waiters that were granted, FIFO: the caller wakes each through its loop.
/// Allocation-free when empty.
#[must_use = "granted coroutine waiters must be woken or their grant passed on"]
pub struct Granted<T>(pub Vec<Arc<Waiter<T>>>);

impl<T> Granted<T> {
    pub fn none() -> Self {
        Granted(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// FIFO queue of waiters; lives inside a primitive's mutex. Thread waiters that a fork
/// left behind are not counted, and are dropped at the first change after the fork.
pub struct WaitQueue<T> {
    q: VecDeque<Arc<Waiter<T>>>,
    /// The fork generation the queue last dropped left-behind waiters in.
    generation: usize,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue {
            q: VecDeque::new(),
            generation: fork::generation(),
        }
    }
}

impl<T> WaitQueue<T> {
    /// Whether no waiter that still exists is queued.
    pub fn is_empty(&self) -> bool {
        if self.generation == fork::generation() {
            return self.q.is_empty();
        }
        self.q.iter().all(|w| w.is_gone())
    }

    /// Number of queued waiters that still exist.
    pub fn len(&self) -> usize {
        if self.generation == fork::generation() {
            return self.q.len();
        }
        self.q.iter().filter(|w| !w.is_gone()).count()
    }

    /// After a fork, drops the thread waiters whose threads the child does not have.
    fn drop_gone(&mut self) {
        let now = fork::generation();
        if self.generation != now {
            self.q.retain(|w| !w.is_gone());
            self.generation = now;
        }
    }

    pub fn push(&mut self, w: Arc<Waiter<T>>) {
        self.drop_gone();
        self.q.push_back(w);
    }

    /// Pops the oldest waiter, marks it granted and adds it to `out`.
    pub fn grant_one(&mut self, out: &mut Popped<T>) -> bool {
        self.drop_gone();
        match self.q.pop_front() {
            Some(w) => {
                w.grant();
                out.0.push(w);
                true
            }
            None => false,
        }
    }

    /// Grants every queued waiter.
    pub fn grant_all(&mut self, out: &mut Popped<T>) {
        while self.grant_one(out) {}
    }

    /// A waiter gives up. Caller holds the queue's mutex, so this cannot race a grant.
    pub fn cancel(&mut self, w: &Arc<Waiter<T>>) -> Cancel {
        self.drop_gone();
        if let Some(i) = self.q.iter().rposition(|x| Arc::ptr_eq(x, w)) {
            self.q.remove(i);
            return Cancel::Removed;
        }
        w.claim()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn grant_then_cancel_is_granted_once() {
        let mut q = WaitQueue::default();
        let w = Waiter::task(7);
        q.push(w.clone());
        let mut out = Popped::new();
        assert!(q.grant_one(&mut out));
        let granted = out.wake();
        assert_eq!(granted.len(), 1);
        assert_eq!(q.cancel(&w), Cancel::Granted);
        assert_eq!(q.cancel(&w), Cancel::Revoked, "a second claim owns nothing");
        assert!(
            !w.revoke(),
            "already claimed: the releaser must not pass it on too"
        );
    }

    #[test]
    fn revoked_grant_is_not_claimed() {
        let mut q = WaitQueue::default();
        let w = Waiter::task(());
        q.push(w.clone());
        let mut out = Popped::new();
        assert!(q.grant_one(&mut out));
        let _ = out.wake();
        assert!(w.revoke());
        assert_eq!(q.cancel(&w), Cancel::Revoked);
    }

    #[test]
    fn queued_cancel_removes() {
        let mut q: WaitQueue<()> = WaitQueue::default();
        let a = Waiter::task(());
        let b = Waiter::task(());
        q.push(a.clone());
        q.push(b.clone());
        assert_eq!(q.cancel(&a), Cancel::Removed);
        assert_eq!(q.len(), 1);
        let mut out = Popped::new();
        assert!(q.grant_one(&mut out));
        assert!(Arc::ptr_eq(&out.wake().0[0], &b));
    }
}
