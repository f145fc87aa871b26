//! One loop iteration and the loops around it: `_run_once`, `_run_forever_core`
//! (between `_enter_running` and `_leave_running`), `_close_core`, `_after_fork`.
//! An iteration runs only the callbacks that were ready when it began (after polling),
//! as the stock loop does; the GIL is released while parked, and while briefly
//! spinning after a quick cross-thread wake-up.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyRecursionError, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyString, PyTuple};
use weaveloop_engine::{clock, Readiness, Wait};

use crate::errors;
use crate::handles::{Callback, CallbackError, EmptyContext, Handle};
use crate::interop;
use crate::loop_core::{lock, LoopCore, Ready, Shared, Watchers};
use crate::posted::Posted;

/// asyncio's cap on one poll: a day.
const MAX_POLL: f64 = 24.0 * 3600.0;
/// How long the loop spins (GIL released, no syscalls) before parking in epoll, when
/// nothing is ready but another thread is likely to post within that time: only after a
/// wake-up by a post that came that quickly (an executor round trip, a thread in
/// ping-pong with the loop), and only until a spin finds nothing. An idle loop, or one
/// fed by a slow trickle of posts, never spins; it parks as any loop does.
const SPIN: Duration = Duration::from_micros(50);
/// While spinning, the loop takes hand-overs of the GIL from posting threads (see
/// `Injector::hand_over`) if its last iteration ran at most this many callbacks: a
/// thread in ping-pong with the loop (`run_coroutine_threadsafe().result()`, paced
/// posts), not a flood, whose posts are best run in large batches.
const HAND_OVER_BATCH: usize = 16;
/// How many posted callbacks the loop runs between two reports of its backlog to flow
/// control (`Injector::report_backlog`): often enough for a throttled poster to see the
/// backlog shrink within its wait, seldom enough that posters rarely see the report's
/// cache line change.
const BACKLOG_REPORT_STEP: usize = 256;
/// How deep `_run_once()` may nest (from callbacks) before it raises RecursionError.
const MAX_NESTED_RUNS: usize = 200;
/// Timer heap compaction thresholds (asyncio's).
const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;

/// How a timed run (debug mode) ended. It may fail before its callback starts: a
/// replaced clock's error, or a KeyboardInterrupt a signal handler raised in that clock's
/// Python code; the callback has not run then, and must not be lost.
enum Timed {
    NotRun(PyErr),
    Ran(PyResult<()>),
}

/// KeyboardInterrupt and SystemExit: raised out of the loop, never reported as errors.
pub(crate) fn is_fatal(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyKeyboardInterrupt>(py) || e.is_instance_of::<PySystemExit>(py)
}

impl LoopCore {
    /// A cancelled timer left the heap: one less in the count that decides compaction
    /// (saturating at zero).
    fn cancelled_timer_left_heap(&self) {
        let _ = self
            .cancelled_in_heap
            .fetch_update(Relaxed, Relaxed, |c| c.checked_sub(1));
    }

    /// Drops cancelled timers: all of them when they are the majority, else from the head.
    fn housekeep_timers(&self) {
        let dead = {
            let mut timers = lock(&self.timers);
            let n = timers.len();
            if n > MIN_SCHEDULED_FOR_COMPACTION && self.cancelled_in_heap.load(Relaxed) * 2 > n {
                let dead = timers.remove_where(|h| h.get().cb.is_cancelled());
                self.cancelled_in_heap.store(0, Relaxed);
                dead
            } else {
                let mut dead = Vec::new();
                while let Some((_, h)) = timers.peek() {
                    if !h.get().cb.is_cancelled() {
                        break;
                    }
                    if let Some((_, h)) = timers.pop() {
                        dead.push(h);
                    }
                    self.cancelled_timer_left_heap();
                }
                dead
            }
        };
        for h in &dead {
            h.get().scheduled.store(false, Relaxed);
        }
        drop(dead);
    }

    /// How long the poll may block: not at all when work is ready, until the next
    /// timer, or forever. On the loop's own clock the wait ends at the timer's
    /// deadline itself (`Wait::Until`, which the poller arms once for all the polls
    /// that wait on that timer); a replaced clock's deadline is turned into a duration.
    fn poll_timeout(&self, slf: &Bound<'_, LoopCore>) -> PyResult<Wait> {
        if self.stopping.load(Relaxed)
            || !lock(&self.ready).is_empty()
            || self.batch.with(slf.py(), |batch| !batch.is_empty())
        {
            return Ok(Wait::For(Duration::ZERO));
        }
        let Some(when) = lock(&self.timers).peek().map(|(when, _)| when) else {
            return Ok(Wait::Forever);
        };
        let now = self.now(slf)?;
        let secs = when - now;
        if !self.custom_clock.load(Relaxed) && (0.0..=MAX_POLL).contains(&secs) {
            return Ok(Wait::Until(when));
        }
        // NaN (an infinite `when` by a replaced clock at infinity): at once, as stock's
        // max(0, nan).
        let secs = if secs.is_nan() {
            0.0
        } else {
            secs.clamp(0.0, MAX_POLL)
        };
        Ok(Wait::For(Duration::from_secs_f64(secs)))
    }

    fn poll(
        &self,
        py: Python<'_>,
        shared: &Shared,
        mut wait: Wait,
        events: &mut Vec<Readiness>,
    ) -> PyResult<()> {
        const NOW: Wait = Wait::For(Duration::ZERO);
        let idle = wait != NOW;
        let idle_since = if idle { clock::monotonic() } else { 0.0 };
        if idle && self.spin_worthy.load(Relaxed) && shared.injector.may_spin(idle_since) {
            let budget = match wait {
                Wait::Forever => SPIN,
                Wait::For(t) => t.min(SPIN),
                Wait::Until(deadline) => Duration::try_from_secs_f64(deadline - idle_since)
                    .map_or(Duration::ZERO, |t| t.min(SPIN)),
            };
            let offer = self.last_batch.load(Relaxed) <= HAND_OVER_BATCH;
            let spun = py.detach(|| shared.injector.spin_wait(budget, offer));
            shared.injector.resumed();
            shared.injector.spun(spun);
            if spun.arrived() {
                wait = NOW;
            } else {
                self.spin_worthy.store(false, Relaxed);
                // The spin took its part of the wait: park only for the rest, or a timer
                // due meanwhile fires up to a spin late. (A deadline needs no change.)
                if let Wait::For(t) = wait {
                    let spent = (clock::monotonic() - idle_since).max(0.0);
                    wait = Wait::For(t.saturating_sub(Duration::from_secs_f64(spent)));
                }
            }
        }
        let result = if wait == NOW {
            // Without the GIL, as the stock loop's select(0): a thread waiting for the
            // GIL (back from blocking I/O, rule 1) gets it now, not at the next forced
            // switch 5 ms away, even while the loop always has work ready.
            py.detach(|| shared.poller.poll(wait, events))
        } else {
            self.spent.trim(py);
            // The handshake of stack.rs: a park is announced only if nothing is queued.
            let park = shared.injector.park();
            let t = if park.may_block() { wait } else { NOW };
            let r = py.detach(|| {
                shared.injector.released();
                shared.poller.poll(t, events)
            });
            shared.injector.resumed();
            drop(park);
            // Spin next time only if this wake-up, by another thread, came within the
            // spin budget: ping-pong with a worker or a posting thread, not a slow trickle.
            let quick = clock::monotonic() - idle_since <= SPIN.as_secs_f64();
            self.spin_worthy
                .store(quick && !shared.injector.is_empty(), Relaxed);
            r
        };
        match result {
            Ok(()) => Ok(()),
            // A signal arrived: run the Python handlers (Ctrl+C raises KeyboardInterrupt).
            Err(e) if e.kind() == io::ErrorKind::Interrupted => py.check_signals(),
            Err(e) => Err(errors::os_error(e)),
        }
    }

    /// Queues the watchers of ready fds. A watcher whose handle was cancelled (asyncio
    /// lets code cancel the handle it finds in the selector key) is removed instead, as
    /// the stock loop does; left registered, its level-triggered fd would spin the loop.
    fn dispatch_io(&self, py: Python<'_>, shared: &Shared, events: &[Readiness]) {
        if events.is_empty() {
            return;
        }
        let mut dropped: Vec<Py<Handle>> = Vec::new();
        let mut emptied: Vec<Watchers> = Vec::new();
        {
            let mut watchers = lock(&self.watchers);
            let mut ready = lock(&self.ready);
            for ev in events {
                let Some(w) = watchers.get_mut(&ev.fd) else {
                    continue;
                };
                let mut changed = false;
                for (fired, slot) in [(ev.readable, &mut w.reader), (ev.writable, &mut w.writer)] {
                    if !fired {
                        continue;
                    }
                    match slot {
                        Some(h) if h.get().cb().is_cancelled() => {
                            dropped.extend(slot.take());
                            changed = true;
                        }
                        Some(h) => ready.push_back(Ready::Watcher(h.clone_ref(py))),
                        None => {}
                    }
                }
                if changed {
                    let interest = w.interest();
                    // Refused: the fd was closed since; the poller forgot it, and so does
                    // the table (the other side too).
                    let refused = shared.poller.watch(ev.fd, interest).is_err();
                    if refused || (!interest.read && !interest.write) {
                        emptied.extend(watchers.remove(&ev.fd));
                    }
                }
            }
        }
        // Dropped with no lock held: releasing a callback or the registered file object
        // can run arbitrary Python code.
        drop((dropped, emptied));
    }

    /// Moves the timers due by `now` (plus the clock's resolution) to the ready queue.
    fn collect_due_timers(&self, now: f64) {
        let end = now + self.clock_resolution;
        let mut timers = lock(&self.timers);
        if timers.peek().is_none_or(|(when, _)| when >= end) {
            return;
        }
        let mut due = Vec::new();
        timers.pop_all_due(end, &mut due);
        drop(timers);
        for h in &due {
            h.get().scheduled.store(false, Relaxed);
            if h.get().cb.is_cancelled() {
                self.cancelled_timer_left_heap();
            }
        }
        lock(&self.ready).extend(due.into_iter().map(Ready::Timer));
    }

    /// Runs what was ready when called; a KeyboardInterrupt/SystemExit stops the batch
    /// and puts the rest back at the front of the queue, so nothing is lost.
    fn run_ready(&self, slf: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = slf.py();
        // What is ready now joins the batch: behind what an outer iteration (this one
        // runs nested, from one of its callbacks) has not run yet, which this one then
        // runs first, as the stock loop's nested iteration finds it at the head of its
        // queue. It runs that many entries, not what its callbacks add.
        let (n, mut posted_left) = self.batch.with(py, |batch| {
            let mut ready = lock(&self.ready);
            if batch.is_empty() {
                std::mem::swap(batch, &mut *ready); // (each keeps its capacity)
            } else {
                batch.extend(ready.drain(..));
            }
            // Flow control counts the posted callbacks of this batch as not run yet until
            // they are (see Injector::report_backlog), told every BACKLOG_REPORT_STEP.
            let posted = batch
                .iter()
                .filter(|item| matches!(item, Ready::Posted(_)))
                .count();
            (batch.len(), posted)
        });
        self.last_batch.store(n, Relaxed);
        let mut empty = std::mem::take(&mut *lock(&self.empty_context));
        let mut result = Ok(());
        let injector = &self.shared.get().injector;
        if posted_left > 0 {
            injector.report_backlog(posted_left);
        }
        for _ in 0..n {
            // Once a nested iteration has run the rest, this one goes on with what is
            // ready, up to its count, as the stock loop's pops its queue that many times.
            let Some(item) = self
                .batch
                .with(py, VecDeque::pop_front)
                .or_else(|| lock(&self.ready).pop_front())
            else {
                break;
            };
            // (Looked at for each callback, as the stock loop does: one may switch debug
            // mode for the rest of the batch.)
            let r = if self.is_debug() {
                match self.run_item_timed(slf, &item, &mut empty) {
                    Timed::Ran(r) => r,
                    Timed::NotRun(e) => {
                        // It goes back with the rest of the batch: lost, it would be a
                        // future's wake-up that never comes.
                        self.batch.with(py, |batch| batch.push_front(item));
                        result = Err(e);
                        break;
                    }
                }
            } else {
                self.run_item(slf, &item, true, None, &mut empty)
            };
            // A posted handle's object may serve a later post (see spent.rs).
            if let Ready::Posted(h) = item {
                self.spent.keep(py, h);
                posted_left -= 1;
                if posted_left % BACKLOG_REPORT_STEP == 0 {
                    injector.report_backlog(posted_left);
                }
            } else {
                drop(item);
            }
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            // (A KeyboardInterrupt/SystemExit: the rest waits, first in the queue.)
            self.requeue_batch(py);
        } else if posted_left > 0 {
            injector.report_backlog(0); // a nested iteration ran them
        }
        *lock(&self.empty_context) = empty;
        result
    }

    /// Puts what the batch holds back at the front of the ready queue, in its order.
    fn requeue_batch(&self, py: Python<'_>) {
        let rest = self.batch.with(py, std::mem::take);
        let mut ready = lock(&self.ready);
        for item in rest.into_iter().rev() {
            ready.push_front(item);
        }
    }

    /// Runs one ready entry; `release`: a one-shot handle drops its callable after.
    /// `face`: the handle object to name in an error report (made on demand if None).
    fn run_item(
        &self,
        slf: &Bound<'_, LoopCore>,
        item: &Ready,
        release: bool,
        face: Option<&Bound<'_, PyAny>>,
        empty: &mut EmptyContext,
    ) -> PyResult<()> {
        let py = slf.py();
        let (cb, once): (&Callback, bool) = match item {
            Ready::Soon(cb) => (cb, release),
            Ready::Posted(h) => (h.get().cb(), release),
            Ready::Watcher(h) => (h.get().cb(), false),
            Ready::Timer(h) => (&h.get().cb, release),
            Ready::Foreign(h) => {
                let h = h.bind(py);
                if h.getattr(crate::intern!(py, "_cancelled"))?.is_truthy()? {
                    return Ok(());
                }
                let run = h.getattr(crate::intern!(py, "_run"))?;
                return interop::call_with_tuple(&run, &PyTuple::empty(py)).map(drop);
            }
        };
        if cb.is_cancelled() {
            return Ok(());
        }
        let result = match cb.run(py, once, empty) {
            Ok(()) => return Ok(()),
            Err(e) if is_fatal(py, &e.err) => Err(e.err),
            Err(e) => {
                let face = match face {
                    Some(face) => face.clone(),
                    // Allocating it can only fail with MemoryError: still report the
                    // callback's own error (naming no handle) and release it below.
                    None => item.handle_object(py).map_or_else(
                        |failed| {
                            failed.write_unraisable(py, None);
                            py.None().into_bound(py)
                        },
                        |face| face.into_bound(py),
                    ),
                };
                report_callback_error(slf, e, &face)
            }
        };
        if once {
            cb.release(py);
        }
        result
    }

    fn run_item_timed(
        &self,
        slf: &Bound<'_, LoopCore>,
        item: &Ready,
        empty: &mut EmptyContext,
    ) -> Timed {
        let py = slf.py();
        if item.is_cancelled() {
            // As the stock loop, which passes over a cancelled handle before it times one:
            // no `_current_handle`, no slow-callback warning for it.
            return Timed::Ran(self.run_item(slf, item, true, None, empty));
        }
        let handle = match item.handle_object(py) {
            Ok(handle) => handle,
            // No object to time it under (MemoryError): it still runs, untimed.
            Err(failed) => {
                return Timed::Ran(self.run_item(slf, item, true, None, empty).and(Err(failed)))
            }
        };
        let handle = handle.bind(py);
        // As asyncio in debug mode: the exception handler then says where the running
        // handle was created. Set as the stock loop's `self._current_handle = handle`
        // is: past weaveloop.Loop's own `__setattr__`, so that no Python code runs (and
        // no signal handler can raise between the callback leaving the queue and
        // running), but through a subclass's, as that statement would be.
        let current = crate::intern!(py, "_current_handle");
        let set_current = |value: &Bound<'_, PyAny>| {
            if self.plain_setattr.load(Relaxed) {
                interop::set_plain_attr(slf.as_any(), current, value)
            } else {
                slf.setattr(current, value)
            }
        };
        if let Err(e) = set_current(handle) {
            return Timed::NotRun(e);
        }
        // Timed on the scheduler's clock, as the stock loop times it with `self.time()`:
        // a replaced `time()` (a virtual clock) decides what is slow. Its error (or a
        // KeyboardInterrupt raised in its Python code) comes before the callback runs.
        let t0 = match self.now(slf) {
            Ok(t0) => t0,
            Err(e) => {
                // (The clock's error is the one to raise; clearing a set attribute
                // fails only if memory does, and then the next run sets it again.)
                let _ = set_current(&py.None().into_bound(py));
                return Timed::NotRun(e);
            }
        };
        // Keep the callable until the slow-callback message has named it.
        let r = self.run_item(slf, item, false, Some(handle), empty);
        let t1 = self.now(slf);
        let cleared = set_current(&py.None().into_bound(py));
        Timed::Ran(self.after_timed_run(slf, item, handle, r.and(cleared), t0, t1))
    }

    /// A timed run's end: the slow-callback warning, then the callable let go.
    fn after_timed_run(
        &self,
        slf: &Bound<'_, LoopCore>,
        item: &Ready,
        handle: &Bound<'_, PyAny>,
        r: PyResult<()>,
        t0: f64,
        t1: PyResult<f64>,
    ) -> PyResult<()> {
        let py = slf.py();
        if r.is_err() {
            // A KeyboardInterrupt/SystemExit: as on the stock loop, it leaves before the
            // duration is looked at (no "took" warning for it).
            item.release(py);
            return r;
        }
        let dt = match t1 {
            Ok(t1) => t1 - t0,
            Err(e) => {
                item.release(py);
                return Err(e);
            }
        };
        // The stock loop's `dt >= self.slow_callback_duration`, a Python comparison: a
        // duration it cannot compare raises its TypeError (after the callback's outcome).
        let dt = PyFloat::new(py, dt);
        let slow = slf
            .getattr(crate::intern!(py, "slow_callback_duration"))
            .and_then(|limit| dt.ge(limit));
        let logged = match &slow {
            Ok(true) => interop::format_handle(py)
                .and_then(|f| interop::call_with_slice(f, &[handle.as_ptr()]))
                .and_then(|formatted| {
                    let message = PyString::new(py, "Executing %s took %.3f seconds");
                    let logger = interop::asyncio_logger(py)?;
                    let warning = crate::intern!(py, "warning");
                    interop::call_method(&logger, warning, &[&message, &formatted, &dt])
                })
                .map(drop),
            _ => Ok(()),
        };
        item.release(py);
        logged?;
        slow.map(drop)
    }

    /// One iteration: poll (blocking at most until the next timer), then run what is ready.
    pub(crate) fn run_once(&self, slf: &Bound<'_, LoopCore>) -> PyResult<()> {
        self.in_run_once.fetch_add(1, Relaxed);
        let result = self.run_once_inner(slf);
        // (Saturating: a forked child may have reset it meanwhile, see `_after_fork`.)
        let _ = self
            .in_run_once
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        result
    }

    fn run_once_inner(&self, slf: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = slf.py();
        // Signals that arrived meanwhile, handled once per iteration as the stock loop's
        // Python code does: callbacks that run no Python code (a C callable that
        // reschedules itself) would otherwise keep a pending Ctrl+C from being noticed
        // until a poll is interrupted, which, with the wake-up fd someone else's, it
        // is not.
        py.check_signals()?;
        let shared = self.shared.get();
        self.housekeep_timers();
        let wait = self.poll_timeout(slf)?;
        let mut events = Vec::new();
        self.poll(py, shared, wait, &mut events)?;
        // Posted callbacks, then I/O watchers, then due timers, then what completions
        // schedule (see queue_posted): the stock loop's order.
        let done = self.queue_posted(shared);
        self.dispatch_io(py, shared, &events);
        // (A replaced clock that raises: the completions are still settled.)
        let now = self.now(slf);
        if let Ok(now) = now {
            self.collect_due_timers(now);
        }
        self.settle_all(slf, done)?;
        now?;
        self.run_ready(slf)
    }
}

/// Hands a callback's exception to the loop's exception handler, with asyncio's keys.
fn report_callback_error(
    slf: &Bound<'_, LoopCore>,
    e: CallbackError,
    handle: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = slf.py();
    let (err, callback, args, source_traceback) = (e.err, e.callback, e.args, e.source_traceback);
    let args = args.to_tuple(py)?;
    let debug = slf.get().is_debug();
    let src = interop::format_callback(py, callback.bind(py), args.bind(py), debug)?;
    let context = PyDict::new(py);
    context.set_item("message", format!("Exception in callback {src}"))?;
    let exc = errors::exception(py, &err);
    context.set_item("exception", &exc)?;
    context.set_item("handle", handle)?;
    if let Some(tb) = source_traceback {
        context.set_item("source_traceback", tb)?;
    }
    // The handler runs as asyncio's does, inside the `except` that caught the error.
    let handler = slf.getattr(crate::intern!(py, "call_exception_handler"))?;
    let args = PyTuple::new(py, [context])?;
    interop::while_handling(exc.as_any(), || interop::call_with_tuple(&handler, &args)).map(drop)
}

#[pymethods]
impl LoopCore {
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.in_run_once.load(Relaxed) >= MAX_NESTED_RUNS {
            // Each level holds native frames on the C stack, more than the stock loop's
            // Python frames: deep enough, and with a raised recursion limit, it would
            // overflow that stack rather than raise.
            return Err(PyRecursionError::new_err(
                "maximum recursion depth exceeded in nested _run_once()",
            ));
        }
        this.wait_for_foreign_drain(slf.py());
        this.run_once(slf)
    }

    /// Marks the loop running on this thread: a step of `_run_forever_setup`, before
    /// the Python side sets up asyncgen hooks and the running-loop marker. From then on
    /// `_run_once()` may be called by hand (a GUI toolkit's loop driving this one, as
    /// 3.13 lets it) or by `_run_forever_core`, until `_leave_running`.
    fn _enter_running(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.closing() {
            return Err(errors::loop_closed()); // (a callback that close() runs)
        }
        this.wait_for_foreign_drain(slf.py());
        if this
            .owner
            .compare_exchange(0, interop::thread_ident(), Relaxed, Relaxed)
            .is_err()
        {
            return Err(errors::already_running());
        }
        this.shared().set_running(true);
        Ok(())
    }

    /// Runs iterations until `stop()`, between `_enter_running` and `_leave_running`.
    fn _run_forever_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.owner.load(Relaxed) != interop::thread_ident() {
            return Err(PyRuntimeError::new_err(
                "the loop is not set up to run on this thread (_run_forever_setup)",
            ));
        }
        loop {
            this.run_once(slf)?;
            if this.stopping.load(Relaxed) {
                return Ok(());
            }
        }
    }

    /// Undoes `_enter_running` (the first step of `_run_forever_cleanup`); nothing if
    /// the loop is not running on this thread.
    fn _leave_running(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.owner.load(Relaxed) != interop::thread_ident() {
            return Ok(());
        }
        this.stopping.store(false, Relaxed);
        this.owner.store(0, Relaxed);
        // Posts and completions that came in since the last look stay where the GC sees
        // them; later ones are applied by their posters (see Shared::running).
        this.shared().set_running(false);
        this.drain_while_idle(slf)
    }

    /// Closes the Rust side: executor futures still in flight are cancelled (their jobs
    /// still run, see `Shared::abandon`), later posts are refused, callbacks other
    /// threads posted before the close are still run (so such a post either runs or
    /// raises), queues and fd registrations are dropped (and the dropped callbacks'
    /// references released, see `Ready::release`). `run_posted=False`: the loop was
    /// abandoned (its finalizer closes it); nothing runs, as the stock loop drops its
    /// ready queue then, rather than run callbacks inside the garbage collector.
    #[pyo3(signature = (run_posted = true))]
    fn _close_core(slf: &Bound<'_, Self>, run_posted: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.owner.load(Relaxed) != 0 {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        // (Also when a callback that close() runs closes the loop again.)
        if this.closed_or_closing() {
            return Ok(());
        }
        let shared = this.shared();
        let in_flight: Vec<Py<PyAny>> = lock(&this.in_flight).drain().map(|(_, f)| f).collect();
        for fut in &in_flight {
            let fut = fut.bind(py);
            if !fut.call_method0(crate::intern!(py, "done"))?.is_truthy()? {
                shared.abandon(&fut.clone().unbind());
                fut.call_method0(crate::intern!(py, "cancel"))?;
            }
        }
        drop(in_flight);
        // From here on, posts are refused (they raise) and none goes straight to the
        // ready queue (see `idle`).
        this.closer.store(interop::thread_ident(), Relaxed);
        let leftovers = shared.injector.close();
        // Callbacks other threads posted still run (they may have raced this close, and
        // each post runs or raises): those already moved to the ready queue first (they
        // were posted earlier), then the injector's. They run before the loop is marked
        // closed, so what they schedule (a future's done callbacks, say) is dropped with
        // the rest, silently, instead of failing with "Event loop is closed". The rest of
        // the ready queue is dropped, as asyncio's close() does, and so are the callbacks
        // this thread posted itself, before closing (tornado's add_callback posts so).
        // (From a callback of an iteration run by hand, `_run_once()`: what it has not
        // run yet is dropped too, as the stock loop's close() clears its whole queue.)
        let mut ready: VecDeque<Ready> = this.batch.with(py, std::mem::take);
        ready.extend(std::mem::take(&mut *lock(&this.ready)));
        let late = leftovers.into_iter().filter_map(|item| match item {
            Posted::Call(h) => Some(Ready::Posted(h)),
            // A completion whose future is already cancelled above: nothing to do.
            Posted::Done(done) => {
                drop(this.untrack_in_flight(&done.fut));
                None
            }
            Posted::Nudge => None,
        });
        let (posted, dropped): (Vec<Ready>, Vec<Ready>) = ready
            .into_iter()
            .chain(late)
            .partition(|r| run_posted && matches!(r, Ready::Posted(h) if !h.get().posted_here()));
        let mut fatal = None;
        let mut empty = EmptyContext::default();
        for item in posted {
            if let Err(e) = this.run_item(slf, &item, true, None, &mut empty) {
                fatal.get_or_insert(e);
            }
        }
        this.closed.store(true, Relaxed);
        this.closer.store(0, Relaxed);
        // What is dropped is let go once the loop is closed, as the stock close() clears
        // its queue: a finalizer that schedules a callback then is told the loop is closed.
        dropped.iter().for_each(|r| r.release(py));
        drop(dropped);
        this.spent.clear(py);
        let scheduled: VecDeque<Ready> = std::mem::take(&mut *lock(&this.ready));
        scheduled.iter().for_each(|r| r.release(py));
        drop(scheduled);
        let timers = lock(&this.timers).drain();
        for t in &timers {
            t.get().scheduled.store(false, Relaxed);
            t.get().cb.release(py);
        }
        drop(timers);
        let watchers: Vec<_> = lock(&this.watchers).drain().collect();
        drop(watchers);
        // As the stock loop closes its selector: the poller's fds (epoll, timerfd, eventfd)
        // go now.
        shared.poller.close();
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Just before a fork, in the parent: notes the watched fds that were closed without
    /// being removed, for `_after_fork`.
    fn _before_fork(&self) {
        self.shared().poller.note_stale_before_fork();
    }

    /// In a forked child: a fresh epoll fd, eventfd and injector; fds re-registered;
    /// executor jobs of the parent (whose threads do not exist here) are cancelled.
    fn _after_fork(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // A loop that ran in another thread of the parent is not running here: that
        // thread does not exist in the child. (One run by the thread that forked goes on.)
        if this.owner.load(Relaxed) != interop::thread_ident() {
            // Nor does the task it was stepping, which asyncio still records as the
            // loop's current one (every task would then fail to enter).
            // (Reported, not raised: the rest of the reset must happen.)
            if let Err(e) = interop::forget_current_task(slf.as_any()) {
                e.write_unraisable(py, None);
            }
            this.owner.store(0, Relaxed);
            this.stopping.store(false, Relaxed);
            // Nor is it applying a drained batch or inside an iteration (it may have
            // been, in that thread).
            this.applying_posted.store(false, Relaxed);
            this.in_run_once.store(0, Relaxed);
            // What its iteration had not run yet waits first in the queue, as in the
            // stock loop's ready deque, which such an iteration takes from one by one.
            this.requeue_batch(py);
        }
        // Nor is another thread of the parent closing it (one that was running what
        // other threads posted, see _close_core): the loop is open here.
        // The close is not finished here, and cannot be (its Python half, which ran
        // first, has closed the self-pipe): the loop counts as closed, and its fresh
        // poller goes with it below.
        let closer = this.closer.load(Relaxed);
        let closed_elsewhere = closer != 0 && closer != interop::thread_ident();
        if closed_elsewhere {
            this.closed.store(true, Relaxed);
            this.closer.store(0, Relaxed);
        }
        // A thread of the parent that was settling completions for the idle loop (see
        // drain_while_idle) does not exist here either: the loop must not wait for it.
        if this.drainer.load(Relaxed) != interop::thread_ident() {
            this.drainer.store(0, Relaxed);
        }
        // Callbacks posted before the fork still run in the child, as with the stock
        // loop (its ready deque is copied); the parent's executor completions do not
        // apply here (their futures are cancelled below).
        for item in this.shared().injector.drain_after_fork() {
            if let Posted::Call(h) = item {
                this.push_ready(Ready::Posted(h));
            }
        }
        let fresh = Shared::new()?;
        // A watched fd that was closed without being removed cannot be registered: its
        // watchers are dropped, the reset goes on, and the first such error is raised
        // once it is complete. Its number may be another file's by now, one the parent
        // opened since or one of the fresh poller's own: what the parent's epoll set
        // said of it just before the fork tells (`_before_fork`).
        let old = &this.shared().poller;
        let mut refused = None;
        let stale: Vec<Watchers> = {
            let mut watchers = lock(&this.watchers);
            let mut stale_fds = Vec::new();
            for (fd, w) in watchers.iter() {
                let registered = if old.stale_at_fork(*fd) {
                    Err(std::io::Error::from_raw_os_error(libc::EBADF))
                } else {
                    fresh.poller.watch(*fd, w.interest())
                };
                if let Err(e) = registered {
                    stale_fds.push(*fd);
                    refused.get_or_insert(e);
                }
            }
            stale_fds
                .iter()
                .filter_map(|fd| watchers.remove(fd))
                .collect()
        };
        drop(stale);
        // The parent's epoll set and eventfd, inherited by this child, are of no use here;
        // closed unless a thread of the parent held the poller's locks at the fork.
        this.shared().poller.close_after_fork();
        this.shared.replace(fresh);
        if closed_elsewhere {
            drop(this.shared().injector.close());
            this.shared().poller.close();
        }
        let in_flight: Vec<Py<PyAny>> = lock(&this.in_flight).drain().map(|(_, f)| f).collect();
        for fut in &in_flight {
            fut.bind(py).call_method0(crate::intern!(py, "cancel"))?;
        }
        match refused {
            Some(e) => Err(errors::os_error(e)),
            None => Ok(()),
        }
    }
}
