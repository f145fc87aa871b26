//! Waking coroutine waiters through their own loop: directly when the releaser runs on
//! that loop's thread, else one `call_soon_threadsafe` per loop for all the waiters it
//! releases at once (batched). A grant that cannot be delivered — the loop refuses the
//! post (closed), or is closed before it runs the posted batch, or drops the batch
//! unrun — is revoked and passed on. Invariant: a token (loop, future) is touched only
//! with the GIL held.

use std::sync::{Arc, Mutex};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use weaveloop_engine::sync::{Granted, Notifier, Semaphore, Waiter};

use crate::interop;
use crate::loop_core::LoopCore;

/// A coroutine waiter's token: the future it awaits and the loop that future belongs to.
pub struct Token {
    pub loop_: Py<PyAny>,
    pub fut: Py<PyAny>,
}

pub type W = Waiter<Token>;

/// Where a grant goes when its coroutine waiter cannot take it: the next waiter of the
/// same primitive (a permit for semaphores, a notification for conditions), or nowhere
/// (an event or a join: every waiter was released anyway).
#[derive(Clone)]
pub enum PassOn {
    Permit(Arc<Semaphore<Token>>),
    Notification(Arc<Notifier<Token>>),
    Nothing,
}

impl PassOn {
    fn next(&self) -> Granted<Token> {
        match self {
            PassOn::Permit(sem) => sem.release(1),
            PassOn::Notification(n) => n.notify(1),
            PassOn::Nothing => Granted::none(),
        }
    }
}

/// A queued waiter as Python sees it (returned by the `_enqueue*` hooks, given back to
/// the `_abandon*` hooks).
#[pyclass(module = "weaveloop._core", frozen)]
pub struct SyncWaiter {
    pub(crate) w: Arc<W>,
}

#[pymethods]
impl SyncWaiter {
    /// GC support: a coroutine that awaits a primitive and is then abandoned (its loop
    /// closed) holds this waiter, whose future's callbacks hold the coroutine's task.
    /// Visible to the GC, that cycle is collected, and the coroutine's error path
    /// (GeneratorExit) passes a grant it already received on.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(t) = self.w.token() {
            visit.call(&t.loop_)?;
            visit.call(&t.fut)?;
        }
        Ok(())
    }
}

impl SyncWaiter {
    pub(crate) fn new_task(loop_: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> Arc<W> {
        W::task(Token {
            loop_: loop_.clone().unbind(),
            fut: fut.clone().unbind(),
        })
    }
}

fn settle(py: Python<'_>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
    if !fut.call_method0(crate::intern!(py, "done"))?.is_truthy()? {
        fut.call_method1(crate::intern!(py, "set_result"), (true,))?;
    }
    Ok(())
}

/// Whether `lp` will never run a callback of its own again: closed, or (a weaveloop
/// loop) closing, running what other threads posted before it is marked closed; the
/// futures it would settle there are dropped unrun with the rest of its queue.
fn is_closed(py: Python<'_>, lp: &Bound<'_, PyAny>) -> bool {
    if let Ok(core) = lp.cast::<LoopCore>() {
        return core.get().closed_or_closing();
    }
    lp.call_method0(crate::intern!(py, "is_closed"))
        .and_then(|c| c.is_truthy())
        .unwrap_or(true)
}

/// Revokes each grant and passes it on (their loop will never run them).
fn pass_on_all(py: Python<'_>, waiters: Vec<Arc<W>>, pass_on: &PassOn) {
    for w in waiters {
        if w.revoke() {
            wake(py, pass_on.next(), pass_on);
        }
    }
}

/// The waiters granted on one loop, posted to it with `call_soon_threadsafe` as one
/// callback. Run on a live loop, it settles their futures. Run on a loop that was closed
/// meanwhile, or dropped without running (a stock loop's `close()` discards queued
/// callbacks), it passes their grants on instead, so no permit is lost with the loop.
#[pyclass(module = "weaveloop._core", frozen)]
pub struct WakeBatch {
    waiters: Mutex<Vec<Arc<W>>>,
    pass_on: PassOn,
}

impl WakeBatch {
    fn take(&self) -> Vec<Arc<W>> {
        std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[pymethods]
impl WakeBatch {
    fn __call__(&self, py: Python<'_>) {
        let waiters = self.take();
        let closed = waiters
            .first()
            .and_then(|w| w.token())
            .is_some_and(|t| is_closed(py, t.loop_.bind(py)));
        if closed {
            pass_on_all(py, waiters, &self.pass_on);
            return;
        }
        for w in &waiters {
            if let Some(t) = w.token() {
                if let Err(e) = settle(py, t.fut.bind(py)) {
                    e.write_unraisable(py, Some(t.fut.bind(py)));
                }
            }
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        let waiters = self.take();
        if !waiters.is_empty() {
            Python::attach(|py| pass_on_all(py, waiters, &self.pass_on));
        }
    }
}

/// Wakes granted coroutine waiters; a grant that cannot be delivered goes to `pass_on`.
pub fn wake(py: Python<'_>, granted: Granted<Token>, pass_on: &PassOn) {
    if granted.is_empty() {
        return;
    }
    let here = interop::running_loop(py).ok().filter(|l| !l.is_none());
    // Group by loop, keeping FIFO order inside each group.
    let mut groups: Vec<(Bound<'_, PyAny>, Vec<Arc<W>>)> = Vec::new();
    for w in granted.0 {
        let Some(tok) = w.token() else { continue };
        let lp = tok.loop_.bind(py);
        if here.as_ref().is_some_and(|h| h.is(lp)) {
            if let Err(e) = settle(py, tok.fut.bind(py)) {
                e.write_unraisable(py, Some(tok.fut.bind(py)));
            }
            continue;
        }
        match groups.iter_mut().find(|(l, _)| l.is(lp)) {
            Some((_, g)) => g.push(w),
            None => groups.push((lp.clone(), vec![w])),
        }
    }
    for (lp, group) in groups {
        let batch = WakeBatch {
            waiters: Mutex::new(group),
            pass_on: pass_on.clone(),
        };
        let posted = Py::new(py, batch).and_then(|b| {
            lp.call_method1(crate::intern!(py, "call_soon_threadsafe"), (b,))
                .map(drop)
        });
        // A refused post (closed loop) drops the batch unrun: its Drop passes the
        // grants on.
        drop(posted);
    }
}
