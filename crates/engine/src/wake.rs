//! The one word the loop thread and its posters share: the park/notify handshake and the
//! close gate of the injector.
//!
//! Invariant (the bug class of uvloop #408/#720): a post that lands after the loop's last
//! look at its queue and before it blocks in the poller still wakes it. The handshake
//! relies on neither the GIL nor fences: both sides make a read-modify-write on this one
//! word, and RMWs of one atomic are totally ordered (its modification order).
//!
//! * loop:   `fetch_or(PARKED)` (acquire); look at the queue; block only if it is empty.
//! * poster: publish item; `fetch_sub(POSTING)` (release); if that read PARKED, move it
//!   to NOTIFIED and wake the loop.
//!
//! If the loop's RMW comes first, the poster's RMW reads PARKED (or NOTIFIED, set by a
//! poster that woke the loop already), so the loop gets woken. If the poster's comes
//! first, the loop's RMW reads a value in the release sequence the poster's RMW heads, so
//! the publish happens-before the loop's look at the queue, which sees the item. Only the
//! first poster per park pays for the OS wake-up (wake-ups are coalesced).
//!
//! The gate: a poster counts itself in (`enter`) before it publishes and out after, and
//! `close` sets CLOSED with an RMW on the same word; so either the poster's `enter` sees
//! CLOSED and it gives its item back, or `close` sees the post in progress and waits for
//! it to finish before its final drain. `tests::loom_*` model-checks both (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p weaveloop-engine --release --lib loom`).

#[cfg(loom)]
use loom::{
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    thread::yield_now,
};
#[cfg(not(loom))]
use std::{
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    thread::yield_now,
};

const CLOSED: usize = 1;
const PARK_MASK: usize = 0b110;
const RUNNING: usize = 0;
const PARKED: usize = 0b010;
const NOTIFIED: usize = 0b100;
/// One post in progress (the count lives above the flag bits).
const POSTING: usize = 0b1000;

/// Whether the loop thread is (about to be) blocked in its poller, whether its injector
/// is closed, and how many posts are in progress.
pub struct WakeState {
    word: AtomicUsize,
}

impl Default for WakeState {
    fn default() -> Self {
        Self::new()
    }
}

impl WakeState {
    pub fn new() -> Self {
        WakeState {
            word: AtomicUsize::new(RUNNING),
        }
    }

    /// Poster, before publishing: counts the post in. False (and nothing counted) once
    /// closed: the item must not be published.
    pub fn enter(&self) -> bool {
        if self.word.fetch_add(POSTING, SeqCst) & CLOSED != 0 {
            self.word.fetch_sub(POSTING, SeqCst);
            return false;
        }
        true
    }

    /// Poster, after publishing: counts the post out. Returns true when this caller must
    /// issue the OS-level wake-up (exactly one caller per park gets true).
    pub fn leave(&self) -> bool {
        let mut seen = self.word.fetch_sub(POSTING, SeqCst) - POSTING;
        while seen & PARK_MASK == PARKED {
            match self
                .word
                .compare_exchange(seen, (seen & !PARK_MASK) | NOTIFIED, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
        false
    }

    /// Loop thread: announce that it is about to block. The caller must look at its
    /// queue *after* this call and must not block if it finds anything there.
    pub fn begin_park(&self) {
        // Every park is ended by `end_park` (the injector's `Park` guard sees to it), so
        // the park bits are RUNNING here and one RMW is enough. (A CAS loop that also
        // repaired them would make the two-poster loom model take minutes, not seconds.)
        self.word.fetch_or(PARKED, SeqCst);
    }

    /// Loop thread: it is running again. Returns true when a poster issued a wake-up.
    pub fn end_park(&self) -> bool {
        self.word.fetch_and(!PARK_MASK, SeqCst) & PARK_MASK == NOTIFIED
    }

    /// True while the loop thread is parked (or about to park).
    pub fn is_parked(&self) -> bool {
        self.word.load(SeqCst) & PARK_MASK != RUNNING
    }

    /// Refuses every later `enter`. Returns once no post is in progress any more, so
    /// everything accepted has been published.
    pub fn close(&self) {
        self.word.fetch_or(CLOSED, SeqCst);
        while self.posting() {
            yield_now();
        }
    }

    /// True while some post is between `enter` and `leave`.
    pub fn posting(&self) -> bool {
        self.word.load(SeqCst) >= POSTING
    }
}

#[cfg(all(test, loom))]
mod tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    /// One loop iteration that may park, against one or two posters: whenever the loop
    /// decides to block, a wake-up must have been (or will be) issued. The "queue" is a
    /// relaxed counter: all ordering has to come from the handshake itself.
    fn model(posters: usize) {
        loom::model(move || {
            let wake = Arc::new(WakeState::new());
            let queue = Arc::new(AtomicUsize::new(0));
            let woken = Arc::new(AtomicBool::new(false));
            let handles: Vec<_> = (0..posters)
                .map(|_| {
                    let (wake, queue, woken) = (wake.clone(), queue.clone(), woken.clone());
                    thread::spawn(move || {
                        assert!(wake.enter());
                        queue.fetch_add(1, Ordering::Relaxed);
                        if wake.leave() {
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

    /// A post racing `close`: it is refused, or it is published before `close` returns
    /// (so the final drain that follows `close` finds it).
    #[test]
    fn loom_a_post_racing_close_is_refused_or_published_before_close_returns() {
        loom::model(|| {
            let wake = Arc::new(WakeState::new());
            let queue = Arc::new(AtomicUsize::new(0));
            let accepted = Arc::new(AtomicBool::new(false));
            let poster = {
                let (wake, queue, accepted) = (wake.clone(), queue.clone(), accepted.clone());
                thread::spawn(move || {
                    if wake.enter() {
                        queue.fetch_add(1, Ordering::Relaxed);
                        accepted.store(true, Ordering::Relaxed);
                        wake.leave();
                    }
                })
            };
            wake.close();
            let drained = queue.load(Ordering::Relaxed);
            poster.join().unwrap();
            if accepted.load(Ordering::Relaxed) {
                assert_eq!(drained, 1, "an accepted post was not published by close");
            }
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn leave_only_wakes_a_parked_loop_once() {
        let w = WakeState::new();
        assert!(w.enter());
        assert!(!w.leave(), "a running loop needs no wake-up");
        w.begin_park();
        assert!(w.enter() && w.leave());
        assert!(w.enter() && !w.leave(), "wake-ups are coalesced");
        assert!(w.end_park());
        assert!(!w.is_parked());
        assert!(!w.end_park(), "no poster since");
    }

    #[test]
    fn a_parked_loop_is_woken_by_a_post_that_was_in_progress() {
        let w = WakeState::new();
        assert!(w.enter());
        w.begin_park();
        assert!(w.posting());
        assert!(w.leave(), "the post finished after the park began");
        assert!(!w.posting());
    }

    #[test]
    fn close_refuses_later_posts() {
        let w = WakeState::new();
        w.close();
        assert!(!w.enter());
        assert!(!w.posting(), "a refused post is not counted");
    }
}
