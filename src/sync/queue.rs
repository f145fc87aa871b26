//! `QueueCore`: queue.Queue / LifoQueue / PriorityQueue / SimpleQueue, the classic
//! two-semaphore bounded buffer over the engine: `items` counts what getters may take,
//! `slots` what putters may add, both FIFO across threads and coroutines, so
//! backpressure applies to both sides.
//! Invariants: an item is stored before its `items` permit is released, and a getter
//! holding a permit always finds an item; no Rust lock is held while Python code runs
//! except the priority gate, which is taken without the GIL. The `slots` count is
//! capacity (`maxsize`, or `UNBOUNDED` for maxsize <= 0) minus the items held or in
//! flight; a lowered `maxsize` can push it below zero, and getters then pay that back
//! before any putter gets in (see the engine's `Semaphore::shrink`). SimpleQueue has no
//! `slots` at all.
//!
//! Shutdown (Python 3.13's `Queue.shutdown`, offered on every version): the flag is set,
//! then both semaphores get `FLOOD` permits, which wakes every waiter and lets every
//! later acquire through at once; from then on the store alone decides. A put checks the
//! flag under the store's lock, so it lands before the shutdown (and an immediate
//! shutdown's drain sees it) or is refused; a getter that finds the store empty raises
//! ShutDown. `qsize()`, `empty()` and `full()` then count the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::gil::GilOnce;
use pyo3::exceptions::{PyAttributeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use weaveloop_engine::sync::{Cancel, TaskCounter};

use super::block::{
    forbid_on_loop, park, queue_wait, simple_queue_wait, ClockSeconds, Truth, Wait,
};
use super::semaphore::{
    abandon_task, acquire_thread, enqueue_task, new_sem, release, Sem, MAX_PERMITS,
};
use super::wake::{wake, PassOn, SyncWaiter, Token, W};
use crate::interop;

enum Store {
    Fifo(Mutex<VecDeque<Py<PyAny>>>),
    Lifo(Mutex<Vec<Py<PyAny>>>),
    /// A heap in a Python list, ordered by heapq (Python comparisons) behind `gate`.
    Priority {
        heap: Py<PyList>,
        gate: Mutex<()>,
    },
}

fn plain<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the priority gate; waits for it without the GIL (its holder may need the GIL
/// to finish a comparison).
fn gate<'a>(py: Python<'_>, m: &'a Mutex<()>) -> MutexGuard<'a, ()> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            // Wait for the holder without the GIL, then try again with it.
            Err(TryLockError::WouldBlock) => py.detach(|| drop(plain(m))),
        }
    }
}

fn queue_error(py: Python<'_>, name: &'static str) -> PyErr {
    static EMPTY: GilOnce<Py<PyAny>> = GilOnce::new();
    static FULL: GilOnce<Py<PyAny>> = GilOnce::new();
    static SHUT_DOWN: GilOnce<Py<PyAny>> = GilOnce::new();
    let cell = match name {
        "QueueEmpty" => &EMPTY,
        "QueueFull" => &FULL,
        _ => &SHUT_DOWN,
    };
    match cell.import(py, "weaveloop.sync._errors", name) {
        Ok(cls) => PyErr::from_type(cls.cast::<pyo3::types::PyType>().unwrap().clone(), ()),
        Err(e) => e,
    }
}

fn shut_down(py: Python<'_>) -> PyErr {
    queue_error(py, "QueueShutDown")
}

/// `guard` (of the store's lock) unless `closed` is set, looked at with the lock held;
/// else the lock is let go and the put refused with ShutDown.
fn unless_closed<G>(py: Python<'_>, guard: G, closed: &AtomicBool) -> PyResult<G> {
    if closed.load(SeqCst) {
        drop(guard);
        return Err(shut_down(py));
    }
    Ok(guard)
}

impl Store {
    /// Stores `item` unless `closed` is set (see `unless_closed`): an immediate
    /// shutdown's drain takes the same lock after setting it. `stored` runs once the
    /// item is in, before the lock is let go, so before any getter can take it.
    fn push(
        &self,
        py: Python<'_>,
        item: Py<PyAny>,
        closed: &AtomicBool,
        stored: impl FnOnce(),
    ) -> PyResult<()> {
        match self {
            Store::Fifo(q) => {
                unless_closed(py, plain(q), closed)?.push_back(item);
                stored();
            }
            Store::Lifo(q) => {
                unless_closed(py, plain(q), closed)?.push(item);
                stored();
            }
            Store::Priority { heap, gate: g } => {
                let _g = unless_closed(py, gate(py, g), closed)?;
                let heap = heap.bind(py);
                if let Err(e) = interop::heappush(py)?.call1((heap, &item)) {
                    // heappush appends before comparing: a comparison that raised left
                    // the item in the heap. Take it out, so that the put fails whole.
                    let at = heap.iter().position(|x| x.is(&item));
                    if let Some(i) = at {
                        heap.del_item(i)?;
                        interop::heapify(py)?.call1((heap,))?;
                    }
                    return Err(e);
                }
                stored();
            }
        }
        Ok(())
    }

    /// The next item, None if there is none (which a permit rules out before shutdown).
    fn pop(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(match self {
            Store::Fifo(q) => plain(q).pop_front(),
            Store::Lifo(q) => plain(q).pop(),
            Store::Priority { heap, gate: g } => {
                let _g = gate(py, g);
                let heap = heap.bind(py);
                if heap.is_empty() {
                    None
                } else {
                    Some(interop::heappop(py)?.call1((heap,))?.unbind())
                }
            }
        })
    }

    fn len(&self, py: Python<'_>) -> usize {
        match self {
            Store::Fifo(q) => plain(q).len(),
            Store::Lifo(q) => plain(q).len(),
            // Not behind the gate: its holder may be running an item's `__lt__`, which
            // may ask the queue's size (the gate is not re-entrant). heappush and heappop
            // change the list only with the GIL held, which this read has too.
            Store::Priority { heap, .. } => heap.bind(py).len(),
        }
    }

    /// Takes every item out. They are dropped by the caller, outside the lock: dropping
    /// one may run Python code (`__del__`) that uses the queue.
    fn drain(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(match self {
            Store::Fifo(q) => plain(q).drain(..).collect(),
            Store::Lifo(q) => std::mem::take(&mut *plain(q)),
            Store::Priority { heap, gate: g } => {
                let _g = gate(py, g);
                let heap = heap.bind(py);
                let items = heap.iter().map(Bound::unbind).collect();
                heap.del_slice(0, heap.len())?;
                items
            }
        })
    }
}

#[pyclass(module = "weaveloop._core", subclass, weakref, frozen)]
pub struct QueueCore {
    store: Store,
    items: Sem,
    /// Free capacity; None for SimpleQueue (unbounded, no `maxsize` to change).
    slots: Option<Sem>,
    tasks: Option<TaskCounter<Token>>,
    maxsize: AtomicIsize,
    /// Set once by `shutdown` (see the module comment).
    shut: AtomicBool,
}

/// The capacity of an unbounded queue that can be given a `maxsize` later: more items
/// than memory holds, and far enough below the semaphore's limit to add any maxsize.
const UNBOUNDED: usize = MAX_PERMITS / 4;

/// The permits a shutdown adds to each semaphore: every waiter is granted and no acquire
/// waits again. With `UNBOUNDED` capacity and any later `maxsize` raise it stays within
/// `MAX_PERMITS`.
const FLOOD: usize = MAX_PERMITS / 4;

/// The slots of a queue of `maxsize`: a bound above `UNBOUNDED` (more items than memory
/// holds) is that, as no bound at all.
fn capacity(maxsize: isize) -> usize {
    if maxsize > 0 {
        (maxsize as usize).min(UNBOUNDED)
    } else {
        UNBOUNDED
    }
}

const GET_ASYNC: &str = "await q.aio.get()";
const PUT_ASYNC: &str = "await q.aio.put(item)";

impl QueueCore {
    /// After a slot was taken: store the item and hand it to getters.
    fn deliver(&self, py: Python<'_>, item: Py<PyAny>) -> PyResult<()> {
        // Counted once stored and before it can be taken (under the store's lock): a
        // getter may pop it (LIFO, priority) and call task_done before this put
        // returns, and a put that fails (a comparison raised, the queue was shut
        // down) counts nothing.
        let count = || {
            if let Some(t) = &self.tasks {
                t.add();
            }
        };
        if let Err(e) = self.store.push(py, item, &self.shut, count) {
            self.free_slot(py);
            return Err(e);
        }
        release(py, &self.items, 1);
        Ok(())
    }

    /// An item left (or a put failed): its slot is free again.
    fn free_slot(&self, py: Python<'_>) {
        if let Some(s) = &self.slots {
            release(py, s, 1);
        }
    }

    /// A put, once the caller has refused it on a shut-down queue (`refuse_if_shut`).
    fn put_within(&self, py: Python<'_>, item: Py<PyAny>, wait: Wait) -> PyResult<()> {
        if let Some(s) = &self.slots {
            // An unbounded queue never makes put() wait: no blocking form to refuse on a
            // loop's thread (rule 4).
            let wait = if self.maxsize.load(Relaxed) > 0 {
                wait
            } else {
                Wait::Now
            };
            if !acquire_thread(py, s, wait, "Queue.put()", PUT_ASYNC)? {
                return Err(queue_error(py, "QueueFull"));
            }
        }
        self.deliver(py, item)
    }

    /// A get, once the caller has refused it on a shut-down, empty queue
    /// (`refuse_get_if_shut_and_empty`).
    fn get_within(&self, py: Python<'_>, wait: Wait) -> PyResult<Py<PyAny>> {
        if !acquire_thread(py, &self.items, wait, "Queue.get()", GET_ASYNC)? {
            return Err(queue_error(py, "QueueEmpty"));
        }
        self.take(py)
    }

    /// After an item permit was taken: take the item and free its slot. After a
    /// shutdown the permit may be one of its flood: no item then means ShutDown.
    fn take(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let item = self.store.pop(py);
        self.free_slot(py);
        match item? {
            Some(item) => Ok(item),
            None if self.shut.load(SeqCst) => Err(shut_down(py)),
            // A permit always has its item before a shutdown (the module invariant).
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "queue invariant broken",
            )),
        }
    }

    /// Puts raise ShutDown once the queue is shut down (before QueueFull, as the stdlib).
    fn refuse_if_shut(&self, py: Python<'_>) -> PyResult<()> {
        if self.shut.load(SeqCst) {
            return Err(shut_down(py));
        }
        Ok(())
    }

    /// Gets raise ShutDown once the queue is shut down and empty (before QueueEmpty).
    fn refuse_get_if_shut_and_empty(&self, py: Python<'_>) -> PyResult<()> {
        if self.shut.load(SeqCst) && self.store.len(py) == 0 {
            return Err(shut_down(py));
        }
        Ok(())
    }
}

#[pymethods]
impl QueueCore {
    #[new]
    #[pyo3(signature = (maxsize = 0, kind = "fifo", track_tasks = true, simple = false))]
    fn new(
        py: Python<'_>,
        maxsize: isize,
        kind: &str,
        track_tasks: bool,
        simple: bool,
    ) -> PyResult<Self> {
        let store = match kind {
            "fifo" => Store::Fifo(Mutex::new(VecDeque::new())),
            "lifo" => Store::Lifo(Mutex::new(Vec::new())),
            "priority" => Store::Priority {
                heap: PyList::empty(py).unbind(),
                gate: Mutex::new(()),
            },
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unknown queue kind {kind:?}"
                )))
            }
        };
        Ok(QueueCore {
            store,
            items: new_sem(0),
            slots: (!simple).then(|| new_sem(capacity(maxsize))),
            tasks: track_tasks.then(TaskCounter::default),
            maxsize: AtomicIsize::new(maxsize),
            shut: AtomicBool::new(false),
        })
    }

    /// Python 3.13's `Queue.shutdown`: puts raise ShutDown from now on, and gets once the
    /// queue is empty; every waiting getter and putter wakes (and raises ShutDown unless
    /// a getter finds an item). `immediate`: the items left are removed at once, each
    /// counting as done for `join()`. Calling it again is allowed (an immediate call
    /// after a plain one still drains).
    #[pyo3(signature = (immediate = false))]
    fn _shutdown(&self, py: Python<'_>, immediate: bool) -> PyResult<()> {
        let first = !self.shut.swap(true, SeqCst);
        if immediate {
            let items = self.store.drain(py)?;
            if let Some(t) = &self.tasks {
                for _ in &items {
                    // As the stdlib: never below zero (each stored item was counted,
                    // so only a task_done() racing this one could get there first).
                    match t.done() {
                        Ok(granted) => wake(py, granted, &PassOn::Nothing),
                        Err(_) => break,
                    }
                }
            }
            drop(items);
        }
        if first {
            release(py, &self.items, FLOOD);
            if let Some(s) = &self.slots {
                release(py, s, FLOOD);
            }
        }
        Ok(())
    }

    #[getter]
    fn _is_shutdown(&self) -> bool {
        self.shut.load(SeqCst)
    }

    #[getter]
    fn maxsize(&self) -> isize {
        self.maxsize.load(Relaxed)
    }

    /// As on queue.Queue, `maxsize` may change at any time (0 or less: unbounded).
    /// Raising it lets waiting putters in at once (FIFO); lowering it below `qsize()`
    /// evicts nothing: putters wait until getters have brought the queue under it.
    #[setter]
    fn set_maxsize(&self, py: Python<'_>, value: isize) -> PyResult<()> {
        let Some(s) = &self.slots else {
            return Err(PyAttributeError::new_err(
                "SimpleQueue has no maxsize to set",
            ));
        };
        // Each change applies the difference it swapped in, so concurrent changes add
        // up to the last value, in whatever order they land; no lock is held.
        let old = capacity(self.maxsize.swap(value, Relaxed));
        let new = capacity(value);
        if new > old {
            release(py, s, new - old);
        } else if old > new {
            s.shrink(old - new);
        }
        Ok(())
    }

    /// Items a new get could take: an item already handed to a queued getter (FIFO,
    /// nobody overtakes it) is not counted, so `qsize()`, `empty()` and `full()` agree
    /// with what `get_nowait()` and `put_nowait()` do next.
    fn qsize(&self, py: Python<'_>) -> usize {
        if self.shut.load(SeqCst) {
            return self.store.len(py);
        }
        self.items.permits()
    }

    fn empty(&self, py: Python<'_>) -> bool {
        if self.shut.load(SeqCst) {
            return self.store.len(py) == 0;
        }
        self.items.would_block()
    }

    fn full(&self, py: Python<'_>) -> bool {
        let maxsize = self.maxsize.load(Relaxed);
        if maxsize <= 0 || self.slots.is_none() {
            return false;
        }
        if self.shut.load(SeqCst) {
            return self.store.len(py) >= maxsize as usize;
        }
        self.slots.as_ref().is_some_and(|s| s.would_block())
    }

    /// queue.Queue.put: waits for a free slot (bounded queues), at most `timeout`. An
    /// unbounded queue never waits and, as queue.Queue, never looks at `block` and
    /// `timeout`.
    #[pyo3(signature = (item, block = Truth(true), timeout = None))]
    fn put(
        &self,
        py: Python<'_>,
        item: Py<PyAny>,
        block: Truth,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.refuse_if_shut(py)?;
        let wait = if self.slots.is_some() && self.maxsize.load(Relaxed) > 0 {
            queue_wait(block.0, timeout)?
        } else {
            Wait::Now
        };
        self.put_within(py, item, wait)
    }

    fn put_nowait(&self, py: Python<'_>, item: Py<PyAny>) -> PyResult<()> {
        self.refuse_if_shut(py)?;
        self.put_within(py, item, Wait::Now)
    }

    /// queue.Queue.get: waits for an item, at most `timeout`.
    #[pyo3(signature = (block = Truth(true), timeout = None))]
    fn get(
        &self,
        py: Python<'_>,
        block: Truth,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.refuse_get_if_shut_and_empty(py)?;
        let wait = if self.slots.is_none() {
            // SimpleQueue's (C) converts a timeout it will use before anything else.
            let timeout = match timeout {
                Some(t) if block.0 => Some(t.extract::<ClockSeconds>()?),
                _ => None,
            };
            simple_queue_wait(block.0, timeout)?
        } else {
            queue_wait(block.0, timeout)?
        };
        self.get_within(py, wait)
    }

    fn get_nowait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.refuse_get_if_shut_and_empty(py)?;
        self.get_within(py, Wait::Now)
    }

    fn task_done(&self, py: Python<'_>) -> PyResult<()> {
        let Some(t) = &self.tasks else { return Ok(()) };
        let granted = t
            .done()
            .map_err(|_| PyValueError::new_err("task_done() called too many times"))?;
        wake(py, granted, &PassOn::Nothing);
        Ok(())
    }

    /// queue.Queue.join: blocks until every item put has been marked done.
    fn join(&self, py: Python<'_>) -> PyResult<()> {
        let Some(t) = &self.tasks else { return Ok(()) };
        forbid_on_loop(py, "Queue.join()", "await q.aio.join()")?;
        if t.unfinished() == 0 {
            return Ok(());
        }
        let w = W::thread();
        if t.check_or_enqueue(&w) {
            return Ok(());
        }
        if let Err(e) = park(py, &w, Wait::Forever) {
            let _ = t.cancel(&w);
            return Err(e);
        }
        Ok(())
    }

    /// Putters (threads and coroutines) waiting for a free slot.
    fn _putters_waiting(&self) -> usize {
        self.slots.as_ref().map_or(0, |s| s.waiting())
    }

    /// Getters (threads and coroutines) waiting for an item.
    fn _getters_waiting(&self) -> usize {
        self.items.waiting()
    }

    #[getter]
    fn unfinished_tasks(&self) -> usize {
        self.tasks.as_ref().map_or(0, |t| t.unfinished())
    }

    // ---- coroutine side hooks (used by the Python async face) ----

    /// An item now, or `default` if none can be taken without waiting.
    fn _try_get(&self, py: Python<'_>, default: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.refuse_get_if_shut_and_empty(py)?;
        if self.items.try_acquire() {
            return self.take(py);
        }
        Ok(default)
    }

    /// Puts now if a slot is free (true), else false.
    fn _try_put(&self, py: Python<'_>, item: Py<PyAny>) -> PyResult<bool> {
        self.refuse_if_shut(py)?;
        if let Some(s) = &self.slots {
            if !s.try_acquire() {
                return Ok(false);
            }
        }
        self.deliver(py, item)?;
        Ok(true)
    }

    fn _enqueue_get(&self, loop_: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> Option<SyncWaiter> {
        enqueue_task(&self.items, loop_, fut)
    }

    fn _abandon_get(&self, py: Python<'_>, w: &SyncWaiter) {
        abandon_task(py, &self.items, w)
    }

    /// After `_enqueue_get` granted (or returned None): the item.
    fn _finish_get(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.take(py)
    }

    fn _enqueue_put(&self, loop_: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> Option<SyncWaiter> {
        self.slots
            .as_ref()
            .and_then(|s| enqueue_task(s, loop_, fut))
    }

    fn _abandon_put(&self, py: Python<'_>, w: &SyncWaiter) {
        if let Some(s) = &self.slots {
            abandon_task(py, s, w)
        }
    }

    /// After `_enqueue_put` granted (or returned None): store the item.
    fn _finish_put(&self, py: Python<'_>, item: Py<PyAny>) -> PyResult<()> {
        self.deliver(py, item)
    }

    fn _enqueue_join(
        &self,
        loop_: &Bound<'_, PyAny>,
        fut: &Bound<'_, PyAny>,
    ) -> Option<SyncWaiter> {
        let t = self.tasks.as_ref()?;
        let w = SyncWaiter::new_task(loop_, fut);
        if t.check_or_enqueue(&w) {
            return None;
        }
        Some(SyncWaiter { w })
    }

    fn _abandon_join(&self, w: &SyncWaiter) {
        if let Some(t) = &self.tasks {
            let _: Cancel = t.cancel(&w.w);
        }
    }
}
