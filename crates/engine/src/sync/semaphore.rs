//! The counting semaphore every lock-like primitive and queue is built on: permits plus a
//! FIFO queue of thread and coroutine waiters.
//!
//! State word: `count << 1 | WAITERS`, the count read as signed: below zero after
//! [`Semaphore::shrink`] took away more permits than were free (a debt that releases pay
//! before any permit is free again). Invariants:
//! * while WAITERS is set nobody takes a permit from the word except a releaser handing
//!   it, under the mutex, to the oldest waiter (no barging: FIFO across threads and
//!   coroutines); WAITERS is set and cleared only under the mutex;
//! * uncontended acquire is one CAS and uncontended release one `fetch_add`, with no
//!   allocation and no lock;
//! * a permit is never lost: it is in the word, held by an owner, or granted to exactly
//!   one waiter (which keeps it, or passes it on when it gives up).

use std::sync::Arc;

use super::prim::{lock, AtomicUsize, Mutex, Ordering::*};
use super::waiter::{Cancel, Granted, Popped, WaitQueue, Waiter};

const WAITERS: usize = 1;
const ONE: usize = 2;

/// The signed permit count of a state word (negative: permits owed).
#[inline]
fn count(s: usize) -> isize {
    (s as isize) >> 1
}

/// `release` would push the count above the bound (BoundedSemaphore, Lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyReleases;

pub struct Semaphore<T> {
    state: AtomicUsize,
    queue: Mutex<WaitQueue<T>>,
}

impl<T> Semaphore<T> {
    /// Largest permit count the state word holds.
    pub const MAX_PERMITS: usize = usize::MAX >> 2;

    pub fn new(permits: usize) -> Self {
        assert!(permits <= Self::MAX_PERMITS, "too many permits");
        Semaphore {
            state: AtomicUsize::new(permits * ONE),
            queue: Mutex::new(WaitQueue::default()),
        }
    }

    /// Permits available right now (0 while waiters are being served or permits owed).
    pub fn permits(&self) -> usize {
        count(self.state.load(Relaxed)).max(0) as usize
    }

    /// Whether any waiter is queued.
    pub fn has_waiters(&self) -> bool {
        self.state.load(Relaxed) & WAITERS != 0
    }

    /// Whether an acquire now would have to wait: no free permit, or waiters queued
    /// ahead (exactly when `try_acquire` refuses). `locked()` of the primitives.
    pub fn would_block(&self) -> bool {
        let s = self.state.load(Relaxed);
        s & WAITERS != 0 || count(s) < 1
    }

    /// Takes a permit if one is free and nobody is queued. Never blocks.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        // First guess: exactly one permit (a free lock): a single CAS.
        let mut s = ONE;
        loop {
            if s & WAITERS != 0 || count(s) < 1 {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(s, s - ONE, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }

    /// Takes a permit now, or queues `w` (FIFO). Returns true when it took one (then `w`
    /// is not queued).
    pub fn acquire_or_enqueue(&self, w: &Arc<Waiter<T>>) -> bool {
        let mut q = lock(&self.queue);
        let mut s = self.state.load(Relaxed);
        loop {
            if q.is_empty() && count(s) >= 1 {
                match self.state.compare_exchange(s, s - ONE, Acquire, Relaxed) {
                    Ok(_) => return true,
                    Err(a) => s = a,
                }
            } else if s & WAITERS == 0 {
                match self.state.compare_exchange(s, s | WAITERS, AcqRel, Relaxed) {
                    Ok(_) => break,
                    Err(a) => s = a,
                }
            } else {
                break;
            }
        }
        q.push(w.clone());
        false
    }

    /// Adds `n` permits, handing them to the oldest waiters first. Threads are unparked
    /// here; the coroutine waiters granted are returned for the caller to wake.
    #[inline]
    pub fn release(&self, n: usize) -> Granted<T> {
        let prev = self.state.fetch_add(n * ONE, Release);
        if prev & WAITERS == 0 {
            return Granted::none();
        }
        self.hand_off()
    }

    /// Like `release`, refusing to raise the count above `bound`.
    pub fn release_bounded(&self, n: usize, bound: usize) -> Result<Granted<T>, TooManyReleases> {
        let mut s = self.state.load(Relaxed);
        loop {
            if count(s).saturating_add(n as isize) > bound as isize {
                return Err(TooManyReleases);
            }
            match self
                .state
                .compare_exchange_weak(s, s + n * ONE, Release, Relaxed)
            {
                Ok(prev) if prev & WAITERS == 0 => return Ok(Granted::none()),
                Ok(_) => return Ok(self.hand_off()),
                Err(a) => s = a,
            }
        }
    }

    /// Releaser with WAITERS seen: moves permits from the word to the oldest waiters.
    fn hand_off(&self) -> Granted<T> {
        let mut popped = Popped::new();
        {
            let mut q = lock(&self.queue);
            loop {
                if q.is_empty() {
                    self.state.fetch_and(!WAITERS, Relaxed);
                    break;
                }
                // Under the mutex with WAITERS set only we take permits from the word.
                if count(self.state.load(Acquire)) < 1 {
                    break;
                }
                self.state.fetch_sub(ONE, Acquire);
                q.grant_one(&mut popped);
            }
        }
        popped.wake()
    }

    /// Takes `n` permits away for good (a queue lowering its capacity): the free ones at
    /// once, the rest from the next releases, which pay this debt before any permit is
    /// free or handed to a waiter again. Taken under the waiters' mutex so it never
    /// interleaves with a hand-off.
    pub fn shrink(&self, n: usize) {
        assert!(n <= Self::MAX_PERMITS, "too many permits");
        let _q = lock(&self.queue);
        self.state.fetch_sub(n * ONE, AcqRel);
    }

    /// A queued waiter gives up (timeout, cancellation). If it had been granted
    /// meanwhile it now holds a permit (`Cancel::Granted`): a thread keeps it; a
    /// coroutine passes it on with [`Semaphore::release`].
    pub fn cancel(&self, w: &Arc<Waiter<T>>) -> Cancel {
        let mut q = lock(&self.queue);
        let outcome = q.cancel(w);
        if outcome == Cancel::Removed && q.is_empty() {
            self.state.fetch_and(!WAITERS, Relaxed);
        }
        outcome
    }

    /// After `fork()`, in the child: `permits` free and no waiters (their threads and
    /// loops do not exist there).
    pub fn reset(&self, permits: usize) {
        let old = std::mem::take(&mut *lock(&self.queue));
        self.state.store(permits * ONE, Release);
        drop(old);
    }

    /// Number of queued waiters.
    pub fn waiting(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Thread side: takes a permit, parking (at most until `deadline`) if none is free.
    #[cfg(not(loom))]
    pub fn acquire_blocking(&self, deadline: Option<std::time::Instant>) -> bool {
        if self.try_acquire() {
            return true;
        }
        Waiter::wait_as_thread(deadline, |w| self.acquire_or_enqueue(w), |w| self.cancel(w))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomic;
    use std::time::{Duration, Instant};

    #[test]
    fn uncontended_round_trip() {
        let s: Semaphore<()> = Semaphore::new(1);
        assert!(s.try_acquire());
        assert!(!s.try_acquire());
        assert!(s.release(1).is_empty());
        assert_eq!(s.permits(), 1);
        assert_eq!(s.release_bounded(1, 1).err(), Some(TooManyReleases));
    }

    #[test]
    fn fifo_hand_off_between_tasks_and_no_barging() {
        let s: Semaphore<u32> = Semaphore::new(1);
        assert!(s.try_acquire());
        let a = Waiter::task(1);
        let b = Waiter::task(2);
        assert!(!s.acquire_or_enqueue(&a));
        assert!(!s.acquire_or_enqueue(&b));
        let g = s.release(1);
        assert_eq!(g.0.len(), 1);
        assert_eq!(*g.0[0].token().unwrap(), 1);
        assert!(!s.try_acquire(), "b is queued: no barging");
        // a is cancelled after being granted: it passes the permit on to b.
        assert_eq!(s.cancel(&a), Cancel::Granted);
        let g = s.release(1);
        assert_eq!(*g.0[0].token().unwrap(), 2);
        assert!(!s.has_waiters());
        assert!(s.release(1).is_empty());
        assert_eq!(s.permits(), 1);
    }

    #[test]
    fn shrink_takes_free_permits_then_owes_the_rest() {
        let s: Semaphore<u32> = Semaphore::new(3);
        s.shrink(2);
        assert_eq!(s.permits(), 1);
        assert!(!s.would_block());
        s.shrink(3); // one free, two owed
        assert_eq!(s.permits(), 0);
        assert!(s.would_block());
        assert!(!s.try_acquire());
        // A waiter queues behind the debt: releases pay it first.
        let a = Waiter::task(1);
        assert!(!s.acquire_or_enqueue(&a));
        assert!(s.release(1).is_empty(), "pays the debt");
        assert!(s.release(1).is_empty(), "pays the debt");
        let g = s.release(1);
        assert_eq!(*g.0[0].token().unwrap(), 1, "then the waiter");
        assert!(s.release(2).is_empty());
        assert_eq!(s.permits(), 2);
        assert_eq!(s.release_bounded(1, 2).err(), Some(TooManyReleases));
    }

    #[test]
    fn thread_timeout_leaves_count_intact() {
        let s: Semaphore<()> = Semaphore::new(0);
        let t0 = Instant::now();
        assert!(!s.acquire_blocking(Some(t0 + Duration::from_millis(20))));
        assert!(t0.elapsed() >= Duration::from_millis(20));
        assert!(!s.has_waiters());
        assert!(s.release(1).is_empty());
        assert!(s.try_acquire());
    }

    #[test]
    fn threads_contend_exactly() {
        let s: Arc<Semaphore<()>> = Arc::new(Semaphore::new(1));
        let counter = Arc::new(StdAtomic::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (s, c) = (s.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        assert!(s.acquire_blocking(None));
                        let v = c.load(Relaxed);
                        c.store(v + 1, Relaxed);
                        assert!(s.release(1).is_empty());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(counter.load(Relaxed), 80_000);
        assert_eq!(s.permits(), 1);
        assert!(!s.has_waiters());
    }

    #[test]
    fn revoked_grant_passes_on() {
        let s: Semaphore<u8> = Semaphore::new(0);
        let a = Waiter::task(1);
        let b = Waiter::task(2);
        assert!(!s.acquire_or_enqueue(&a));
        assert!(!s.acquire_or_enqueue(&b));
        let g = s.release(1);
        // a's loop is closed: the releaser revokes and passes the permit on.
        assert!(g.0[0].revoke());
        let g2 = s.release(1);
        assert_eq!(*g2.0[0].token().unwrap(), 2);
        assert_eq!(s.cancel(&a), Cancel::Revoked);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// Two releasers race a coroutine waiter that gives up: the permits always add up.
    #[test]
    fn loom_cancel_races_release() {
        loom::model(|| {
            let s: Arc<Semaphore<u8>> = Arc::new(Semaphore::new(0));
            let w = Waiter::task(1);
            let queued = !s.acquire_or_enqueue(&w);
            assert!(queued);
            let s2 = s.clone();
            let releaser = thread::spawn(move || s2.release(1).len());
            let held = match s.cancel(&w) {
                Cancel::Removed => 0,
                Cancel::Granted => 1,
                Cancel::Revoked => unreachable!(),
            };
            let granted = releaser.join().unwrap();
            // Granted by the releaser <=> the canceller found it granted.
            assert_eq!(granted, held);
            if held == 1 {
                assert!(s.release(1).is_empty());
            }
            assert_eq!(s.permits(), 1);
            assert!(!s.has_waiters());
        });
    }

    /// A capacity cut races a release and a queued waiter: the waiter is granted only
    /// if the release came first, and the count always adds up (release 2, shrink 1).
    #[test]
    fn loom_shrink_races_release_with_a_waiter() {
        loom::model(|| {
            let s: Arc<Semaphore<u8>> = Arc::new(Semaphore::new(0));
            let w = Waiter::task(1);
            assert!(!s.acquire_or_enqueue(&w));
            let s2 = s.clone();
            let shrinker = thread::spawn(move || s2.shrink(1));
            let granted = s.release(2).len();
            shrinker.join().unwrap();
            // Net +1: either the waiter got it (release first), or the cut ate one of the
            // two and the other went to the waiter (shrink first). Never both, never lost.
            let got = granted + s.release(0).len();
            assert_eq!(got, 1, "exactly one grant");
            assert_eq!(s.permits(), 0);
            assert!(!s.has_waiters());
            assert!(!s.try_acquire());
            assert!(s.release(1).is_empty());
            assert_eq!(s.permits(), 1);
        });
    }

    /// A fast acquirer never barges past a queued waiter.
    #[test]
    fn loom_no_barging() {
        loom::model(|| {
            let s: Arc<Semaphore<u8>> = Arc::new(Semaphore::new(0));
            let w = Waiter::task(1);
            assert!(!s.acquire_or_enqueue(&w));
            let s2 = s.clone();
            let t = thread::spawn(move || s2.try_acquire());
            let g = s.release(1);
            let barged = t.join().unwrap();
            assert!(!barged);
            assert_eq!(g.len(), 1);
        });
    }
}
