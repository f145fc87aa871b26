//! The unfinished-task count of a queue (`task_done`/`join`): `join` waits until it
//! drops to zero. Invariant: the count only goes below zero by refusal
//! (`task_done() called too many times`), and every waiter queued while the count was
//! non-zero is granted when it reaches zero.

use std::sync::Arc;

use super::prim::{lock, AtomicUsize, Mutex, Ordering::*};
use super::waiter::{Cancel, Granted, Popped, WaitQueue, Waiter};

pub struct TaskCounter<T> {
    unfinished: AtomicUsize,
    joiners: Mutex<WaitQueue<T>>,
}

/// `task_done` called more times than items were put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyTaskDone;

impl<T> Default for TaskCounter<T> {
    fn default() -> Self {
        TaskCounter {
            unfinished: AtomicUsize::new(0),
            joiners: Mutex::new(WaitQueue::default()),
        }
    }
}

impl<T> TaskCounter<T> {
    pub fn unfinished(&self) -> usize {
        self.unfinished.load(Acquire)
    }

    /// One more item put.
    #[inline]
    pub fn add(&self) {
        self.unfinished.fetch_add(1, Relaxed);
    }

    /// One item finished; at zero, every joiner is granted.
    pub fn done(&self) -> Result<Granted<T>, TooManyTaskDone> {
        let mut n = self.unfinished.load(Relaxed);
        loop {
            if n == 0 {
                return Err(TooManyTaskDone);
            }
            match self
                .unfinished
                .compare_exchange_weak(n, n - 1, AcqRel, Relaxed)
            {
                Ok(_) => break,
                Err(a) => n = a,
            }
        }
        if n != 1 {
            return Ok(Granted::none());
        }
        let mut popped = Popped::new();
        let mut joiners = lock(&self.joiners);
        // Re-checked under the mutex: a put between our decrement and here means work
        // is outstanding again; the done() that next reaches zero grants the joiners.
        if self.unfinished.load(Acquire) == 0 {
            joiners.grant_all(&mut popped);
        }
        drop(joiners);
        Ok(popped.wake())
    }

    /// Returns true if nothing is unfinished; otherwise queues `w`.
    pub fn check_or_enqueue(&self, w: &Arc<Waiter<T>>) -> bool {
        let mut q = lock(&self.joiners);
        // Checked under the mutex: a `done` reaching zero grants under it afterwards.
        if self.unfinished.load(Acquire) == 0 {
            return true;
        }
        q.push(w.clone());
        false
    }

    pub fn cancel(&self, w: &Arc<Waiter<T>>) -> Cancel {
        lock(&self.joiners).cancel(w)
    }

    /// Thread side: waits until nothing is unfinished.
    #[cfg(not(loom))]
    pub fn join_blocking(&self, deadline: Option<std::time::Instant>) -> bool {
        Waiter::wait_as_thread(deadline, |w| self.check_or_enqueue(w), |w| self.cancel(w))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn join_granted_at_zero() {
        let c: TaskCounter<u8> = TaskCounter::default();
        assert!(c.check_or_enqueue(&Waiter::task(0)));
        c.add();
        c.add();
        let w = Waiter::task(1);
        assert!(!c.check_or_enqueue(&w));
        assert!(c.done().unwrap().is_empty());
        assert_eq!(c.done().unwrap().len(), 1);
        assert_eq!(c.done().err(), Some(TooManyTaskDone));
    }
}
