//! `EventCore`: threading.Event's face of the engine's event; coroutine waiters are
//! queued with their future and all woken, batched per loop, by `set()`.
//! Invariant: `wait` never blocks a thread running an event loop (RuntimeError).

use pyo3::prelude::*;
use weaveloop_engine::sync::{Cancel, EventCore as Core};

use super::block::{condition_wait, forbid_on_loop, may_wait, park, Wait};
use super::wake::{wake, PassOn, SyncWaiter, Token, W};

#[pyclass(module = "weaveloop._core", subclass, weakref, frozen)]
pub struct EventCore {
    ev: Core<Token>,
}

#[pymethods]
impl EventCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        EventCore {
            ev: Core::default(),
        }
    }

    fn is_set(&self) -> bool {
        self.ev.is_set()
    }

    fn set(&self, py: Python<'_>) {
        wake(py, self.ev.set(), &PassOn::Nothing);
    }

    fn clear(&self) {
        self.ev.clear();
    }

    /// threading.Event.wait: the flag on return (False only on timeout).
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        if !may_wait(timeout) {
            return Ok(self.ev.is_set());
        }
        // Rule 4, deterministically: refused on a loop's thread even when already set.
        forbid_on_loop(py, "Event.wait()", "await event.aio.wait()")?;
        if self.ev.is_set() {
            return Ok(true);
        }
        // Read as threading's reads it: only now, as the event is not set.
        let wait = condition_wait(timeout)?;
        if let Wait::Now = wait {
            return Ok(self.ev.is_set());
        }
        let w = W::thread();
        if self.ev.check_or_enqueue(&w) {
            return Ok(true);
        }
        match park(py, &w, wait) {
            Ok(true) => Ok(true),
            Ok(false) => Ok(self.ev.cancel(&w) == Cancel::Granted),
            Err(e) => {
                let _ = self.ev.cancel(&w);
                Err(e)
            }
        }
    }

    /// Coroutine side: None if set, else a waiter settled through `fut` on `set()`.
    fn _enqueue(&self, loop_: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> Option<SyncWaiter> {
        let w = SyncWaiter::new_task(loop_, fut);
        if self.ev.check_or_enqueue(&w) {
            return None;
        }
        Some(SyncWaiter { w })
    }

    fn _abandon(&self, w: &SyncWaiter) {
        let _ = self.ev.cancel(&w.w);
    }
}
