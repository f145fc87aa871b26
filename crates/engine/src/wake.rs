//! The park/notify handshake between the loop thread and the threads that post to it.
//!
//! Invariant (the bug class of uvloop #408/#720): a post that lands after the loop's last
//! look at its queue and before it blocks in the poller still wakes it. The handshake is
//! Dekker-style and does not rely on the GIL:
//!
//! * loop:   `state = PARKED`; fence(SeqCst); look at the queue; block only if empty.
//! * poster: publish item; fence(SeqCst); CAS `state` PARKED -> NOTIFIED; on success, wake.
//!
//! The two SeqCst fences are totally ordered. If the loop's fence comes first, the
//! poster's CAS reads PARKED (or a later value whose writer already woke the loop, or
//! RUNNING from a later wake-up, after which the loop looks at the queue again), so the
//! poster wakes it. If the poster's fence comes first, the loop's look at the queue sees
//! the item and it does not block. Only the first poster per park pays for the OS wake-up
//! (wake-ups are coalesced). `tests::loom_*` model-checks exactly this (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p weaveloop-engine --release wake`).

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU8, Ordering::SeqCst};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU8, Ordering::SeqCst};

const RUNNING: u8 = 0;
const PARKED: u8 = 1;
const NOTIFIED: u8 = 2;

/// Whether the loop thread is (about to be) blocked in its poller.
pub struct WakeState {
    state: AtomicU8,
}

impl Default for WakeState {
    fn default() -> Self {
        Self::new()
    }
}

impl WakeState {
    pub fn new() -> Self {
        WakeState {
            state: AtomicU8::new(RUNNING),
        }
    }

    /// Loop thread: announce that it is about to block. The caller must look at its
    /// queue *after* this call and must not block if it finds anything there.
    pub fn begin_park(&self) {
        self.state.store(PARKED, SeqCst);
        fence(SeqCst);
    }

    /// Loop thread: it is running again. Returns true when a poster issued a wake-up.
    pub fn end_park(&self) -> bool {
        self.state.swap(RUNNING, SeqCst) == NOTIFIED
    }

    /// Poster, after publishing its item: returns true when this caller must issue the
    /// OS-level wake-up (exactly one caller per park gets true).
    pub fn notify(&self) -> bool {
        fence(SeqCst);
        // A plain load first: posters to a running loop (the common case under load)
        // then only share the cache line, instead of bouncing it with a CAS each.
        self.state.load(SeqCst) == PARKED
            && self
                .state
                .compare_exchange(PARKED, NOTIFIED, SeqCst, SeqCst)
                .is_ok()
    }

    /// True while the loop thread is parked (or about to park).
    pub fn is_parked(&self) -> bool {
        self.state.load(SeqCst) != RUNNING
    }
}

#[cfg(all(test, loom))]
mod tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    /// One loop iteration that may park, against one or two posters: whenever the loop
    /// decides to block, a wake-up must have been (or will be) issued, or the queue was
    /// empty and no poster has published yet - in which case the poster must see PARKED.
    fn model(posters: usize) {
        loom::model(move || {
            let wake = Arc::new(WakeState::new());
            let queue = Arc::new(AtomicUsize::new(0));
            let woken = Arc::new(AtomicBool::new(false));
            let handles: Vec<_> = (0..posters)
                .map(|_| {
                    let (wake, queue, woken) = (wake.clone(), queue.clone(), woken.clone());
                    thread::spawn(move || {
                        queue.fetch_add(1, Ordering::Relaxed);
                        if wake.notify() {
                            woken.store(true, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            wake.begin_park();
            let saw_item = queue.load(Ordering::Relaxed) > 0;
            for h in handles {
                h.join().unwrap();
            }
            // After every poster finished: if the loop blocked (saw nothing), someone
            // must have woken it; a lost wake-up is exactly `!saw_item && !woken`.
            assert!(saw_item || woken.load(Ordering::Relaxed), "lost wake-up");
            wake.end_park();
        });
    }

    #[test]
    fn loom_one_poster_never_loses_a_wakeup() {
        model(1);
    }

    #[test]
    fn loom_two_posters_never_lose_a_wakeup() {
        model(2);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn notify_only_wakes_a_parked_loop_once() {
        let w = WakeState::new();
        assert!(!w.notify(), "a running loop needs no wake-up");
        w.begin_park();
        assert!(w.notify());
        assert!(!w.notify(), "wake-ups are coalesced");
        assert!(w.end_park());
        assert!(!w.is_parked());
    }
}
