//! The waiter queue of a condition variable: `notify(n)` grants the `n` oldest waiters.
//! The condition's lock lives above this (in the binding layer); this only orders and
//! wakes waiters. Invariant: a notification is never lost: a waiter that gives up after
//! being notified tells its caller (`Cancel::Granted`), which keeps it (a thread) or
//! passes it on with `notify(1)` (a cancelled coroutine).

use std::sync::Arc;

use super::prim::{lock, Mutex};
use super::waiter::{Cancel, Granted, Popped, WaitQueue, Waiter};

pub struct Notifier<T> {
    waiters: Mutex<WaitQueue<T>>,
}

impl<T> Default for Notifier<T> {
    fn default() -> Self {
        Notifier {
            waiters: Mutex::new(WaitQueue::default()),
        }
    }
}

impl<T> Notifier<T> {
    pub fn enqueue(&self, w: &Arc<Waiter<T>>) {
        lock(&self.waiters).push(w.clone());
    }

    /// Grants up to `n` of the oldest waiters; returns the coroutines among them.
    pub fn notify(&self, n: usize) -> Granted<T> {
        let mut popped = Popped::new();
        {
            let mut q = lock(&self.waiters);
            for _ in 0..n {
                if !q.grant_one(&mut popped) {
                    break;
                }
            }
        }
        popped.wake()
    }

    pub fn notify_all(&self) -> Granted<T> {
        let mut popped = Popped::new();
        lock(&self.waiters).grant_all(&mut popped);
        popped.wake()
    }

    pub fn cancel(&self, w: &Arc<Waiter<T>>) -> Cancel {
        lock(&self.waiters).cancel(w)
    }

    pub fn waiting(&self) -> usize {
        lock(&self.waiters).len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn notify_is_fifo_and_bounded() {
        let n: Notifier<u8> = Notifier::default();
        let ws: Vec<_> = (0..3).map(Waiter::task).collect();
        for w in &ws {
            n.enqueue(w);
        }
        let g = n.notify(2);
        let got: Vec<u8> = g.0.iter().map(|w| *w.token().unwrap()).collect();
        assert_eq!(got, [0, 1]);
        assert_eq!(n.cancel(&ws[1]), Cancel::Granted);
        assert_eq!(n.cancel(&ws[2]), Cancel::Removed);
        assert_eq!(n.waiting(), 0);
    }
}
