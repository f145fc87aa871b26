//! `NotifierCore`: the waiter queue of `weaveloop.sync.Condition` (the lock handling is
//! in Python, as in threading.Condition). Thread waiters park without the GIL;
//! coroutine waiters are settled through their future.
//! Invariant: a notification that reaches a waiter which then gives up (cancelled
//! coroutine) goes to the next waiter; a timed-out thread that was notified keeps it.

use std::sync::Arc;

use pyo3::prelude::*;
use weaveloop_engine::sync::{Cancel, Notifier};

use super::block::{condition_wait, park};
use super::wake::{wake, PassOn, SyncWaiter, Token, W};

#[pyclass(module = "weaveloop._core", subclass, weakref, frozen)]
pub struct NotifierCore {
    n: Arc<Notifier<Token>>,
}

impl NotifierCore {
    fn pass_on(&self, py: Python<'_>) {
        wake(py, self.n.notify(1), &PassOn::Notification(self.n.clone()));
    }
}

#[pymethods]
impl NotifierCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        NotifierCore {
            n: Arc::new(Notifier::default()),
        }
    }

    /// Queues the calling thread (before it releases the condition's lock).
    fn _enqueue_thread(&self) -> SyncWaiter {
        let w = W::thread();
        self.n.enqueue(&w);
        SyncWaiter { w }
    }

    /// Parks a thread waiter without the GIL; True if notified, False on timeout.
    #[pyo3(signature = (w, timeout = None))]
    fn _park(
        &self,
        py: Python<'_>,
        w: &SyncWaiter,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // (A timeout refused here leaves as a park that failed: the waiter gives up.)
        match condition_wait(timeout).and_then(|wait| park(py, &w.w, wait)) {
            Ok(true) => Ok(true),
            Ok(false) => Ok(self.n.cancel(&w.w) == Cancel::Granted),
            Err(e) => {
                if self.n.cancel(&w.w) == Cancel::Granted {
                    self.pass_on(py);
                }
                Err(e)
            }
        }
    }

    fn _enqueue_task(&self, loop_: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> SyncWaiter {
        let w = SyncWaiter::new_task(loop_, fut);
        self.n.enqueue(&w);
        SyncWaiter { w }
    }

    /// A coroutine waiter gives up; a notification it had goes to the next waiter.
    fn _abandon(&self, py: Python<'_>, w: &SyncWaiter) {
        if self.n.cancel(&w.w) == Cancel::Granted {
            self.pass_on(py);
        }
    }

    #[pyo3(signature = (n = 1))]
    fn _notify(&self, py: Python<'_>, n: usize) {
        wake(py, self.n.notify(n), &PassOn::Notification(self.n.clone()));
    }

    fn _notify_all(&self, py: Python<'_>) {
        wake(
            py,
            self.n.notify_all(),
            &PassOn::Notification(self.n.clone()),
        );
    }

    fn _waiting(&self) -> usize {
        self.n.waiting()
    }
}
