//! What other threads post to a loop through its injector, and how the loop thread
//! applies it: thread-safe callbacks join the ready queue; executor completions settle
//! their asyncio future (unless it was cancelled meanwhile).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use pyo3::prelude::*;

use crate::errors;
use crate::handles::Handle;
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
    Call(Py<Handle>),
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
    /// Applies what waits in the injector if the loop is idle (see `idle`): for a poster
    /// that found the loop not running (`Shared::drained_by_poster`), and for
    /// `run_forever` as it ends. What is applied is where the GC sees it (futures
    /// settled, callbacks in the ready queue), so a loop dropped without `close()` is
    /// collected rather than kept alive by a completion or a callback that refers back
    /// to it from the injector.
    ///
    /// Settling runs Python code, which may let go of the GIL; a thread starting the
    /// loop meanwhile would refuse the `call_soon`s that settling makes from this thread
    /// (the thread check), and a future would drop the done callbacks left, its waiter
    /// never woken. So the loop does not start while another thread drains for it
    /// (`drainer`, see `wait_for_foreign_drain`); a second thread finding one draining
    /// leaves it to that one, which drains until nothing is left.
    pub(crate) fn drain_while_idle(&self, slf: &Bound<'_, LoopCore>) -> PyResult<()> {
        let me = interop::thread_ident();
        // (No Python code runs between the idle check and the claim, nor in the loop's
        // own check before it starts: the GIL orders them.)
        if !self.idle()
            || self
                .drainer
                .compare_exchange(0, me, Relaxed, Relaxed)
                .is_err()
        {
            return Ok(());
        }
        // (Given up however the drain ends: a loop must never wait for a drain that is
        // over.)
        struct Claim<'a>(&'a AtomicU64);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                self.0.store(0, Release);
            }
        }
        let _claim = Claim(&self.drainer);
        let shared = self.shared.get();
        let mut result = Ok(());
        while result.is_ok() && self.idle() && !shared.injector.is_empty() {
            result = self.drain_posted(slf, shared);
        }
        result
    }

    /// Before the loop starts running (or runs an iteration) on this thread: waits,
    /// without the GIL, until no other thread is applying posted items on the idle
    /// loop's behalf (see `drain_while_idle`).
    pub(crate) fn wait_for_foreign_drain(&self, py: Python<'_>) {
        let me = interop::thread_ident();
        let mut counted = false;
        loop {
            let drainer = self.drainer.load(Acquire);
            if drainer == 0 || drainer == me {
                return;
            }
            if !counted {
                self.foreign_drain_waits.fetch_add(1, Relaxed);
                counted = true;
            }
            py.detach(std::thread::yield_now);
        }
    }

    /// Applies what waits in the injector: callbacks join the ready queue in posting
    /// order, then completions settle their futures in posting order (see `settle_all`;
    /// a KeyboardInterrupt/SystemExit met while settling is raised once all are applied).
    pub(crate) fn drain_posted(&self, slf: &Bound<'_, LoopCore>, shared: &Shared) -> PyResult<()> {
        let done = self.queue_posted(shared);
        self.settle_all(slf, done)
    }

    /// The first half of `drain_posted`, for an iteration: callbacks join the ready
    /// queue; the completions are returned, to be settled once the iteration has queued
    /// its I/O watchers and due timers. On the stock loop a completion is a callback
    /// (`_call_set_state`) that sets the result when it runs, so the wake-up it schedules
    /// runs after those: settled at once, an executor result would overtake a timeout
    /// that was already due (`asyncio.timeout()` would not fire). Does nothing while
    /// `settle_all` runs (settling runs Python code, which may call `call_soon`): the new
    /// items wait for the next drain, behind the batch being settled.
    pub(crate) fn queue_posted(&self, shared: &Shared) -> Vec<Completion> {
        let mut done = Vec::new();
        if shared.injector.is_empty() || self.applying_posted.load(Relaxed) {
            return done;
        }
        let mut items = Vec::new(); // drain_into reserves what is queued
        shared.injector.drain_into(&mut items);
        let calls = items.into_iter().filter_map(|item| match item {
            Posted::Call(h) => Some(Ready::Posted(h)),
            Posted::Nudge => None,
            Posted::Done(d) => {
                done.push(*d);
                None
            }
        });
        self.extend_ready(calls);
        done
    }

    /// Settles drained completions in posting order. One that cannot be settled is
    /// reported through `sys.unraisablehook` (a KeyboardInterrupt/SystemExit is returned
    /// instead, to be raised); the rest are still settled.
    pub(crate) fn settle_all(
        &self,
        slf: &Bound<'_, LoopCore>,
        done: Vec<Completion>,
    ) -> PyResult<()> {
        if done.is_empty() {
            return Ok(());
        }
        let py = slf.py();
        let mut fatal = None;
        self.applying_posted.store(true, Relaxed);
        for Completion { fut, outcome } in done {
            if let Err(e) = self.settle(slf, fut, outcome) {
                if is_fatal(py, &e) {
                    fatal.get_or_insert(e);
                } else {
                    e.write_unraisable(py, None);
                }
            }
        }
        self.applying_posted.store(false, Relaxed);
        match fatal {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }

    fn settle(&self, slf: &Bound<'_, LoopCore>, fut: Py<PyAny>, outcome: Outcome) -> PyResult<()> {
        let py = slf.py();
        let tracked = self.untrack_in_flight(&fut);
        drop(tracked);
        let fut = fut.bind(py);
        if matches!(outcome, Outcome::Skipped)
            || fut.call_method0(crate::intern!(py, "done"))?.is_truthy()?
        {
            return Ok(());
        }
        let result = match outcome {
            Outcome::Value(v) => {
                interop::call_method(fut, crate::intern!(py, "set_result"), &[v.bind(py)])
            }
            Outcome::Error(e) => {
                // As wrap_future does: concurrent.futures' Cancelled/InvalidState errors
                // become asyncio's. If converting fails, the job's own exception settles
                // the future (it must not stay pending); the failure is returned after.
                let converted = interop::convert_future_exc(py).and_then(|c| {
                    interop::call_with_slice(c, &[errors::exception(py, &e).as_ptr()])
                });
                let (exc, late) = match converted {
                    Ok(exc) => (exc, None),
                    Err(c) => (errors::exception(py, &e).into_any(), Some(c)),
                };
                let r = interop::call_method(fut, crate::intern!(py, "set_exception"), &[&exc]);
                if let Some(c) = late {
                    r?;
                    return Err(c);
                }
                r
            }
            Outcome::Cancelled => interop::call_method(fut, crate::intern!(py, "cancel"), &[]),
            Outcome::Skipped => unreachable!("handled above"),
        };
        if let Err(e) = result {
            // e.g. set_exception(StopIteration) is refused with TypeError: settle the
            // future with that error rather than leave it pending forever.
            if !fut.call_method0(crate::intern!(py, "done"))?.is_truthy()? {
                let exc = errors::exception(py, &e).into_any();
                interop::call_method(fut, crate::intern!(py, "set_exception"), &[&exc])?;
            } else {
                return Err(e);
            }
        }
        Ok(())
    }
}
