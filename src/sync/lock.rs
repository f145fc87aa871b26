//! `LockCore`: the threading.Lock face of a one-permit FIFO semaphore. Uncontended
//! acquire and release are each one atomic operation, with the GIL held throughout.
//! Invariant: release of an unlocked lock is refused (RuntimeError), never counted.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::block::{lock_wait, Blocking, ClockSeconds, Wait};
use super::semaphore::{
    acquire_parked, acquire_thread, coroutine_permit_hooks, new_sem, wake_released, Sem,
};
use super::wake::SyncWaiter;

const CALL: &str = "Lock.acquire()";
const ASYNC_FORM: &str = "async with lock' or 'await lock.aio.acquire()";

#[pyclass(module = "weaveloop._core", subclass, weakref, frozen)]
pub struct LockCore {
    sem: Sem,
}

impl LockCore {
    fn do_release(&self, py: Python<'_>) -> PyResult<()> {
        match self.sem.release_bounded(1, 1) {
            Ok(granted) => {
                wake_released(py, &self.sem, granted);
                Ok(())
            }
            Err(_) => Err(PyRuntimeError::new_err("release unlocked lock")),
        }
    }
}

#[pymethods]
impl LockCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        LockCore { sem: new_sem(1) }
    }

    /// threading.Lock.acquire: True once taken; False if not blocking or timed out.
    /// `blocking` is read as `_thread`'s locks read it (see `Blocking`).
    #[pyo3(signature = (blocking = Blocking(true), timeout = ClockSeconds::UNSET))]
    fn acquire(&self, py: Python<'_>, blocking: Blocking, timeout: ClockSeconds) -> PyResult<bool> {
        let wait = lock_wait(py, blocking.0, timeout)?;
        acquire_thread(py, &self.sem, wait, CALL, ASYNC_FORM)
    }

    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.do_release(py)
    }

    fn locked(&self) -> bool {
        self.sem.would_block()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        acquire_thread(py, &self.sem, Wait::Forever, CALL, ASYNC_FORM)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.do_release(py)
    }

    /// After fork: unlocked, no waiters.
    fn _at_fork_reinit(&self) {
        self.sem.reset(1);
    }

    fn _waiting(&self) -> usize {
        self.sem.waiting()
    }

    fn _try_acquire(&self) -> bool {
        self.sem.try_acquire()
    }

    /// Blocking acquire allowed on a loop's thread, for a lock that is only ever held
    /// for moments (a Barrier's own, as threading.Barrier's own lock blocks there too):
    /// rule 4 is about locks a caller may hold for long.
    fn _acquire_briefly(&self, py: Python<'_>) -> PyResult<bool> {
        acquire_parked(py, &self.sem, Wait::Forever)
    }
}

coroutine_permit_hooks!(LockCore);
