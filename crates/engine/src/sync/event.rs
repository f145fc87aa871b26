//! An event flag with its FIFO queue of waiters: `set` wakes all of them at once.
//! Invariant: the flag is read and waiters are queued under one mutex, so a waiter
//! queued after checking the flag cannot miss the `set` that follows.

use std::sync::Arc;

use super::prim::{lock, Mutex};
use super::waiter::{Cancel, Granted, Popped, WaitQueue, Waiter};

pub struct EventCore<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    flag: bool,
    waiters: WaitQueue<T>,
}

impl<T> Default for EventCore<T> {
    fn default() -> Self {
        EventCore {
            inner: Mutex::new(Inner {
                flag: false,
                waiters: WaitQueue::default(),
            }),
        }
    }
}

impl<T> EventCore<T> {
    pub fn is_set(&self) -> bool {
        lock(&self.inner).flag
    }

    /// Sets the flag and grants every waiter: threads are unparked, coroutines returned.
    pub fn set(&self) -> Granted<T> {
        let mut popped = Popped::new();
        {
            let mut g = lock(&self.inner);
            g.flag = true;
            g.waiters.grant_all(&mut popped);
        }
        popped.wake()
    }

    pub fn clear(&self) {
        lock(&self.inner).flag = false;
    }

    /// Returns true if the flag is set; otherwise queues `w` and returns false.
    pub fn check_or_enqueue(&self, w: &Arc<Waiter<T>>) -> bool {
        let mut g = lock(&self.inner);
        if g.flag {
            return true;
        }
        g.waiters.push(w.clone());
        false
    }

    /// A waiter gives up; `Cancel::Granted` means the event was set meanwhile.
    pub fn cancel(&self, w: &Arc<Waiter<T>>) -> Cancel {
        lock(&self.inner).waiters.cancel(w)
    }

    /// Thread side: waits for the flag at most until `deadline`; returns the flag.
    #[cfg(not(loom))]
    pub fn wait_blocking(&self, deadline: Option<std::time::Instant>) -> bool {
        Waiter::wait_as_thread(deadline, |w| self.check_or_enqueue(w), |w| self.cancel(w))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn set_wakes_threads_and_returns_tasks() {
        let e: Arc<EventCore<u8>> = Arc::new(EventCore::default());
        let t = Waiter::task(3);
        assert!(!e.check_or_enqueue(&t));
        let e2 = e.clone();
        let h = std::thread::spawn(move || e2.wait_blocking(None));
        // Wait until the thread is queued (bounded spin, no sleep-as-assertion).
        while lock(&e.inner).waiters.len() < 2 {
            std::thread::yield_now();
        }
        let g = e.set();
        assert_eq!(g.len(), 1);
        assert!(h.join().unwrap());
        assert!(e.check_or_enqueue(&Waiter::task(4)));
    }

    #[test]
    fn timeout_returns_false() {
        let e: EventCore<()> = EventCore::default();
        assert!(!e.wait_blocking(Some(Instant::now() + Duration::from_millis(5))));
        assert_eq!(lock(&e.inner).waiters.len(), 0);
    }
}
