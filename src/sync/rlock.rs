//! `RLockCore`: a reentrant lock shared by threads and coroutines. The owner is the
//! current asyncio task when one runs on this thread, else the thread, so a coroutine
//! and the thread running its loop are different owners.
//! Invariant: owner and depth change only while the underlying permit is held.

use crate::gil::GilOnce;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use weaveloop_engine::sync::RecursiveOwner;

use super::block::{lock_wait, Blocking, ClockSeconds, Wait};
use super::semaphore::{
    acquire_thread, acquire_uninterruptible, coroutine_permit_hooks, new_sem, release, Sem,
};
use super::wake::SyncWaiter;
use crate::interop::running_loop;
use crate::interop::thread_ident;

const CALL: &str = "RLock.acquire()";
const ASYNC_FORM: &str = "async with rlock' or 'await rlock.aio.acquire()";

/// The identity owning an RLock: the running task, else the thread.
fn me(py: Python<'_>) -> PyResult<usize> {
    let lp = running_loop(py)?;
    if !lp.is_none() {
        static CURRENT: GilOnce<Py<PyAny>> = GilOnce::new();
        let task = CURRENT
            .import(py, "asyncio", "current_task")?
            .call1((lp,))?;
        if !task.is_none() {
            return Ok(task.as_ptr() as usize);
        }
    }
    Ok(thread_ident() as usize)
}

/// `owner` if given (acting for another owner), else the caller.
fn owner_or_me(py: Python<'_>, owner: Option<usize>) -> PyResult<usize> {
    owner.map_or_else(|| me(py), Ok)
}

fn unowned() -> PyErr {
    PyRuntimeError::new_err("cannot release un-acquired lock")
}

#[pyclass(module = "weaveloop._core", subclass, weakref, frozen)]
pub struct RLockCore {
    sem: Sem,
    own: RecursiveOwner,
}

impl RLockCore {
    fn acquire_within(&self, py: Python<'_>, wait: Wait) -> PyResult<bool> {
        let me = me(py)?;
        if self.own.is_owned_by(me) {
            self.own.reenter();
            return Ok(true);
        }
        if !acquire_thread(py, &self.sem, wait, CALL, ASYNC_FORM)? {
            return Ok(false);
        }
        self.own.take(me, 1);
        Ok(true)
    }
}

#[pymethods]
impl RLockCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        RLockCore {
            sem: new_sem(1),
            own: RecursiveOwner::default(),
        }
    }

    /// `blocking` is read as `_thread`'s locks read it (see `Blocking`).
    #[pyo3(signature = (blocking = Blocking(true), timeout = ClockSeconds::UNSET))]
    fn acquire(&self, py: Python<'_>, blocking: Blocking, timeout: ClockSeconds) -> PyResult<bool> {
        let wait = lock_wait(py, blocking.0, timeout)?;
        self.acquire_within(py, wait)
    }

    fn release(&self, py: Python<'_>) -> PyResult<()> {
        if !self.own.is_owned_by(me(py)?) {
            return Err(unowned());
        }
        if self.own.leave() {
            release(py, &self.sem, 1);
        }
        Ok(())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire_within(py, Wait::Forever)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release(py)
    }

    fn locked(&self) -> bool {
        self.sem.would_block()
    }

    fn _is_owned(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.own.is_owned_by(me(py)?))
    }

    fn _recursion_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(if self.own.is_owned_by(me(py)?) {
            self.own.depth()
        } else {
            0
        })
    }

    #[getter]
    fn _owner(&self) -> usize {
        self.own.owner()
    }

    /// Lets go of one level on behalf of `owner`: the exit of an `async with` that
    /// `owner` entered, reached outside that task (see `release_paired`).
    fn _release_as(&self, py: Python<'_>, owner: usize) -> PyResult<()> {
        if !self.own.is_owned_by(owner) {
            return Err(unowned());
        }
        if self.own.leave() {
            release(py, &self.sem, 1);
        }
        Ok(())
    }

    /// Condition protocol: gives the lock up entirely; returns what `_acquire_restore`
    /// needs. `owner`: on behalf of that owner (a condition's coroutine face, for
    /// another task of its loop) instead of the caller.
    #[pyo3(signature = (owner = None))]
    fn _release_save(&self, py: Python<'_>, owner: Option<usize>) -> PyResult<(usize, usize)> {
        let who = owner_or_me(py, owner)?;
        if !self.own.is_owned_by(who) {
            return Err(unowned());
        }
        let depth = self.own.give_up();
        release(py, &self.sem, 1);
        Ok((depth, who))
    }

    /// Condition protocol: takes the lock back at the saved depth (blocking, and not
    /// interrupted by a signal handler, whose exception would leave the caller about to
    /// release a lock it does not hold).
    fn _acquire_restore(&self, py: Python<'_>, state: (usize, usize)) {
        acquire_uninterruptible(py, &self.sem);
        self.own.take(state.1, state.0);
    }

    /// Coroutine side: the permit was just obtained (fast path or grant): own it at
    /// `depth` (1 for acquire, the saved depth for a condition's restore), as the caller
    /// or as `owner` (the one `_release_save` gave it up for).
    #[pyo3(signature = (depth = 1, owner = None))]
    fn _own(&self, py: Python<'_>, depth: usize, owner: Option<usize>) -> PyResult<()> {
        self.own.take(owner_or_me(py, owner)?, depth);
        Ok(())
    }

    /// Coroutine side: re-entered (true), or took the free lock (true), or must wait.
    fn _try_acquire(&self, py: Python<'_>) -> PyResult<bool> {
        let me = me(py)?;
        if self.own.is_owned_by(me) {
            self.own.reenter();
            return Ok(true);
        }
        if self.sem.try_acquire() {
            self.own.take(me, 1);
            return Ok(true);
        }
        Ok(false)
    }

    fn _try_permit(&self) -> bool {
        self.sem.try_acquire()
    }

    /// How many threads and coroutines wait for the lock.
    fn _waiting(&self) -> usize {
        self.sem.waiting()
    }

    fn _at_fork_reinit(&self) {
        self.sem.reset(1);
        self.own.give_up();
    }
}

coroutine_permit_hooks!(RLockCore);
