//! What other threads post to a loop through its injector, and how the loop thread
//! applies it: thread-safe callbacks join the ready queue; executor completions settle
//! their asyncio future (unless it was cancelled meanwhile).

use pyo3::prelude::*;

use crate::handles::Handle;
use crate::loop_core::{LoopCore, Ready};

/// How a fast-path executor job ended.
pub enum Outcome {
    Value(Py<PyAny>),
    Error(PyErr),
    /// The pool was shut down with cancel_futures before the job started.
    Cancelled,
    /// The future was cancelled before the job started: the job did not run.
    Skipped,
}

pub enum Posted {
    Call(Py<Handle>),
    Done { fut: Py<PyAny>, outcome: Outcome },
}

impl LoopCore {
    /// Loop thread: drains the injector, settling completions and queueing callbacks.
    pub(crate) fn drain_posted(&self, slf: &Bound<'_, LoopCore>) -> PyResult<()> {
        let shared = self.shared();
        if shared.injector.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(shared.injector.len());
        shared.injector.drain_into(&mut items);
        self.apply_posted(slf, items)
    }

    pub(crate) fn apply_posted(
        &self,
        slf: &Bound<'_, LoopCore>,
        items: Vec<Posted>,
    ) -> PyResult<()> {
        for item in items {
            match item {
                Posted::Call(h) => self.push_ready(Ready::Soon(h)),
                Posted::Done { fut, outcome } => self.settle(slf, fut, outcome)?,
            }
        }
        Ok(())
    }

    fn settle(&self, slf: &Bound<'_, LoopCore>, fut: Py<PyAny>, outcome: Outcome) -> PyResult<()> {
        let py = slf.py();
        let tracked = self.untrack_in_flight(&fut);
        drop(tracked);
        let fut = fut.bind(py);
        if matches!(outcome, Outcome::Skipped)
            || fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()?
        {
            return Ok(());
        }
        let result = match outcome {
            Outcome::Value(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,)),
            Outcome::Error(e) => {
                fut.call_method1(pyo3::intern!(py, "set_exception"), (e.value(py),))
            }
            Outcome::Cancelled => fut.call_method0(pyo3::intern!(py, "cancel")),
            Outcome::Skipped => unreachable!("handled above"),
        };
        if let Err(e) = result {
            // e.g. set_exception(StopIteration) is refused with TypeError: settle the
            // future with that error rather than leave it pending forever.
            if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                fut.call_method1(pyo3::intern!(py, "set_exception"), (e.value(py),))?;
            } else {
                return Err(e);
            }
        }
        Ok(())
    }
}
