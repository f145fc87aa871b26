//! `LoopCore`: the Rust half of `weaveloop.Loop` — ready queue, timer heap, fd watchers,
//! cross-thread injector — and the scheduling methods (`call_soon`, `call_later`, ...).
//! Invariants: no lock here is held while Python code runs or a Python object is dropped
//! (a `__del__` could re-enter the loop); the strict thread check costs one compare.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::PyTraverseError;
use weaveloop_engine::poller::Interest;
use weaveloop_engine::{clock, Injector, Poller, Throttle, TimerHeap};

use crate::errors;
use crate::gil::GilCell;
use crate::handles::{untrack, Callback, EmptyContext, Handle, HeldInterrupt, TimerHandle};
use crate::interop;
use crate::posted::Posted;
use crate::spent::Spent;

/// An entry of the ready queue.
pub enum Ready {
    /// A one-shot callback (`call_soon`, or `call_soon_threadsafe` on the loop thread).
    Soon(Arc<Callback>),
    /// A `call_soon_threadsafe` callback from another thread (moved here from the
    /// injector, or queued here while the loop was idle): like `Soon`, but `close()`
    /// still runs it (a post runs or raises).
    Posted(Py<Handle>),
    /// An fd watcher whose fd is ready; it stays registered.
    Watcher(Py<Handle>),
    Timer(Py<TimerHandle>),
    /// A handle made by Python code (signal handlers use `asyncio.Handle`); run via `_run()`.
    Foreign(Py<PyAny>),
}

impl Ready {
    /// Another reference to the same entry (a snapshot of the queue holds these).
    pub fn clone_ref(&self, py: Python<'_>) -> Ready {
        match self {
            Ready::Soon(cb) => Ready::Soon(Arc::clone(cb)),
            Ready::Posted(h) => Ready::Posted(h.clone_ref(py)),
            Ready::Watcher(h) => Ready::Watcher(h.clone_ref(py)),
            Ready::Timer(h) => Ready::Timer(h.clone_ref(py)),
            Ready::Foreign(h) => Ready::Foreign(h.clone_ref(py)),
        }
    }

    /// For an entry that has run for the last time (a one-shot callback, a timer) or will
    /// never run (the loop closed, or was collected): drops the callable and arguments
    /// of the untracked handles, so that a cycle through one of
    /// them (`obj.h = loop.call_later(t, obj.method)`, a task sleeping on a timer) can
    /// be collected. Watchers and foreign handles are tracked by the GC themselves.
    pub fn release(&self, py: Python<'_>) {
        match self {
            Ready::Soon(cb) => cb.release(py),
            Ready::Posted(h) => h.get().cb().release(py),
            Ready::Timer(h) => h.get().cb.release(py),
            Ready::Watcher(_) | Ready::Foreign(_) => {}
        }
    }

    /// Whether the entry's handle was cancelled (a foreign handle's `_cancelled` flag is
    /// Python's, looked at when it runs: false here).
    pub fn is_cancelled(&self) -> bool {
        match self {
            Ready::Soon(cb) => cb.is_cancelled(),
            Ready::Posted(h) | Ready::Watcher(h) => h.get().cb().is_cancelled(),
            Ready::Timer(h) => h.get().cb.is_cancelled(),
            Ready::Foreign(_) => false,
        }
    }

    /// The handle object for the entry (what `_ready` lists and reports name): for a
    /// `call_soon` callback the one its caller got while that is alive, else a new one
    /// equal to it; otherwise the queued object itself.
    pub fn handle_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Ready::Soon(cb) => Handle::face(py, cb)?,
            Ready::Posted(h) | Ready::Watcher(h) => h.clone_ref(py).into_any(),
            Ready::Timer(h) => h.clone_ref(py).into_any(),
            Ready::Foreign(h) => h.clone_ref(py),
        })
    }
}

/// Reader and writer callbacks registered for one fd.
#[derive(Default)]
pub struct Watchers {
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
    /// The object first registered for the fd (an int or a file object): a file object
    /// closed since is still found by identity, as the selectors module finds it.
    pub fileobj: Option<Py<PyAny>>,
    /// Whether the reader, the writer, is a wait for one readiness (a socket operation's
    /// `SockWait`), which the poller may register one-shot (`Interest::once`).
    pub reader_once: bool,
    pub writer_once: bool,
}

impl Watchers {
    /// What the poller is to watch the fd for: one-shot only if every side watched is.
    pub fn interest(&self) -> Interest {
        interest(
            self.reader.is_some().then_some(self.reader_once),
            self.writer.is_some().then_some(self.writer_once),
        )
    }
}

/// The interest in an fd whose reader and writer are these (Some(once) for a side
/// watched).
pub fn interest(reader: Option<bool>, writer: Option<bool>) -> Interest {
    Interest {
        read: reader.is_some(),
        write: writer.is_some(),
        once: (reader.is_some() || writer.is_some())
            && reader.unwrap_or(true)
            && writer.unwrap_or(true),
    }
}

/// What other threads reach: the poller (for its waker) and the injector.
/// Replaced wholesale in a forked child.
pub struct Shared {
    pub poller: Poller,
    pub injector: Injector<Posted>,
    /// Futures (by address) of fast-path executor jobs that `close()` cancelled to settle
    /// them while their jobs were queued or running. Such a job still runs, as the stdlib
    /// pool runs the jobs of a loop that closed; a job whose future the caller cancelled
    /// does not.
    abandoned: Mutex<HashSet<usize>>,
    /// True while `run_forever` runs. A completion posted while it is false may never
    /// be drained (a loop dropped without `close()`), and the GC cannot look into the
    /// injector, so its poster applies it (see `LoopCore::drain_while_idle`).
    running: AtomicBool,
    /// A weak reference to the loop, for such a poster (set by `know_loop`).
    loop_ref: OnceLock<Py<PyAny>>,
}

impl Shared {
    pub fn new() -> PyResult<Arc<Shared>> {
        let poller = Poller::new().map_err(errors::os_error)?;
        let injector = Injector::new(poller.waker());
        Ok(Arc::new(Shared {
            poller,
            injector,
            abandoned: Mutex::new(HashSet::new()),
            running: AtomicBool::new(false),
            loop_ref: OnceLock::new(),
        }))
    }

    /// Remembers (weakly) the loop this belongs to, for `loop_core`.
    pub fn know_loop(&self, lp: &Bound<'_, LoopCore>) -> PyResult<()> {
        if self.loop_ref.get().is_none() {
            let weak = pyo3::types::PyWeakrefReference::new(lp.as_any())?;
            let _ = self.loop_ref.set(weak.into_any().unbind());
        }
        Ok(())
    }

    /// The loop, if `know_loop` was told and it is still alive.
    pub fn loop_core<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        let lp = self.loop_ref.get()?.bind(py).call0().ok()?;
        lp.cast_into::<LoopCore>().ok()
    }

    /// `run_forever` starts or ends. (SeqCst, with the fence of `drained_by_poster`: a
    /// post either is drained by the ending loop or sees it not running.)
    pub fn set_running(&self, running: bool) {
        self.running.store(running, SeqCst);
        std::sync::atomic::fence(SeqCst);
    }

    /// A poster, right after its post: true if the loop is not running, so the post
    /// must be applied by the poster (see `running`).
    pub fn drained_by_poster(&self) -> bool {
        std::sync::atomic::fence(SeqCst);
        !self.running.load(SeqCst)
    }

    /// `close()`: the job of this (pending) future is left to run.
    pub fn abandon(&self, fut: &Py<PyAny>) {
        lock(&self.abandoned).insert(fut.as_ptr() as usize);
    }

    /// Worker, for a job whose future is already done: true if `close()` settled it
    /// (the job runs anyway), false if the caller cancelled it (the job is skipped).
    pub fn was_abandoned(&self, fut: &Py<PyAny>) -> bool {
        lock(&self.abandoned).remove(&(fut.as_ptr() as usize))
    }
}

/// Where a loop keeps its `Shared`: read on every post with one atomic load (no lock,
/// no thread-local lookup). Replaced only in a forked child; every `Shared` ever stored
/// stays owned by `owners` until the cell is dropped, so a reference loaded before a
/// replacement stays valid for as long as the cell lives.
pub struct SharedCell {
    current: AtomicPtr<Shared>,
    owners: Mutex<Vec<Arc<Shared>>>,
}

impl SharedCell {
    pub fn new(shared: Arc<Shared>) -> Self {
        SharedCell {
            current: AtomicPtr::new(Arc::as_ptr(&shared).cast_mut()),
            owners: Mutex::new(vec![shared]),
        }
    }

    pub fn get(&self) -> &Shared {
        // SAFETY: `current` always points into an Arc held by `owners`, which only grows
        // and is dropped with `self`; so the pointee outlives the returned borrow.
        unsafe { &*self.current.load(Acquire) }
    }

    pub fn arc(&self) -> Arc<Shared> {
        let ptr = self.current.load(Acquire);
        // SAFETY: as in `get`, `ptr` comes from an Arc kept alive by `owners`; bumping
        // its strong count first makes the Arc built from it an owned, counted one.
        unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        }
    }

    /// Makes `fresh` current (in a forked child); the old one stays owned.
    pub fn replace(&self, fresh: Arc<Shared>) {
        let ptr = Arc::as_ptr(&fresh).cast_mut();
        lock(&self.owners).push(fresh);
        self.current.store(ptr, Release);
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a posting thread that hands the GIL over to a spinning loop waits for the
/// loop to take it (the loop's spin looks at its queue every few nanoseconds), and then
/// for the loop to let go of it again (a ping-pong round: a few callbacks).
const HAND_OVER_TAKE_WAIT: Duration = Duration::from_micros(20);
const HAND_OVER_RUN_WAIT: Duration = Duration::from_micros(15);
/// No hand-over to a loop that began to wait less than this long ago: the poster is
/// posting back to back (see `Injector::offers_hand_over`); a thread in ping-pong with
/// the loop does microseconds of Python work between its posts.
const HAND_OVER_MIN_WAIT: Duration = Duration::from_micros(2);

#[pyclass(module = "weaveloop._core", subclass, frozen, weakref)]
pub struct LoopCore {
    pub(crate) ready: Mutex<VecDeque<Ready>>,
    /// What the running iteration has taken from the ready queue and not run yet (and,
    /// between iterations, an empty buffer that keeps its capacity). Not a local of the
    /// iteration: one run nested from a callback (`_run_once`) runs it first.
    pub(crate) batch: GilCell<VecDeque<Ready>>,
    pub(crate) timers: Mutex<TimerHeap<Py<TimerHandle>>>,
    /// Reused by callbacks scheduled from an empty context (see handles.rs).
    pub(crate) empty_context: Mutex<EmptyContext>,
    /// Posted handles run and dropped, whose objects later posts reuse.
    pub(crate) spent: Spent,
    pub(crate) watchers: Mutex<HashMap<RawFd, Watchers>>,
    /// Replaced only in a forked child; loaded with one atomic load on every post.
    pub(crate) shared: SharedCell,
    /// Futures of fast-path executor jobs not yet completed, by address.
    pub(crate) in_flight: Mutex<HashMap<usize, Py<PyAny>>>,
    /// Whether the loop spins briefly before its next park (see run.rs, `SPIN`).
    pub(crate) spin_worthy: AtomicBool,
    /// How many callbacks the last iteration ran (see run.rs, `HAND_OVER_BATCH`).
    pub(crate) last_batch: AtomicUsize,
    /// How many times flow control made a poster wait (see `call_soon_threadsafe`).
    flow_control_waits: AtomicU64,
    /// `threading.get_ident()` of the thread running the loop; 0 when not running.
    pub(crate) owner: AtomicU64,
    pub(crate) closed: AtomicBool,
    /// While `close()` runs what other threads posted, just before the loop is marked
    /// closed (see `_close_core`): `threading.get_ident()` of the closing thread; else 0.
    pub(crate) closer: AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// True while drained completions are settled (`settle_all`): settling runs Python
    /// code, whose `call_soon` must not drain again (that would queue later posts ahead
    /// of the batch's own).
    pub(crate) applying_posted: AtomicBool,
    /// `threading.get_ident()` of a thread other than the loop's applying what waits in
    /// the injector on behalf of the idle loop (`drain_while_idle`); 0 when none. The
    /// loop does not start running meanwhile (see `wait_for_foreign_drain`).
    pub(crate) drainer: AtomicU64,
    /// How many times the loop, about to run, waited for such a thread.
    pub(crate) foreign_drain_waits: AtomicU64,
    /// How many `run_once` calls are under way (more than one only if a callback calls
    /// `_run_once` itself). One may park without the loop running (`_run_once` called
    /// directly, as some libraries do), so a post must then take the injector, whose
    /// handshake wakes the park.
    pub(crate) in_run_once: AtomicUsize,
    pub(crate) debug: AtomicBool,
    pub(crate) strict: AtomicBool,
    /// Python code replaced `time()` (a subclass, or `loop.time = ...` as virtual-clock
    /// test tools do): the scheduler then reads that, as the stock loop calls self.time().
    pub(crate) custom_clock: AtomicBool,
    /// The loop's class sets attributes through weaveloop.Loop's own `__setattr__` (no
    /// subclass overrides it): debug mode then sets `_current_handle` as a plain attribute
    /// (see `run_item_timed`). Looked at when the loop starts running.
    pub(crate) plain_setattr: AtomicBool,
    pub(crate) executor_shutdown_called: AtomicBool,
    pub(crate) default_executor: Mutex<Option<Py<PyAny>>>,
    pub(crate) cancelled_in_heap: Arc<AtomicUsize>,
    /// A `sock_recv` of this loop read 64 KiB or more at once, and fewer than 16 read
    /// less in a row since (the number left; see `sockops.rs`): meanwhile `sock_recv`
    /// is the stock method. Its allocation per read, of the whole size asked for (the
    /// socket module's `recv(n)`), is what glibc's heap keeps warm; exact-size copies
    /// of large reads, many alive at once and each freed as a chunk of 64 KiB or more,
    /// make it trim its top and fault the pages back in on the next read (24 page
    /// faults per round trip of the 100 KiB `sock_*` echo, 8.5 for the stock method's,
    /// 0.1 with glibc's MALLOC_TRIM_THRESHOLD_ raised to 4 MB). Shared with the waiting
    /// operations.
    pub(crate) large_sock_reads: Arc<AtomicUsize>,
    pub(crate) clock_resolution: f64,
}

impl LoopCore {
    /// `create_task`, once the loop is known usable, as asyncio's own does it.
    fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        factory: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let none = py.None().into_bound(py);
        let name = name.unwrap_or(&none);
        let context = context.unwrap_or(&none);
        if factory.is_none() {
            // (The stock loop drops the last frame of the task's source traceback: its
            // own create_task. This one has no Python frame, so the last frame is already
            // the caller's.) A name or context of None is Task's default: left out, the
            // call builds a smaller keyword dict (Task takes no vectorcall).
            let task = interop::asyncio_task(py)?;
            if name.is_none() && context.is_none() {
                let names = interop::kwnames(py, &["loop"])?;
                return interop::call_kw(task, &[coro], names, &[slf.as_any()]);
            }
            let names = interop::kwnames(py, &["loop", "name", "context"])?;
            return interop::call_kw(task, &[coro], names, &[slf.as_any(), name, context]);
        }
        let task = if context.is_none() {
            interop::call_with_slice(factory, &[slf.as_ptr(), coro.as_ptr()])?
        } else {
            let names = interop::kwnames(py, &["context"])?;
            interop::call_kw(factory, &[slf.as_any(), coro], names, &[context])?
        };
        interop::set_task_name(py, &task, name)?;
        Ok(task)
    }

    /// `call_soon_threadsafe`, once the callback is made.
    fn post_threadsafe(slf: &Bound<'_, Self>, cb: Callback) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let owner = this.owner.load(Relaxed);
        let me = interop::thread_ident();
        if owner == me {
            // On the loop's own thread while it runs: no need for the injector.
            let (handle, cb) = Handle::one_shot(py, cb)?;
            this.push_soon(slf, cb)?;
            return Ok(handle);
        }
        let handle = Handle::posted(py, cb, &this.spent)?;
        if this.closer.load(Relaxed) == me {
            // From a callback that close() runs (see `_close_core`): what it schedules is
            // dropped with the rest of the ready queue, as its `call_soon`'s is, instead
            // of failing with "Event loop is closed".
            this.push_ready(Ready::Posted(handle.clone_ref(py)));
            return Ok(handle);
        }
        if this.idle() {
            // Nothing posted earlier may be left behind it: what waits in the injector
            // joins the ready queue first (that runs Python code: settling executor
            // results), then the loop must still be idle.
            let shared = this.shared.get();
            this.drain_while_idle(slf)?;
            // Queued straight into the ready queue, where the GC sees it: a post that
            // refers back to the loop (`loop.stop`, say) must not keep an abandoned loop
            // alive, and the GC cannot look into the injector. Looked at after the
            // allocation and the drain above, which may run Python code (a GC finalizer)
            // that lets another thread start the loop or close it; nothing from here on
            // runs Python code.
            if this.idle() && shared.injector.is_empty() {
                this.push_ready(Ready::Posted(handle.clone_ref(py)));
                return Ok(handle);
            }
        }
        let injector = &this.shared.get().injector;
        let item = Posted::Call(handle.clone_ref(py));
        let posted = if injector.offers_hand_over(HAND_OVER_MIN_WAIT) {
            // The loop spins, waiting for work like this: let go of the GIL before the
            // post, so that the loop takes it at once (see Injector::hand_over).
            py.detach(|| injector.hand_over(item, HAND_OVER_TAKE_WAIT, HAND_OVER_RUN_WAIT))
        } else {
            // Wake a parked loop without the GIL, and let it run first: it then finds
            // the GIL free when it wakes instead of blocking on it until this thread
            // lets go (a second thread wake-up).
            injector.post_with(item, |waker| {
                py.detach(|| injector.wake_and_yield(waker));
            })
        };
        if let Err(refused) = posted {
            drop(refused);
            return Err(errors::loop_closed());
        }
        // The loop is running and far behind: flow control (see Injector::throttle), for
        // plain threads only; a thread that runs a loop of its own must not stall it.
        if owner != 0
            && injector.flooded(Throttle::CALLBACKS)
            && interop::running_loop(py).is_ok_and(|l| l.is_none())
            && py.detach(|| injector.throttle(Throttle::CALLBACKS))
        {
            this.flow_control_waits.fetch_add(1, Relaxed);
        }
        Ok(handle)
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.arc()
    }

    pub(crate) fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Relaxed) {
            return Err(errors::loop_closed());
        }
        Ok(())
    }

    /// Rule 5: non-thread-safe methods only from the thread running the loop. For the
    /// methods asyncio checks in debug mode (call_soon, call_at, create_task): in strict
    /// mode, or in debug mode as asyncio.
    pub(crate) fn check_thread(&self) -> PyResult<()> {
        self.thread_check(self.strict.load(Relaxed) || self.debug.load(Relaxed))
    }

    /// Rule 5 for the methods asyncio never checks (create_future, run_in_executor, the
    /// fd watchers): in strict mode only, so `strict_threads=False` keeps asyncio's
    /// behaviour even in debug mode.
    pub(crate) fn check_thread_strict(&self) -> PyResult<()> {
        self.thread_check(self.strict.load(Relaxed))
    }

    fn thread_check(&self, enabled: bool) -> PyResult<()> {
        let owner = self.owner.load(Relaxed);
        if enabled && owner != 0 && owner != interop::thread_ident() {
            return Err(errors::wrong_thread());
        }
        Ok(())
    }

    pub(crate) fn check_usable(&self) -> PyResult<()> {
        self.check_closed()?;
        self.check_thread()
    }

    /// True on the thread that runs the loop, or on any thread while it is not running:
    /// the threads allowed to drain the injector.
    pub(crate) fn is_drainer(&self) -> bool {
        let owner = self.owner.load(Relaxed);
        owner == 0 || owner == interop::thread_ident()
    }

    /// The scheduler's clock: `time.monotonic()`'s, or what a replaced `time()` says.
    pub(crate) fn now(&self, slf: &Bound<'_, LoopCore>) -> PyResult<f64> {
        if self.custom_clock.load(Relaxed) {
            return interop::call_method(slf, crate::intern!(slf.py(), "time"), &[])?.extract();
        }
        Ok(clock::monotonic())
    }

    /// Not running, not closed, and not inside an iteration (see `in_run_once`): no
    /// thread can be parked waiting for work, or about to park, so a post needs no
    /// wake-up. Only true while the caller holds the GIL, which each of these changes
    /// under.
    pub(crate) fn idle(&self) -> bool {
        self.owner.load(Relaxed) == 0
            && self.in_run_once.load(Relaxed) == 0
            && !self.closed_or_closing()
    }

    /// Whether `close()` is running what other threads posted (see `_close_core`).
    pub(crate) fn closing(&self) -> bool {
        self.closer.load(Relaxed) != 0
    }

    /// Whether the loop will never run a callback of its own again: closed, or closing
    /// (what the callbacks `close()` runs schedule is dropped unrun).
    pub(crate) fn closed_or_closing(&self) -> bool {
        self.closed.load(Relaxed) || self.closing()
    }

    pub(crate) fn is_debug(&self) -> bool {
        self.debug.load(Relaxed)
    }

    /// Queues a callback scheduled on the loop's thread (or while the loop is not
    /// running): what other threads posted before joins the ready queue first, so that
    /// `call_soon` and `call_soon_threadsafe` make one FIFO.
    fn push_soon(&self, slf: &Bound<'_, LoopCore>, cb: Arc<Callback>) -> PyResult<()> {
        let shared = self.shared.get();
        // What other threads posted first goes first. Settling their completions runs
        // Python code; an error from it (a KeyboardInterrupt) is raised once this
        // callback is queued too, not instead of queueing it.
        let drained = if !shared.injector.is_empty() && self.is_drainer() {
            self.drain_posted(slf, shared)
        } else {
            Ok(())
        };
        self.push_ready(Ready::Soon(cb));
        drained
    }

    pub(crate) fn push_ready(&self, item: Ready) {
        lock(&self.ready).push_back(item);
    }

    pub(crate) fn extend_ready(&self, items: impl IntoIterator<Item = Ready>) {
        lock(&self.ready).extend(items);
    }

    fn schedule_at(
        &self,
        when: f64,
        given: Option<Py<PyAny>>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = callback.py();
        self.check_usable()?;
        let mut held = HeldInterrupt::default();
        let debug = self.is_debug().then_some(&mut held);
        let cb = Callback::checked(callback, args, context, method, debug)?;
        let handle = Py::new(
            py,
            TimerHandle::new(cb, when, given, self.cancelled_in_heap.clone()),
        )?;
        untrack(&handle);
        // A NaN deadline (`call_later` on a replaced clock that reads NaN; `call_at`
        // refuses NaN) is due at once, as on the stock loop, where `when >= end` is never
        // true for it; `when()` still says NaN.
        let key = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        lock(&self.timers).push(key, handle.clone_ref(py));
        held.raise()?;
        Ok(handle)
    }

    pub(crate) fn track_in_flight(&self, fut: &Bound<'_, PyAny>) {
        lock(&self.in_flight).insert(fut.as_ptr() as usize, fut.clone().unbind());
    }

    /// Forgets a completed fast-path job; the caller drops the returned reference.
    pub(crate) fn untrack_in_flight(&self, fut: &Py<PyAny>) -> Option<Py<PyAny>> {
        lock(&self.in_flight).remove(&(fut.as_ptr() as usize))
    }
}

/// A `delay`/`when` argument as seconds: None is a TypeError (`none_message`), NaN a
/// ValueError naming `what`; infinity is allowed (such a timer never fires).
fn time_arg(value: &Bound<'_, PyAny>, what: &str, none_message: &str) -> PyResult<f64> {
    if value.is_none() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            none_message.to_string(),
        ));
    }
    let secs: f64 = value.extract()?;
    if secs.is_nan() {
        return Err(errors::nan_time(what));
    }
    Ok(secs)
}

/// A deadline as `call_at` takes it: its seconds (`time_arg`), and the object itself
/// when it is not exactly a float, for `TimerHandle.when()` to give back.
fn deadline_arg(
    when: &Bound<'_, PyAny>,
    what: &str,
    none_message: &str,
) -> PyResult<(f64, Option<Py<PyAny>>)> {
    let secs = time_arg(when, what, none_message)?;
    let given = (!when.is_exact_instance_of::<PyFloat>()).then(|| when.clone().unbind());
    Ok((secs, given))
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        interop::import_ahead(py)?;
        Ok(LoopCore {
            ready: Mutex::new(VecDeque::with_capacity(64)),
            batch: GilCell::new(VecDeque::with_capacity(64)),
            timers: Mutex::new(TimerHeap::new()),
            empty_context: Mutex::new(EmptyContext::default()),
            spent: Spent::default(),
            watchers: Mutex::new(HashMap::new()),
            shared: SharedCell::new(Shared::new()?),
            in_flight: Mutex::new(HashMap::new()),
            spin_worthy: AtomicBool::new(false),
            last_batch: AtomicUsize::new(0),
            flow_control_waits: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            closer: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            applying_posted: AtomicBool::new(false),
            drainer: AtomicU64::new(0),
            foreign_drain_waits: AtomicU64::new(0),
            in_run_once: AtomicUsize::new(0),
            debug: AtomicBool::new(false),
            strict: AtomicBool::new(true),
            custom_clock: AtomicBool::new(false),
            plain_setattr: AtomicBool::new(true),
            executor_shutdown_called: AtomicBool::new(false),
            default_executor: Mutex::new(None),
            cancelled_in_heap: Arc::new(AtomicUsize::new(0)),
            large_sock_reads: Arc::new(AtomicUsize::new(0)),
            clock_resolution: clock::resolution(),
        })
    }

    /// The loop clock: `time.monotonic()`'s clock.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_usable()?;
        let mut held = HeldInterrupt::default();
        let debug = this.is_debug().then_some(&mut held);
        let cb = Callback::checked(callback, args, context, "call_soon", debug)?;
        let (handle, cb) = Handle::one_shot(slf.py(), cb)?;
        this.push_soon(slf, cb)?;
        held.raise()?;
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context = None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        const NONE: &str = "delay must not be None";
        // (Messages name call_at, as the stock call_later's call_at checks the callback.)
        const METHOD: &str = "call_at";
        let this = slf.get();
        if delay.is_none() {
            return Err(pyo3::exceptions::PyTypeError::new_err(NONE));
        }
        let now = if this.custom_clock.load(Relaxed) {
            let now = interop::call_method(slf, crate::intern!(slf.py(), "time"), &[])?;
            if !now.is_instance_of::<PyFloat>() {
                // A clock of another type than float (an int, a Fraction): `time() +
                // delay` in Python's arithmetic, as the stock loop adds them, so the
                // deadline keeps the clock's type. (A float subclass, numpy's float64
                // say, is read as a float: one reading NaN makes the timer due at once.)
                let (secs, given) = deadline_arg(&now.add(delay)?, "delay", NONE)?;
                return this.schedule_at(secs, given, callback, args, context, METHOD);
            }
            now.extract::<f64>()?
        } else {
            clock::monotonic()
        };
        if delay.is_exact_instance_of::<PyFloat>() || delay.is_exact_instance_of::<PyInt>() {
            let when = now + time_arg(delay, "delay", NONE)?;
            return this.schedule_at(when, None, callback, args, context, METHOD);
        }
        // Any other type: `loop.time() + delay` in Python's arithmetic, as the stock loop
        // computes it, so a delay that does not add to a float (a Decimal, a str) is the
        // same TypeError, and one that does (a Fraction) gives the same deadline.
        let when = PyFloat::new(slf.py(), now).add(delay)?;
        let (secs, given) = deadline_arg(&when, "delay", NONE)?;
        this.schedule_at(secs, given, callback, args, context, METHOD)
    }

    #[pyo3(signature = (when, callback, *args, context = None))]
    fn call_at(
        &self,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let (when, given) = deadline_arg(when, "when", "when cannot be None")?;
        self.schedule_at(when, given, callback, args, context, "call_at")
    }

    /// Thread-safe: queues the handle on the lock-free injector and wakes the loop
    /// only if it is parked (or, while the loop is idle, straight into the ready queue).
    /// Raises RuntimeError once the loop is closed, never drops.
    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let mut held = HeldInterrupt::default();
        let debug = this.is_debug().then_some(&mut held);
        let cb = Callback::checked(callback, args, context, "call_soon_threadsafe", debug)?;
        let posted = Self::post_threadsafe(slf, cb);
        // An interrupt held while the callback was made comes out now that it is queued
        // (or refused: the interrupt is what the caller hears of then).
        held.raise()?;
        posted
    }

    /// Queues an `asyncio.Handle` made by Python code (signal handlers).
    fn _add_callback(&self, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        if !handle
            .getattr(crate::intern!(handle.py(), "_cancelled"))?
            .is_truthy()?
        {
            self.push_ready(Ready::Foreign(handle.clone().unbind()));
        }
        Ok(())
    }

    fn _add_callback_signalsafe(&self, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        self._add_callback(handle)?;
        self._wakeup();
        Ok(())
    }

    /// Makes the loop look at its flags soon: wakes it if parked, and keeps it from
    /// parking if it is about to (thread-safe). A no-op on a closed loop.
    fn _wakeup(&self) {
        let _ = self.shared.get().injector.post(Posted::Nudge);
    }

    /// Asks the loop to stop after the current iteration. Safe from any thread.
    fn stop(&self) {
        self.stopping.store(true, Relaxed);
        if self.owner.load(Relaxed) != interop::thread_ident() {
            // From another thread (or before the loop runs): the loop may be parked,
            // spinning or about to park, and must see the flag.
            self._wakeup();
        }
    }

    fn is_running(&self) -> bool {
        self.owner.load(Relaxed) != 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    fn _check_thread(&self) -> PyResult<()> {
        self.check_thread()
    }

    /// Rule 5 for the methods asyncio never checks (a transport's `write`/`sendto`):
    /// in strict mode only.
    fn _check_thread_strict(&self) -> PyResult<()> {
        self.check_thread_strict()
    }

    /// `asyncio.Task(coro, loop=self, ...)`, or the task factory's result, as asyncio
    /// does; only from the loop's thread while it runs (strict mode). asyncio's own
    /// `BaseEventLoop.create_task` runs instead when something replaced it on the class
    /// (an APM agent's wrapper, which calls asyncio's own: the stock loops inherit it),
    /// for keyword arguments beyond `name` and `context` (from Python 3.13.3 it takes
    /// `**kwargs` and passes them on; before, it refuses them with its TypeError), and,
    /// where it takes `**kwargs`, for a task factory (which those versions call
    /// differently from 3.13.0's).
    #[pyo3(signature = (coro, *, name = None, context = None, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_usable()?;
        let kwargs = kwargs.filter(|k| !k.is_empty());
        let factory = slf.getattr(crate::intern!(py, "_task_factory"))?;
        let stock_method = match interop::base_create_task(py)? {
            Some((method, false)) => Some(method),
            Some((method, true))
                if kwargs.is_some() || (!factory.is_none() && interop::takes_kwargs(&method)?) =>
            {
                Some(method)
            }
            _ => None,
        };
        let task = match stock_method {
            Some(method) => {
                let method = method.call_method1("__get__", (slf, slf.get_type()))?;
                let all = match kwargs {
                    Some(kwargs) => kwargs.copy()?,
                    None => PyDict::new(py),
                };
                for (key, value) in [("name", name), ("context", context)] {
                    if let Some(value) = value {
                        all.set_item(key, value)?;
                    }
                }
                method.call((coro,), Some(&all))?
            }
            None => {
                if let Some((key, _)) = kwargs.and_then(|k| k.iter().next()) {
                    return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                        "create_task() got an unexpected keyword argument {}",
                        key.repr()?
                    )));
                }
                Self::new_task(slf, coro, &factory, name, context)?
            }
        };
        let quiet = crate::intern!(py, "_log_destroy_pending");
        if this.closing() && task.hasattr(quiet)? {
            // Made by a callback that close() runs (another thread's post: a
            // run_coroutine_threadsafe, say): it never runs, and is dropped with the rest,
            // silently, as what that callback schedules with call_soon is; not reported
            // as "destroyed but it is pending". (The stock loop drops such posts unrun.)
            task.setattr(quiet, false)?;
        }
        Ok(task)
    }

    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().check_thread_strict()?;
        new_future(slf.as_any())
    }

    /// Whether `close()` is running what other threads posted (see `_close_core`).
    #[getter]
    fn _weaveloop_closing(&self) -> bool {
        self.closing()
    }

    #[getter]
    fn _debug(&self) -> bool {
        self.is_debug()
    }

    /// Any object, as asyncio stores whatever `set_debug()` got; its truth value counts.
    #[setter(_debug)]
    fn set_debug_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Relaxed);
        Ok(())
    }

    fn get_debug(&self) -> bool {
        self.is_debug()
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Assignable, as asyncio's plain attribute is: servers (Sanic) clear a `stop()`
    /// that came after `run_forever` returned. Its truth value counts; no wake-up, as on
    /// the stock loop.
    #[setter(_stopping)]
    fn set_stopping_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.stopping.store(value.is_truthy()?, Relaxed);
        Ok(())
    }

    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.owner.load(Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    #[getter]
    fn _timer_cancelled_count(&self) -> usize {
        self.cancelled_in_heap.load(Relaxed)
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    #[getter]
    fn _default_executor(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.default_executor)
            .as_ref()
            .map(|e| e.clone_ref(py))
    }

    #[setter(_default_executor)]
    fn set_default_executor_attr(&self, value: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut *lock(&self.default_executor), value);
        drop(old);
    }

    #[getter]
    fn _executor_shutdown_called(&self) -> bool {
        self.executor_shutdown_called.load(Relaxed)
    }

    #[setter(_executor_shutdown_called)]
    fn set_executor_shutdown_called_attr(&self, value: bool) {
        self.executor_shutdown_called.store(value, Relaxed);
    }

    /// GC support: everything the loop holds. A lock already held means this thread is
    /// inside a loop operation (the GC runs on allocation); that container is skipped,
    /// which only makes the loop look externally referenced for this collection.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(watchers) = self.watchers.try_lock() {
            for w in watchers.values() {
                visit.call(&w.reader)?;
                visit.call(&w.writer)?;
                visit.call(&w.fileobj)?;
            }
        }
        // One-shot handles are not tracked by the GC (see handles.rs): the loop reports
        // what they hold as its own, so an abandoned loop with pending callbacks that
        // refer back to it is still collectable.
        if let Ok(ready) = self.ready.try_lock() {
            for item in ready.iter() {
                match item {
                    Ready::Watcher(h) => visit.call(h)?,
                    Ready::Soon(cb) => cb.traverse(&visit)?,
                    Ready::Posted(h) => h.get().cb().traverse(&visit)?,
                    Ready::Timer(h) => h.get().cb.traverse(&visit)?,
                    Ready::Foreign(h) => visit.call(h)?,
                }
            }
        }
        if let Ok(timers) = self.timers.try_lock() {
            for h in timers.iter() {
                h.get().cb.traverse(&visit)?;
            }
        }
        if let Ok(in_flight) = self.in_flight.try_lock() {
            for fut in in_flight.values() {
                visit.call(fut)?;
            }
        }
        if let Ok(executor) = self.default_executor.try_lock() {
            visit.call(&*executor)?;
        }
        Ok(())
    }

    /// GC support: drops every reference the loop holds (it is garbage by now).
    fn __clear__(&self) {
        let watchers: Vec<_> = lock(&self.watchers).drain().collect();
        let ready: VecDeque<Ready> = std::mem::take(&mut *lock(&self.ready));
        let timers = lock(&self.timers).drain();
        Python::attach(|py| {
            ready.iter().for_each(|r| r.release(py));
            timers.iter().for_each(|t| t.get().cb.release(py));
        });
        let in_flight: Vec<_> = lock(&self.in_flight).drain().collect();
        let executor = lock(&self.default_executor).take();
        drop((watchers, ready, timers, in_flight, executor));
    }

    /// A snapshot of the ready queue (stock asyncio's `_ready`, read-only here).
    #[getter]
    fn _ready(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        // Handle objects are made with the lock released: allocating one may run the
        // cyclic GC, whose finalizers may schedule callbacks (and take this lock).
        // What the running iteration has not run yet comes first, as in the stock loop's
        // queue, which an iteration takes from one by one.
        let mut entries: Vec<Ready> = self
            .batch
            .with(py, |batch| batch.iter().map(|r| r.clone_ref(py)).collect());
        entries.extend(lock(&self.ready).iter().map(|r| r.clone_ref(py)));
        entries.iter().map(|item| item.handle_object(py)).collect()
    }

    /// How many posts and executor completions wait in the lock-free queue (tests).
    fn _pending_posts(&self) -> usize {
        self.shared.get().injector.len()
    }

    /// How many times flow control has made a thread posting to this loop wait.
    #[getter]
    fn _flow_control_waits(&self) -> u64 {
        self.flow_control_waits.load(Relaxed)
    }

    /// The spent threadsafe handles this loop keeps for reuse, how many posts reused
    /// one, and the pool's two limits (introspection for tests; see spent.rs).
    #[getter]
    fn _spent_handles(&self, py: Python<'_>) -> (usize, u64, usize, usize) {
        let (kept, reused) = self.spent.counts(py);
        (kept, reused, Spent::MAX, Spent::IDLE)
    }

    /// How many times the loop, about to run, waited for another thread that was
    /// applying posted items on its behalf (introspection for tests).
    #[getter]
    fn _foreign_drain_waits(&self) -> u64 {
        self.foreign_drain_waits.load(Relaxed)
    }

    /// A snapshot of the scheduled timers (stock asyncio's `_scheduled`, read-only here).
    #[getter]
    fn _scheduled(&self, py: Python<'_>) -> Vec<Py<TimerHandle>> {
        lock(&self.timers).iter().map(|h| h.clone_ref(py)).collect()
    }
}

/// `asyncio.Future(loop=loop)`.
pub fn new_future<'py>(loop_obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_obj.py();
    let names = interop::kwnames(py, &["loop"])?;
    interop::call_kw(interop::asyncio_future(py)?, &[], names, &[loop_obj])
}

/// A flag the Python side of the loop sets (a private attribute, read and written as a
/// bool): its own `#[pymethods]` block (the crate has multiple-pymethods).
macro_rules! flag_attribute {
    ($name:ident, $setter:ident, $field:ident) => {
        #[pymethods]
        impl LoopCore {
            #[getter]
            fn $name(&self) -> bool {
                self.$field.load(Relaxed)
            }

            #[setter($name)]
            fn $setter(&self, value: bool) {
                self.$field.store(value, Relaxed);
            }
        }
    };
}

flag_attribute!(_custom_clock, set_custom_clock, custom_clock);
flag_attribute!(_plain_setattr, set_plain_setattr, plain_setattr);
flag_attribute!(_strict_threads, set_strict_threads_attr, strict);
