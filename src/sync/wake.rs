//! Waking coroutine waiters through their own loop: directly when the releaser runs on
//! that loop's thread, else one `call_soon_threadsafe` per loop for all the waiters it
//! releases at once (batched). A loop that refuses (closed) gets its grants revoked and
//! passed on. Invariant: a token (loop, future) is touched only with the GIL held.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;
use weaveloop_engine::sync::{Granted, Waiter};

/// A coroutine waiter's token: the future it awaits and the loop that future belongs to.
pub struct Token {
    pub loop_: Py<PyAny>,
    pub fut: Py<PyAny>,
}

pub type W = Waiter<Token>;

/// A queued waiter as Python sees it (returned by the `_enqueue*` hooks, given back to
/// the `_abandon*` hooks).
#[pyclass(module = "weaveloop._core", frozen)]
pub struct SyncWaiter {
    pub(crate) w: Arc<W>,
}

impl SyncWaiter {
    pub(crate) fn new_task(loop_: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> Arc<W> {
        W::task(Token {
            loop_: loop_.clone().unbind(),
            fut: fut.clone().unbind(),
        })
    }
}

/// `asyncio._get_running_loop()` (the C accelerator): the loop running in this thread.
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static F: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    F.import(py, "asyncio.events", "_get_running_loop")?.call0()
}

/// Settles each future that is still pending (a cancelled one is left alone: its
/// coroutine's own error path passes the grant on).
#[pyfunction]
pub fn wake_futures(py: Python<'_>, futs: &Bound<'_, PyList>) -> PyResult<()> {
    for fut in futs.iter() {
        settle(py, &fut)?;
    }
    Ok(())
}

fn settle(py: Python<'_>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
    if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
        fut.call_method1(pyo3::intern!(py, "set_result"), (true,))?;
    }
    Ok(())
}

/// Wakes granted coroutine waiters. `pass_on` re-releases one grant when a waiter's loop
/// is closed (it returns the waiters that grant went to, woken in turn).
pub fn wake(py: Python<'_>, granted: Granted<Token>, pass_on: &dyn Fn() -> Granted<Token>) {
    if granted.is_empty() {
        return;
    }
    let mut pending = granted.0;
    while !pending.is_empty() {
        let mut again = Vec::new();
        wake_batch(py, pending, pass_on, &mut again);
        pending = again;
    }
}

fn wake_batch(
    py: Python<'_>,
    waiters: Vec<Arc<W>>,
    pass_on: &dyn Fn() -> Granted<Token>,
    again: &mut Vec<Arc<W>>,
) {
    let here = running_loop(py).ok().filter(|l| !l.is_none());
    // Group by loop, keeping FIFO order inside each group.
    let mut groups: Vec<(Bound<'_, PyAny>, Vec<Arc<W>>)> = Vec::new();
    for w in waiters {
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
        if post(py, &lp, &group).is_err() {
            // The loop is closed: its waiters will never run; pass their grants on.
            for w in group {
                if w.revoke() {
                    again.extend(pass_on().0);
                }
            }
        }
    }
}

fn post(py: Python<'_>, lp: &Bound<'_, PyAny>, group: &[Arc<W>]) -> PyResult<()> {
    static WAKE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let wake_fn = WAKE.import(py, "weaveloop._core", "wake_futures")?;
    let futs = PyList::new(
        py,
        group
            .iter()
            .filter_map(|w| w.token())
            .map(|t| t.fut.bind(py)),
    )?;
    lp.call_method1(pyo3::intern!(py, "call_soon_threadsafe"), (wake_fn, futs))?;
    Ok(())
}
