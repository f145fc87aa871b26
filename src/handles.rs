//! asyncio-compatible callback handles: `Handle` (call_soon, fd watchers) and
//! `TimerHandle` (call_later/call_at), plus the callback checks every scheduling call makes.
//! Invariant: handles are immutable but for atomic flags, so they need no lock or borrow.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::basic::CompareOp;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::PyTraverseError;

use crate::errors;
use crate::interop;

/// A callback with its arguments and the context it runs in.
pub struct Callback {
    pub callback: Py<PyAny>,
    pub args: Py<PyTuple>,
    pub context: Py<PyAny>,
    cancelled: AtomicBool,
}

impl Callback {
    /// `context=None` means a copy of the current context, as asyncio does.
    pub fn new(
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let context = match context {
            Some(c) if !c.is_none() => c.clone().unbind(),
            _ => interop::copy_context(callback.py())?,
        };
        Ok(Callback {
            callback: callback.clone().unbind(),
            args: args.clone().unbind(),
            context,
            cancelled: AtomicBool::new(false),
        })
    }

    /// Calls the callback inside its context; its exception is returned, not reported.
    pub fn run(&self, py: Python<'_>) -> PyResult<()> {
        interop::in_context(py, &self.context, || {
            self.callback.bind(py).call1(self.args.bind(py)).map(drop)
        })
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Relaxed)
    }

    /// Returns true if this call cancelled it (false if it already was).
    pub fn cancel(&self) -> bool {
        !self.cancelled.swap(true, Relaxed)
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        visit.call(&self.args)?;
        visit.call(&self.context)
    }

    fn repr_parts(&self, py: Python<'_>, class: &str, when: Option<f64>) -> PyResult<String> {
        let mut info = vec![class.to_string()];
        if self.is_cancelled() {
            info.push("cancelled".into());
        }
        if let Some(w) = when {
            info.push(format!("when={}", PyFloat::new(py, w).repr()?));
        }
        let src = interop::format_callback_source(py)?.call1((&self.callback, &self.args))?;
        info.push(src.to_string());
        Ok(format!("<{}>", info.join(" ")))
    }
}

/// Checks what asyncio's `_check_callback` checks, always (not only in debug mode).
pub fn check_callback(cb: &Bound<'_, PyAny>, method: &str, debug: bool) -> PyResult<()> {
    if interop::is_coroutine_object(cb) {
        return Err(errors::coroutine_refused(method));
    }
    if !cb.is_callable() {
        return Err(errors::not_callable(method, cb));
    }
    if interop::is_coroutine_function(cb, debug)? {
        return Err(errors::coroutine_refused(method));
    }
    Ok(())
}

/// What `loop.call_soon()` and the fd watchers return.
#[pyclass(module = "weaveloop._core", frozen, weakref, freelist = 1024)]
pub struct Handle {
    pub cb: Callback,
}

#[pymethods]
impl Handle {
    fn cancel(&self) {
        self.cb.cancel();
    }

    fn cancelled(&self) -> bool {
        self.cb.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.cb.context.clone_ref(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.cb.callback.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.cb.args.clone_ref(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.cb.is_cancelled()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.cb.repr_parts(py, "Handle", None)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.cb.traverse(&visit)
    }
}

/// What `loop.call_later()`/`call_at()` return.
#[pyclass(module = "weaveloop._core", frozen, weakref, freelist = 1024)]
pub struct TimerHandle {
    pub cb: Callback,
    pub when: f64,
    /// True while the handle sits in the loop's timer heap.
    pub scheduled: AtomicBool,
    /// The loop's count of cancelled-but-still-scheduled timers.
    cancelled_in_heap: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new(cb: Callback, when: f64, cancelled_in_heap: Arc<AtomicUsize>) -> Self {
        TimerHandle {
            cb,
            when,
            scheduled: AtomicBool::new(true),
            cancelled_in_heap,
        }
    }
}

#[pymethods]
impl TimerHandle {
    fn cancel(&self) {
        if self.cb.cancel() && self.scheduled.load(Relaxed) {
            self.cancelled_in_heap.fetch_add(1, Relaxed);
        }
    }

    fn cancelled(&self) -> bool {
        self.cb.is_cancelled()
    }

    fn when(&self) -> f64 {
        self.when
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.cb.context.clone_ref(py)
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Relaxed)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.cb.callback.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.cb.args.clone_ref(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.cb.is_cancelled()
    }

    fn __hash__(&self) -> u64 {
        self.when.to_bits()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let o = other.get();
        let same = || -> PyResult<bool> {
            Ok(self.when == o.when
                && self.cb.callback.bind(py).eq(o.cb.callback.bind(py))?
                && self.cb.args.bind(py).eq(o.cb.args.bind(py))?
                && self.cb.is_cancelled() == o.cb.is_cancelled())
        };
        let result = match op {
            CompareOp::Lt => self.when < o.when,
            CompareOp::Gt => self.when > o.when,
            CompareOp::Le => self.when < o.when || same()?,
            CompareOp::Ge => self.when > o.when || same()?,
            CompareOp::Eq => same()?,
            CompareOp::Ne => !same()?,
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.cb.repr_parts(py, "TimerHandle", Some(self.when))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.cb.traverse(&visit)
    }
}
