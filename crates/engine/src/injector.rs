//! The cross-thread injector: any thread posts, the loop thread drains in batches.
//!
//! Invariants: (1) a post either lands in the queue or is refused with its item handed
//! back — after `close` has returned, every post is refused and every accepted item has
//! been handed to `close`'s caller, so none vanishes; (2) a post that finds the loop
//! parked wakes it, and only the first such post per park pays for it. Both rest on the
//! one word of `stack.rs`.

use std::sync::atomic::{
    AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::time::{Duration, Instant};

use crate::clock;
use crate::stack::{PostStack, Pushed};

/// Something that can interrupt the loop thread's blocking poll (an eventfd write).
pub trait Unpark: Send + Sync {
    fn unpark(&self);
}

impl Unpark for crate::poller::Wakeup {
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
pub struct Injector<T, U: Unpark = std::sync::Arc<crate::poller::Wakeup>> {
    queue: PostStack<T>,
    unpark: U,
    /// Posted items the loop has taken out of the queue but not run yet, as it last
    /// reported (see `report_backlog`): with what is queued, the backlog flow control
    /// bounds.
    backlog: AtomicUsize,
    /// Counts the loop's drains and backlog reports: how flow control sees it progress.
    progress: AtomicU64,
    /// `progress + 1` as it was when a throttled poster last waited in vain: the loop
    /// made no progress (a long callback, a blocked loop thread), and posters stop
    /// waiting for it until it does. 0: not stalled.
    stalled_at: AtomicU64,
    /// While the loop thread spins and takes hand-overs (see `hand_over`): when it began
    /// (`clock::monotonic()` as f64 bits); 0 otherwise.
    offer_since: AtomicU64,
    /// Counts the loop thread's returns from a spin or a park (see `resumed`).
    resumes: AtomicU64,
    /// Counts the loop thread's spins and parks begun (see `released`).
    releases: AtomicU64,
    /// Whether spins and yields are worth it now (see `CpuBackoff`).
    cpus: CpuBackoff,
}

/// Busy-waits until `counter` is no longer `seen` (true) or `deadline` passes (false).
fn changes(counter: &AtomicU64, seen: u64, deadline: Instant) -> bool {
    loop {
        if counter.load(Acquire) != seen {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// A park of the loop thread (see `Injector::park`).
pub struct Park<'a, T, U: Unpark> {
    injector: &'a Injector<T, U>,
    parked: bool,
}

impl<T, U: Unpark> Park<'_, T, U> {
    /// False if the loop must not block because something was already queued: then the
    /// park was not announced at all (see `PostStack::park`).
    pub fn may_block(&self) -> bool {
        self.parked
    }
}

impl<T, U: Unpark> Drop for Park<'_, T, U> {
    fn drop(&mut self) {
        if self.parked {
            self.injector.queue.unpark();
        }
    }
}

/// Flow control against a flood of posts (see `Injector::throttle`).
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    /// A poster waits when this many items are queued...
    pub high: usize,
    /// ...until fewer than this many are,
    pub low: usize,
    /// or for at most this long.
    pub max_wait: Duration,
}

impl Throttle {
    /// Thresholds for a loop's callbacks: a backlog of 8192 callbacks takes the loop
    /// about a millisecond to run, so a timer waiting behind it stays nearly on time,
    /// while posters that are merely fast never wait.
    pub const CALLBACKS: Throttle = Throttle {
        high: 8192,
        low: 2048,
        max_wait: Duration::from_millis(2),
    };
}

/// How a spin of the loop thread ended (see `Injector::spin_wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spun {
    /// Something was queued.
    Arrived,
    /// Something was queued, but the spin found the CPUs oversubscribed (see below).
    ArrivedContended,
    /// The budget passed.
    TimedOut,
    /// A yield kept the spinning thread off its CPU for `CONTENDED` or more: more
    /// threads want to run than there are CPUs.
    Contended,
}

impl Spun {
    pub fn arrived(self) -> bool {
        matches!(self, Spun::Arrived | Spun::ArrivedContended)
    }

    pub fn contended(self) -> bool {
        matches!(self, Spun::ArrivedContended | Spun::Contended)
    }
}

/// A yield that takes this long gave the CPU to another thread for a while. (On a
/// CPU with no other runnable thread a yield returns in about a microsecond.)
pub const CONTENDED: Duration = Duration::from_micros(20);

/// Yields the CPU; whether that kept this thread off it for `CONTENDED` or more.
fn yield_kept_off() -> bool {
    let before = Instant::now();
    std::thread::yield_now();
    before.elapsed() >= CONTENDED
}

/// Whether the threads of one loop may spend CPU time waiting for each other: the loop
/// thread spinning before it parks, a posting thread yielding its CPU to the loop it
/// woke. Either pays only while the other thread has a CPU of its own. Once a spin or a
/// yield found the CPUs oversubscribed (other processes' threads, or more busy threads
/// than CPUs), neither happens for `MIN` seconds, twice as long each time a later try
/// finds the same, up to `MAX`; each try that does not shortens the next back-off a
/// little (a tenth), so only a run of them brings it back to `MIN`. Measured on 2 CPUs:
/// beside one CPU-bound process, two loops in ping-pong through `call_soon_threadsafe`
/// took 90-500 us per round trip spinning, 14-18 us parking (stock asyncio 28 us);
/// beside two, each yield of a poster let a busy process run its whole time slice,
/// 4-11 ms.
/// (Shared by all the loop's threads with relaxed atomics: threads that race on it only
/// blur the timing.)
#[derive(Default)]
pub struct CpuBackoff {
    /// Until when (`clock::monotonic()` seconds, as f64 bits) there is no spin or yield.
    off_until: AtomicU64,
    /// How long the last back-off was (seconds, f64 bits; 0: none since a clean try).
    last: AtomicU64,
}

impl CpuBackoff {
    pub const MIN: f64 = 0.001;
    pub const MAX: f64 = 1.0;
    /// What a clean try leaves of the last back-off's length.
    const CLEAN: f64 = 0.9;

    /// Whether a spin or a yield may be tried at `now` (`clock::monotonic()`).
    pub fn allows(&self, now: f64) -> bool {
        now >= f64::from_bits(self.off_until.load(Relaxed))
    }

    /// Notes how a try that ended at `now` went: whether it found the CPUs
    /// oversubscribed.
    pub fn record(&self, contended: bool, now: f64) {
        let last = f64::from_bits(self.last.load(Relaxed));
        if contended {
            let next = (last * 2.0).clamp(Self::MIN, Self::MAX);
            self.last.store(next.to_bits(), Relaxed);
            self.off_until.store((now + next).to_bits(), Relaxed);
        } else if last != 0.0 {
            // Shrinks slowly: on a machine where one try in two is kept off its CPU
            // (two busy processes on two CPUs), the back-off still grows to `MAX`.
            let next = last * Self::CLEAN;
            let next = if next < Self::MIN / 2.0 { 0.0 } else { next };
            self.last.store(next.to_bits(), Relaxed);
        }
    }
}

/// How long a throttled poster sleeps between looks at the queue.
const THROTTLE_STEP: Duration = Duration::from_micros(50);

impl<T, U: Unpark> Injector<T, U> {
    pub fn new(unpark: U) -> Self {
        Injector {
            queue: PostStack::new(),
            unpark,
            backlog: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            stalled_at: AtomicU64::new(0),
            offer_since: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            cpus: CpuBackoff::default(),
        }
    }

    /// Posts `item`, waking the loop if it is parked. Gives the item back once closed.
    pub fn post(&self, item: T) -> Result<(), T> {
        self.post_with(item, U::unpark)
    }

    /// `post`, with the caller choosing how the wake-up of a parked loop is issued
    /// (`wake` is called with the unparker, at most once).
    pub fn post_with(&self, item: T, wake: impl FnOnce(&U)) -> Result<(), T> {
        match self.queue.push(item) {
            Pushed::Refused(item) => Err(item),
            Pushed::Queued(parked) => {
                if parked {
                    wake(&self.unpark);
                }
                Ok(())
            }
        }
    }

    /// Loop thread: moves every queued item into `out`, in posting order per thread.
    pub fn drain_into(&self, out: &mut Vec<T>) {
        self.queue.take_into(out);
        self.progress.fetch_add(1, Relaxed);
    }

    /// Loop thread: how many posted items it has taken out of the queue and not run yet
    /// (reported as it works through them, and 0 once done; a report is progress).
    /// Without it a drain would look to posters like a caught-up loop while the loop
    /// still had the whole drained backlog to run, and posters faster than the loop
    /// (several of them, sharing the GIL with it) would grow each batch without bound.
    pub fn report_backlog(&self, left: usize) {
        self.backlog.store(left, Relaxed);
        self.progress.fetch_add(1, Relaxed);
    }

    /// Posted items not run yet: queued, or taken by the loop and still to run.
    fn behind(&self) -> usize {
        self.len() + self.backlog.load(Relaxed)
    }

    /// Whether `throttle` would wait: a cheap check to make before giving up the GIL.
    pub fn flooded(&self, t: Throttle) -> bool {
        self.behind() >= t.high && self.stalled_at.load(Relaxed) != self.progress.load(Relaxed) + 1
    }

    /// Poster, after a post, without the GIL: flow control. While `t.high` or more posted
    /// items are not run yet (queued, or taken by the loop and still to run), the poster
    /// sleeps in short steps until fewer than `t.low` are, so a flood of posts cannot
    /// keep the loop's own callbacks and timers waiting behind an ever longer backlog
    /// (posters otherwise outrun a loop that shares the GIL with them). Bounded: after
    /// `t.max_wait` it returns, and if the loop made no progress at all meanwhile, later
    /// posts do not wait again until it does, so a loop that is blocked or not running
    /// costs a poster one wait, not one per post. Returns true if it waited.
    pub fn throttle(&self, t: Throttle) -> bool {
        if !self.flooded(t) {
            return false;
        }
        let progress = self.progress.load(Relaxed);
        let deadline = Instant::now() + t.max_wait;
        while self.behind() >= t.low {
            if Instant::now() >= deadline {
                if self.progress.load(Relaxed) == progress {
                    self.stalled_at.store(progress + 1, Relaxed);
                }
                break;
            }
            std::thread::sleep(THROTTLE_STEP);
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Loop thread: announces a park (unless something is queued), which lasts until
    /// the returned guard is dropped, also when a panic unwinds through the blocking
    /// poll (a park left announced would cost the next post a needless wake-up).
    pub fn park(&self) -> Park<'_, T, U> {
        let parked = self.queue.park();
        Park {
            injector: self,
            parked,
        }
    }

    /// Loop thread: busy-waits (no syscalls but a yield now and then) until something is
    /// queued or `budget` has passed. Meant to be called without the GIL, only while work
    /// the loop is waiting for is in flight. `offer`: posters may hand over to it
    /// meanwhile (see `hand_over`). A yield that kept it off its CPU for `CONTENDED` or
    /// more (or a spin that overran its budget by as much) ends the spin, contended:
    /// more threads want to run than there are CPUs, and spinning takes CPU time from
    /// the very thread that would post.
    pub fn spin_wait(&self, budget: Duration, offer: bool) -> Spun {
        self.released();
        if offer {
            self.offer_since
                .store(clock::monotonic().to_bits(), Release);
        }
        let deadline = Instant::now() + budget;
        let mut i = 0u32;
        let spun = loop {
            if !self.queue.is_empty() {
                break Spun::Arrived;
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) {
                let now = Instant::now();
                if now >= deadline {
                    break if now - deadline >= CONTENDED {
                        Spun::Contended
                    } else {
                        Spun::TimedOut
                    };
                }
                if yield_kept_off() {
                    break if self.queue.is_empty() {
                        Spun::Contended
                    } else {
                        Spun::ArrivedContended
                    };
                }
            } else {
                std::hint::spin_loop();
            }
        };
        self.offer_since.store(0, Relaxed);
        spun
    }

    /// Loop thread: it runs again after a spin or a park, holding the lock it let go of
    /// to wait (the GIL). Ends the first wait of a poster in `hand_over`.
    pub fn resumed(&self) {
        self.resumes.fetch_add(1, Release);
    }

    /// Loop thread: it has let go of that lock to spin or park (`spin_wait` says so
    /// itself). Ends the second wait of a poster in `hand_over`.
    pub fn released(&self) {
        self.releases.fetch_add(1, Release);
    }

    /// Whether the loop thread is spinning, takes hand-overs, and has waited at least
    /// `min_wait` so far. (A post that comes sooner after the loop let go is from a thread
    /// posting back to back: a flood, whose posts are best run in large batches.)
    pub fn offers_hand_over(&self, min_wait: Duration) -> bool {
        let since = self.offer_since.load(Acquire);
        since != 0 && clock::monotonic() - f64::from_bits(since) >= min_wait.as_secs_f64()
    }

    /// Poster, having let go of the lock it shares with the loop thread (the GIL): posts
    /// `item`, then waits (busy) until the loop thread has resumed, at most `take_wait`,
    /// and then until it lets go of the lock again, at most `run_wait`. So the loop
    /// takes the lock first and runs the item at once, and neither thread sleeps on the
    /// lock while the other holds it (each such sleep ends in a thread wake-up, which
    /// costs tens of microseconds on a virtual machine). Meant for a poster that found
    /// `offers_hand_over` true. Gives the item back once closed.
    pub fn hand_over(&self, item: T, take_wait: Duration, run_wait: Duration) -> Result<(), T> {
        let resumes = self.resumes.load(Acquire);
        let releases = self.releases.load(Acquire);
        self.post(item)?;
        let start = Instant::now();
        if changes(&self.resumes, resumes, start + take_wait) {
            changes(&self.releases, releases, start + take_wait + run_wait);
        }
        Ok(())
    }

    /// Poster, having let go of the lock it shares with the loop thread (the GIL):
    /// wakes the parked loop with `unpark`, then yields its CPU. A loop thread woken
    /// onto this CPU (where the scheduler tends to put it) then runs at once and takes
    /// the lock, instead of waiting for this thread to block and finding it holding the
    /// lock again meanwhile (measured, paced posts: p90 post-to-run 11 -> 4 us). Not
    /// while the CPUs are oversubscribed (see `CpuBackoff`): a busy process would then
    /// run its whole time slice first. Returns whether it yielded.
    pub fn wake_and_yield(&self, unpark: &U) -> bool {
        unpark.unpark();
        if !self.cpus.allows(clock::monotonic()) {
            return false;
        }
        let kept_off = yield_kept_off();
        self.cpus.record(kept_off, clock::monotonic());
        true
    }

    /// Loop thread: whether spinning before a park is worth it now (see `CpuBackoff`).
    pub fn may_spin(&self, now: f64) -> bool {
        self.cpus.allows(now)
    }

    /// Loop thread: notes how a spin went (see `CpuBackoff`).
    pub fn spun(&self, spun: Spun) {
        self.cpus.record(spun.contended(), clock::monotonic());
    }

    /// In a forked child, where only the calling thread exists: everything queued. (A
    /// post is a single RMW, so one in progress at the fork either landed or did not. A
    /// take in progress would own its items in a thread that does not exist here: the
    /// caller rules that out (the binding layer takes only while holding the GIL, as
    /// the forking thread does).)
    pub fn drain_after_fork(&self) -> Vec<T> {
        let mut out = Vec::new();
        self.drain_into(&mut out);
        out
    }

    /// Refuses every later post and returns everything accepted but not yet drained.
    pub fn close(&self) -> Vec<T> {
        let mut rest = Vec::new();
        self.queue.close_into(&mut rest);
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
        let park = inj.park();
        assert!(park.may_block());
        inj.post(2).unwrap();
        inj.post(3).unwrap();
        assert_eq!(counter.0.load(SeqCst), 1, "one wake-up per park");
        drop(park);
        inj.drain_into(&mut out);
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn post_with_hands_the_wake_up_of_a_parked_loop_to_the_caller() {
        let counter = Arc::new(CountingUnpark::default());
        let inj = Injector::new(counter.clone());
        let mut wakes = 0;
        inj.post_with(1, |u| {
            wakes += 1;
            inj.wake_and_yield(u);
        })
        .unwrap();
        assert_eq!(wakes, 0, "running loop: no wake-up");
        let mut out = Vec::new();
        inj.drain_into(&mut out);
        let park = inj.park();
        assert!(park.may_block());
        for i in 2..4 {
            inj.post_with(i, |u| {
                wakes += 1;
                inj.wake_and_yield(u);
            })
            .unwrap();
        }
        assert_eq!(
            (wakes, counter.0.load(SeqCst)),
            (1, 1),
            "one wake-up, issued"
        );
        drop(park);
    }

    #[test]
    fn a_park_refuses_to_block_when_items_are_queued() {
        let inj = Injector::new(Arc::new(CountingUnpark::default()));
        inj.post(1).unwrap();
        assert!(!inj.park().may_block());
    }

    #[test]
    fn a_park_ends_when_a_panic_unwinds_through_it() {
        let counter = Arc::new(CountingUnpark::default());
        let inj = Injector::new(counter.clone());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let park = inj.park();
            assert!(park.may_block());
            panic!("the poll failed");
        }));
        assert!(unwound.is_err());
        inj.post(1).unwrap();
        assert_eq!(counter.0.load(SeqCst), 0, "the loop runs: the park is over");
        let mut out = Vec::new();
        inj.drain_into(&mut out);
        let park = inj.park();
        assert!(park.may_block());
        inj.post(2).unwrap();
        assert_eq!(counter.0.load(SeqCst), 1, "the next park is woken");
        drop(park);
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

    const QUICK: Throttle = Throttle {
        high: 4,
        low: 2,
        max_wait: Duration::from_millis(20),
    };

    #[test]
    fn throttle_lets_a_short_queue_through() {
        let inj = Injector::new(Arc::new(CountingUnpark::default()));
        for i in 0..3 {
            inj.post(i).unwrap();
        }
        assert!(!inj.throttle(QUICK));
    }

    #[test]
    fn throttle_waits_until_the_loop_drains_the_backlog() {
        let inj = Arc::new(Injector::new(Arc::new(CountingUnpark::default())));
        for i in 0..4 {
            inj.post(i).unwrap();
        }
        let started = Arc::new(std::sync::Barrier::new(2));
        let drainer = {
            let (inj, started) = (inj.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                let mut out = Vec::new();
                while out.is_empty() {
                    inj.drain_into(&mut out);
                }
                out
            })
        };
        started.wait();
        let throttle = Throttle {
            max_wait: Duration::from_secs(10),
            ..QUICK
        };
        // Whether the drain came before or during the wait, the poster is let go only
        // once the backlog is under `low` (the deadline is far away).
        inj.throttle(throttle);
        assert!(
            inj.len() < throttle.low,
            "let go while the backlog was still there"
        );
        assert_eq!(drainer.join().unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_backlog_the_loop_has_taken_but_not_run_counts() {
        let inj = Injector::new(Arc::new(CountingUnpark::default()));
        for i in 0..4 {
            inj.post(i).unwrap();
        }
        let mut out = Vec::new();
        inj.drain_into(&mut out);
        assert!(
            !inj.flooded(QUICK),
            "drained and not reported: nothing behind"
        );
        inj.report_backlog(out.len());
        assert!(inj.flooded(QUICK), "taken but not run yet: still behind");
        inj.report_backlog(0);
        assert!(!inj.flooded(QUICK));
    }

    #[test]
    fn throttle_stops_waiting_for_a_loop_that_does_not_drain() {
        let inj = Injector::new(Arc::new(CountingUnpark::default()));
        for i in 0..4 {
            inj.post(i).unwrap();
        }
        assert!(inj.throttle(QUICK), "the first poster waits once");
        inj.post(4).unwrap();
        assert!(
            !inj.throttle(QUICK),
            "then no more waits: the loop is stalled"
        );
        let mut out = Vec::new();
        inj.drain_into(&mut out);
        for i in 0..4 {
            inj.post(i).unwrap();
        }
        assert!(
            inj.throttle(QUICK),
            "after a drain, a new backlog is throttled again"
        );
    }

    /// Runs `f` on a thread that shares one CPU with a busy thread, so that a yield of
    /// its lets the busy one run for a while (a time slice).
    fn beside_a_busy_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        // The first CPU this process may run on.
        // SAFETY: `set` is a zeroed, owned cpu_set_t that sched_getaffinity (0: the
        // calling thread) fills and CPU_ISSET only reads.
        let cpu = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .find(|&cpu| libc::CPU_ISSET(cpu, &set))
                .expect("some CPU to run on")
        };
        let pin = || {
            // SAFETY: `set` is a zeroed, owned cpu_set_t; CPU_SET and sched_setaffinity
            // (0: the calling thread) only read and write it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                    0
                );
            }
        };
        let stop = AtomicUsize::new(0);
        let busy_running = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                pin();
                busy_running.store(1, SeqCst);
                while stop.load(SeqCst) == 0 {
                    std::hint::spin_loop();
                }
            });
            let runner = scope.spawn(|| {
                pin();
                while busy_running.load(SeqCst) == 0 {
                    std::thread::yield_now();
                }
                let result = f();
                stop.store(1, SeqCst);
                result
            });
            runner.join().unwrap()
        })
    }

    #[test]
    fn a_spin_kept_off_its_cpu_ends_contended_and_is_noted() {
        let _alone = SPIN_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let inj: Injector<u32, Arc<CountingUnpark>> = Injector::new(Arc::default());
        let spun = beside_a_busy_thread(|| inj.spin_wait(Duration::from_secs(5), false));
        assert_eq!(spun, Spun::Contended);
        // Noted: a back-off begins (no spins or yields for a while, see below).
        inj.spun(spun);
        assert_eq!(f64::from_bits(inj.cpus.last.load(Relaxed)), CpuBackoff::MIN);
    }

    #[test]
    fn a_poster_s_yield_kept_off_its_cpu_is_noted() {
        let _alone = SPIN_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let inj: Injector<u32, Arc<CountingUnpark>> = Injector::new(Arc::default());
        let unpark = Arc::new(CountingUnpark::default());
        let noted = || f64::from_bits(inj.cpus.last.load(Relaxed));
        assert_eq!(noted(), 0.0);
        // (A yield may come back at once, if the busy thread was just switched out: it
        // yields until one is kept off its CPU, for 5 s at most.)
        beside_a_busy_thread(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while noted() == 0.0 && Instant::now() < deadline {
                assert!(inj.wake_and_yield(&unpark));
            }
        });
        assert_eq!(noted(), CpuBackoff::MIN, "a back-off began");
    }

    #[test]
    fn a_poster_does_not_yield_while_the_cpus_are_backed_off() {
        let inj: Injector<u32, Arc<CountingUnpark>> = Injector::new(Arc::default());
        let unpark = Arc::new(CountingUnpark::default());
        assert!(inj.wake_and_yield(&unpark), "a quick yield");
        inj.cpus.record(true, clock::monotonic() + 3600.0);
        assert!(!inj.wake_and_yield(&unpark));
        assert!(!inj.may_spin(clock::monotonic()));
        assert_eq!(unpark.0.load(SeqCst), 2, "each wake-up is issued");
    }

    #[test]
    fn cpu_backoff_grows_while_tries_are_contended_and_ends_with_a_clean_one() {
        let b = CpuBackoff::default();
        assert!(b.allows(0.0));
        b.record(false, 10.0);
        assert!(b.allows(10.0));
        b.record(true, 10.0);
        assert!(!b.allows(10.0 + CpuBackoff::MIN / 2.0));
        assert!(b.allows(10.0 + CpuBackoff::MIN));
        // Contended again right after: twice as long, and so on up to MAX.
        b.record(true, 11.0);
        assert!(!b.allows(11.0 + CpuBackoff::MIN * 1.5));
        assert!(b.allows(11.0 + CpuBackoff::MIN * 2.0));
        for _ in 0..20 {
            b.record(true, 20.0);
        }
        assert!(!b.allows(20.0 + CpuBackoff::MAX * 0.99));
        assert!(b.allows(20.0 + CpuBackoff::MAX));
        // A clean try (a spin that timed out without being kept off its CPU, or got its
        // post; a quick yield) shortens the next back-off by a tenth: one clean try in
        // two still lets it grow.
        b.record(false, 30.0);
        b.record(true, 40.0);
        assert!(!b.allows(40.0 + CpuBackoff::MAX * 0.99));
        assert!(b.allows(40.0 + CpuBackoff::MAX));
        // A run of clean tries brings it back to MIN.
        for _ in 0..100 {
            b.record(false, 50.0);
        }
        b.record(true, 50.0);
        assert!(!b.allows(50.0 + CpuBackoff::MIN / 2.0));
        assert!(b.allows(50.0 + CpuBackoff::MIN));
    }

    /// The spin tests run one at a time: the one that keeps a spinner off its CPU on
    /// purpose would make the others' spins end contended.
    static SPIN_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Spins until something arrives, again after each spin that ended contended (the
    /// machine may be busy), for 10 s at most.
    fn spin_until_arrived(inj: &Injector<u32, Arc<CountingUnpark>>, offer: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spun = inj.spin_wait(deadline - Instant::now(), offer);
            if spun.arrived() || !spun.contended() || Instant::now() >= deadline {
                return spun.arrived();
            }
            inj.resumed();
        }
    }

    #[test]
    fn spin_wait_sees_a_post_from_another_thread() {
        let _alone = SPIN_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let inj = Arc::new(Injector::new(Arc::new(CountingUnpark::default())));
        let poster = {
            let inj = inj.clone();
            std::thread::spawn(move || inj.post(7).unwrap())
        };
        assert!(spin_until_arrived(&inj, false));
        poster.join().unwrap();
        assert!(!inj.is_empty());
    }

    #[test]
    fn a_hand_over_is_offered_only_while_spinning_and_ends_when_the_loop_resumes() {
        let _alone = SPIN_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let inj = Arc::new(Injector::new(Arc::new(CountingUnpark::default())));
        assert!(!inj.offers_hand_over(Duration::ZERO));
        let poster = {
            let inj = inj.clone();
            std::thread::spawn(move || {
                while !inj.offers_hand_over(Duration::from_micros(1)) {
                    std::hint::spin_loop();
                }
                // Returns once the loop has resumed and let go again (the bounds are
                // only a safety net).
                let forever = Duration::from_secs(10);
                inj.hand_over(7, forever, forever).unwrap();
                (inj.resumes.load(Acquire), inj.releases.load(Acquire))
            })
        };
        assert!(spin_until_arrived(&inj, true));
        assert!(
            !inj.offers_hand_over(Duration::ZERO),
            "the offer ends with the spin"
        );
        inj.resumed();
        inj.released();
        // (One spin, so (1, 2), unless the machine was busy and a spin ended contended
        // before the post: each spin counts a release, each resume after one a resume.)
        let (resumes, releases) = poster.join().unwrap();
        assert!(resumes >= 1, "the poster waited for the loop to resume");
        assert!(releases >= 2, "and then to let go again");
        let mut out = Vec::new();
        inj.drain_into(&mut out);
        assert_eq!(out, vec![7]);
        // A spin that does not offer: posters see no offer.
        assert!(!inj.spin_wait(Duration::from_micros(10), false).arrived());
        assert!(!inj.offers_hand_over(Duration::ZERO));
    }
}
