//! What other threads post to a loop through its injector, and how the loop thread
//! applies it: thread-safe callbacks join the ready queue; executor completions settle
//! their asyncio future (unless it was cancelled meanwhile).

use pyo3::prelude::*;

use crate::handles::Handle;
use crate::interop;
use crate::loop_core::{LoopCore, Ready, Shared};

/// How a fast-path executor job ended.
pub enum Outcome {
    Value(Py<PyAny>),
    Error(PyErr),
    /// The pool was shut down with cancel_futures before the job started.
    Cancelled,
    /// The future was cancelled before the job started: the job did not run.
    Skipped,
}

/// Kept two words wide (the completion is boxed): the injector's slots stay small, so a
/// drained batch spans few cache lines.
pub enum Posted {
    Call(Py<Handle>),
    Done(Box<Completion>),
}

pub struct Completion {
    pub fut: Py<PyAny>,
    pub outcome: Outcome,
}

impl Posted {
    pub fn done(fut: Py<PyAny>, outcome: Outcome) -> Posted {
        Posted::Done(Box::new(Completion { fut, outcome }))
    }
}

impl LoopCore {
    /// Loop thread: drains the injector, settling completions and queueing callbacks.
    pub(crate) fn drain_posted(&self, slf: &Bound<'_, LoopCore>, shared: &Shared) {
        if shared.injector.is_empty() {
            return;
        }
        let mut items = Vec::with_capacity(shared.injector.len());
        shared.injector.drain_into(&mut items);
        self.apply_posted(slf, items);
    }

    /// Applies drained items in posting order. A completion that cannot be settled is
    /// reported through `sys.unraisablehook`; the rest are still applied.
    pub(crate) fn apply_posted(&self, slf: &Bound<'_, LoopCore>, items: Vec<Posted>) {
        let mut calls = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Posted::Call(h) => calls.push(Ready::Soon(h)),
                Posted::Done(done) => {
                    let Completion { fut, outcome } = *done;
                    // Callbacks posted before this completion keep their place ahead of
                    // the callbacks that settling it schedules.
                    self.extend_ready(calls.drain(..));
                    if let Err(e) = self.settle(slf, fut, outcome) {
                        e.write_unraisable(slf.py(), None);
                    }
                }
            }
        }
        self.extend_ready(calls);
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
                // As wrap_future does: concurrent.futures' Cancelled/InvalidState errors
                // become asyncio's.
                let exc = interop::convert_future_exc(py)?.call1((e.value(py),))?;
                fut.call_method1(pyo3::intern!(py, "set_exception"), (exc,))
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
