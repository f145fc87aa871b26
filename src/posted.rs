//! What other threads post to a loop through its injector, and how the loop thread
//! applies it: thread-safe callbacks join the ready queue; executor completions settle
//! their asyncio future (unless it was cancelled meanwhile).

use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors;
use crate::handles::Callback;
use crate::interop;
use crate::loop_core::{LoopCore, Ready, Shared};
use crate::run::is_fatal;

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
    Call(Arc<Callback>),
    Done(Box<Completion>),
    /// Nothing to run: it only makes the loop look at its flags (stop(), a signal).
    /// Posted like any item, it gets the wake-up handshake's guarantee: a loop about
    /// to park or spinning sees it and does not block.
    Nudge,
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
    /// A KeyboardInterrupt/SystemExit met while settling is raised once all are applied.
    pub(crate) fn drain_posted(&self, slf: &Bound<'_, LoopCore>, shared: &Shared) -> PyResult<()> {
        if shared.injector.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new(); // drain_into reserves what is queued
        shared.injector.drain_into(&mut items);
        match self.apply_posted(slf, items) {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }

    /// Applies drained items in posting order. A completion that cannot be settled is
    /// reported through `sys.unraisablehook` (a KeyboardInterrupt/SystemExit is returned
    /// instead, to be raised); the rest are still applied.
    pub(crate) fn apply_posted(
        &self,
        slf: &Bound<'_, LoopCore>,
        items: Vec<Posted>,
    ) -> Option<PyErr> {
        let py = slf.py();
        let mut fatal = None;
        let mut calls = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Posted::Call(h) => calls.push(Ready::Posted(h)),
                Posted::Nudge => {}
                Posted::Done(done) => {
                    let Completion { fut, outcome } = *done;
                    // Callbacks posted before this completion keep their place ahead of
                    // the callbacks that settling it schedules.
                    self.extend_ready(calls.drain(..));
                    if let Err(e) = self.settle(slf, fut, outcome) {
                        if is_fatal(py, &e) {
                            fatal.get_or_insert(e);
                        } else {
                            e.write_unraisable(py, None);
                        }
                    }
                }
            }
        }
        self.extend_ready(calls);
        fatal
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
                // become asyncio's. If converting fails, the job's own exception settles
                // the future (it must not stay pending); the failure is returned after.
                let converted = interop::convert_future_exc(py)
                    .and_then(|c| c.call1((errors::exception(py, &e),)));
                let (exc, late) = match converted {
                    Ok(exc) => (exc, None),
                    Err(c) => (errors::exception(py, &e).into_any(), Some(c)),
                };
                let r = fut.call_method1(pyo3::intern!(py, "set_exception"), (exc,));
                if let Some(c) = late {
                    r?;
                    return Err(c);
                }
                r
            }
            Outcome::Cancelled => fut.call_method0(pyo3::intern!(py, "cancel")),
            Outcome::Skipped => unreachable!("handled above"),
        };
        if let Err(e) = result {
            // e.g. set_exception(StopIteration) is refused with TypeError: settle the
            // future with that error rather than leave it pending forever.
            if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                fut.call_method1(
                    pyo3::intern!(py, "set_exception"),
                    (errors::exception(py, &e),),
                )?;
            } else {
                return Err(e);
            }
        }
        Ok(())
    }
}
