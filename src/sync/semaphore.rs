//! `SemaphoreCore` (threading.Semaphore / BoundedSemaphore face) and the permit helpers
//! every semaphore-based class here shares: blocking acquire from a thread, enqueue and
//! abandon for coroutines, release with wake-up.
//! Invariant: a coroutine waiter that gives up after being granted passes the permit on.

use std::sync::Arc;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use weaveloop_engine::sync::{Cancel, Semaphore};

use super::block::{deadline_seconds, forbid_on_loop, may_wait, park, semaphore_wait, Truth, Wait};
use super::wake::{wake, PassOn, SyncWaiter, Token, W};

/// Shared with the wake-up batches in flight, which pass undeliverable grants back.
pub type Sem = Arc<Semaphore<Token>>;

/// The most permits a semaphore (or a queue's slots) can count.
pub const MAX_PERMITS: usize = Semaphore::<Token>::MAX_PERMITS;

pub fn new_sem(permits: usize) -> Sem {
    Arc::new(Semaphore::new(permits))
}

/// Releases `n` permits and wakes whoever they went to.
pub fn release(py: Python<'_>, sem: &Sem, n: usize) {
    wake_released(py, sem, sem.release(n));
}

/// Wakes the waiters a (bounded) release granted. Most releases grant nothing: they
/// return before taking a reference to the semaphore for passing grants on.
pub fn wake_released(py: Python<'_>, sem: &Sem, granted: weaveloop_engine::sync::Granted<Token>) {
    if !granted.is_empty() {
        wake(py, granted, &PassOn::Permit(sem.clone()));
    }
}

/// The coroutine side's hooks of a permit-based class (a `sem: Sem` field): queue a
/// future for a permit, and give the place or the permit up (`_waiting.py`).
macro_rules! coroutine_permit_hooks {
    ($ty:ty) => {
        #[pymethods]
        impl $ty {
            fn _enqueue(
                &self,
                loop_: &Bound<'_, PyAny>,
                fut: &Bound<'_, PyAny>,
            ) -> Option<SyncWaiter> {
                $crate::sync::semaphore::enqueue_task(&self.sem, loop_, fut)
            }

            fn _abandon(&self, py: Python<'_>, w: &SyncWaiter) {
                $crate::sync::semaphore::abandon_task(py, &self.sem, w)
            }
        }
    };
}
pub(crate) use coroutine_permit_hooks;

/// Thread side: takes a permit, parking without the GIL for at most `wait`.
pub fn acquire_thread(
    py: Python<'_>,
    sem: &Sem,
    wait: Wait,
    call: &str,
    async_form: &str,
) -> PyResult<bool> {
    if let Wait::Now = wait {
        return Ok(sem.try_acquire());
    }
    // Rule 4, deterministically: a blocking form is refused on a loop's thread even
    // when it would not have had to wait this time.
    forbid_on_loop(py, call, async_form)?;
    acquire_parked(py, sem, wait)
}

/// Waits for a permit with no way out: no timeout, and no signal handler runs meanwhile
/// (it runs once the caller is back in Python), as CPython's `RLock._acquire_restore`
/// waits. For a condition taking its lock back, which must not end without it.
pub fn acquire_uninterruptible(py: Python<'_>, sem: &Sem) {
    if sem.try_acquire() {
        return;
    }
    let w = W::thread();
    if !sem.acquire_or_enqueue(&w) {
        py.detach(|| w.park_until(None));
    }
}

/// The blocking part of `acquire_thread`, without rule 4's check: for a primitive's own
/// lock, held only for moments (a Barrier's).
pub fn acquire_parked(py: Python<'_>, sem: &Sem, wait: Wait) -> PyResult<bool> {
    if sem.try_acquire() {
        return Ok(true);
    }
    let w = W::thread();
    if sem.acquire_or_enqueue(&w) {
        return Ok(true);
    }
    match park(py, &w, wait) {
        Ok(true) => Ok(true),
        Ok(false) => Ok(sem.cancel(&w) == Cancel::Granted),
        Err(e) => {
            if sem.cancel(&w) == Cancel::Granted {
                release(py, sem, 1);
            }
            Err(e)
        }
    }
}

/// Coroutine side: takes a permit now (None) or queues a waiter settled through `fut`.
pub fn enqueue_task(
    sem: &Sem,
    loop_: &Bound<'_, PyAny>,
    fut: &Bound<'_, PyAny>,
) -> Option<SyncWaiter> {
    let w = SyncWaiter::new_task(loop_, fut);
    if sem.acquire_or_enqueue(&w) {
        return None;
    }
    Some(SyncWaiter { w })
}

/// Coroutine side: the waiter gives up (cancelled, timed out); a grant it already had
/// goes to the next waiter.
pub fn abandon_task(py: Python<'_>, sem: &Sem, w: &SyncWaiter) {
    if sem.cancel(&w.w) == Cancel::Granted {
        release(py, sem, 1);
    }
}

const ASYNC_FORM: &str = "async with sem' or 'await sem.aio.acquire()";

#[pyclass(module = "weaveloop._core", subclass, weakref, frozen)]
pub struct SemaphoreCore {
    sem: Sem,
    initial: usize,
    bounded: bool,
}

#[pymethods]
impl SemaphoreCore {
    #[new]
    #[pyo3(signature = (value = 1, bounded = false))]
    fn new(value: isize, bounded: bool) -> PyResult<Self> {
        if value < 0 {
            return Err(PyValueError::new_err(
                "semaphore initial value must be >= 0",
            ));
        }
        if value as usize > MAX_PERMITS {
            return Err(PyOverflowError::new_err(
                "semaphore initial value is too large",
            ));
        }
        let initial = value as usize;
        Ok(SemaphoreCore {
            sem: new_sem(initial),
            initial,
            bounded,
        })
    }

    /// threading.Semaphore.acquire: True once a permit is taken, False on timeout.
    #[pyo3(signature = (blocking = Truth(true), timeout = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        blocking: Truth,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if !blocking.0 {
            if timeout.is_some() {
                return Err(PyValueError::new_err(
                    "can't specify timeout for non-blocking acquire",
                ));
            }
            return Ok(self.sem.try_acquire());
        }
        if !may_wait(timeout) {
            // A timeout of 0 or less: one try, a non-blocking form (allowed on a loop's
            // thread); threading's still makes its deadline when no permit is free.
            if self.sem.try_acquire() {
                return Ok(true);
            }
            if let Some(t) = timeout {
                deadline_seconds(t)?;
            }
            return Ok(self.sem.try_acquire());
        }
        // Rule 4, deterministically: refused on a loop's thread even when a permit is free.
        forbid_on_loop(py, "Semaphore.acquire()", ASYNC_FORM)?;
        if self.sem.try_acquire() {
            return Ok(true);
        }
        // Read as threading's reads it: only now, as no permit is free.
        acquire_parked(py, &self.sem, semaphore_wait(timeout)?)
    }

    /// threading.Semaphore.release: adds `n` permits, waking as many waiters (FIFO).
    #[pyo3(signature = (n = 1))]
    fn release(&self, py: Python<'_>, n: isize) -> PyResult<()> {
        if n < 1 {
            return Err(PyValueError::new_err("n must be one or more"));
        }
        let n = n as usize;
        if n > MAX_PERMITS || self.sem.permits().saturating_add(n) > MAX_PERMITS {
            return Err(PyOverflowError::new_err("semaphore value would overflow"));
        }
        if self.bounded {
            let granted = self
                .sem
                .release_bounded(n, self.initial)
                .map_err(|_| PyValueError::new_err("Semaphore released too many times"))?;
            wake_released(py, &self.sem, granted);
        } else {
            release(py, &self.sem, n);
        }
        Ok(())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        acquire_thread(
            py,
            &self.sem,
            Wait::Forever,
            "Semaphore.acquire()",
            ASYNC_FORM,
        )
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release(py, 1)
    }

    /// Permits free right now.
    #[getter]
    fn _value(&self) -> usize {
        self.sem.permits()
    }

    #[getter]
    fn _initial_value(&self) -> usize {
        self.initial
    }

    /// asyncio.Semaphore.locked: no permit can be taken without waiting.
    fn locked(&self) -> bool {
        self.sem.would_block()
    }

    fn _waiting(&self) -> usize {
        self.sem.waiting()
    }

    fn _try_acquire(&self) -> bool {
        self.sem.try_acquire()
    }
}

coroutine_permit_hooks!(SemaphoreCore);
