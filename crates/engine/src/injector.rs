//! The cross-thread injector: any thread posts, the loop thread drains in batches.
//!
//! Invariants: (1) a post either lands in the queue or is refused with its item handed
//! back — after `close` has returned, every post is refused and every accepted item has
//! been handed to `close`'s caller, so none vanishes; (2) a post that finds the loop
//! parked wakes it, and only the first such post per park pays for it. Both rest on the
//! one word of `wake.rs`.

use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use crate::wake::WakeState;

/// Something that can interrupt the loop thread's blocking poll (an eventfd write).
pub trait Unpark: Send + Sync {
    fn unpark(&self);
}

impl Unpark for mio::Waker {
    fn unpark(&self) {
        // A failed eventfd write means the counter is saturated: a wake-up is pending anyway.
        let _ = self.wake();
    }
}

impl<U: Unpark + ?Sized> Unpark for std::sync::Arc<U> {
    fn unpark(&self) {
        (**self).unpark();
    }
}

/// Lock-free multi-producer queue plus the park handshake of its single consumer.
pub struct Injector<T, U: Unpark = std::sync::Arc<mio::Waker>> {
    queue: SegQueue<T>,
    wake: WakeState,
    unpark: U,
}

impl<T, U: Unpark> Injector<T, U> {
    pub fn new(unpark: U) -> Self {
        Injector {
            queue: SegQueue::new(),
            wake: WakeState::new(),
            unpark,
        }
    }

    /// Posts `item`, waking the loop if it is parked. Gives the item back once closed.
    pub fn post(&self, item: T) -> Result<(), T> {
        if !self.wake.enter() {
            return Err(item);
        }
        self.queue.push(item);
        if self.wake.leave() {
            self.unpark.unpark();
        }
        Ok(())
    }

    /// Loop thread: moves every queued item into `out`, in posting order per thread.
    pub fn drain_into(&self, out: &mut Vec<T>) {
        out.reserve(self.queue.len());
        while let Some(item) = self.queue.pop() {
            out.push(item);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Loop thread: announce the park. Returns false if the loop must not block because
    /// something is already queued.
    pub fn begin_park(&self) -> bool {
        self.wake.begin_park();
        self.queue.is_empty()
    }

    /// Loop thread: running again.
    pub fn end_park(&self) {
        self.wake.end_park();
    }

    /// Loop thread: busy-waits (no syscalls) until something is queued or `budget` has
    /// passed. Returns true if something arrived. Meant to be called without the GIL,
    /// only while work the loop is waiting for is in flight.
    pub fn spin_wait(&self, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        let mut i = 0u32;
        loop {
            if !self.queue.is_empty() {
                return true;
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// In a forked child, where only the calling thread exists: everything queued, or
    /// None if a post was in progress at the fork (its thread is gone, its slot might
    /// never be completed, so the queue must not be read).
    pub fn drain_after_fork(&self) -> Option<Vec<T>> {
        if self.wake.posting() {
            return None;
        }
        let mut out = Vec::new();
        self.drain_into(&mut out);
        Some(out)
    }

    /// Refuses every later post and returns everything accepted but not yet drained.
    pub fn close(&self) -> Vec<T> {
        self.wake.close();
        let mut rest = Vec::new();
        self.drain_into(&mut rest);
        rest
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    #[derive(Default)]
    struct CountingUnpark(AtomicUsize);
    impl Unpark for CountingUnpark {
        fn unpark(&self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn wakes_only_a_parked_loop_and_coalesces() {
        let counter = Arc::new(CountingUnpark::default());
        let inj = Injector::new(counter.clone());
        inj.post(1).unwrap();
        assert_eq!(counter.0.load(SeqCst), 0, "running loop: no wake-up");
        let mut out = Vec::new();
        inj.drain_into(&mut out);
        assert!(inj.begin_park());
        inj.post(2).unwrap();
        inj.post(3).unwrap();
        assert_eq!(counter.0.load(SeqCst), 1, "one wake-up per park");
        inj.end_park();
        inj.drain_into(&mut out);
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn drain_after_fork_refuses_while_a_post_was_in_progress() {
        let inj = Injector::new(Arc::new(CountingUnpark::default()));
        inj.post(1).unwrap();
        assert!(inj.wake.enter()); // a poster mid-push when the fork happened
        assert!(inj.drain_after_fork().is_none());
        inj.wake.leave();
        assert_eq!(inj.drain_after_fork(), Some(vec![1]));
    }

    #[test]
    fn begin_park_refuses_to_block_when_items_are_queued() {
        let inj = Injector::new(Arc::new(CountingUnpark::default()));
        inj.post(1).unwrap();
        assert!(!inj.begin_park());
    }

    #[test]
    fn posts_racing_close_either_land_or_are_refused() {
        for _ in 0..200 {
            let inj = Arc::new(Injector::new(Arc::new(CountingUnpark::default())));
            let accepted = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (inj, accepted) = (inj.clone(), accepted.clone());
                    std::thread::spawn(move || {
                        for i in 0..200 {
                            if inj.post(i).is_ok() {
                                accepted.fetch_add(1, SeqCst);
                            }
                        }
                    })
                })
                .collect();
            let mut drained = Vec::new();
            inj.drain_into(&mut drained);
            drained.extend(inj.close());
            for t in threads {
                t.join().unwrap();
            }
            assert!(inj.is_empty(), "nothing lands after close");
            assert_eq!(
                drained.len(),
                accepted.load(SeqCst),
                "no accepted post vanished"
            );
        }
    }

    #[test]
    fn spin_wait_sees_a_post_from_another_thread() {
        let inj = Arc::new(Injector::new(Arc::new(CountingUnpark::default())));
        let poster = {
            let inj = inj.clone();
            std::thread::spawn(move || inj.post(7).unwrap())
        };
        assert!(inj.spin_wait(Duration::from_secs(10)));
        poster.join().unwrap();
        assert!(!inj.is_empty());
    }
}
