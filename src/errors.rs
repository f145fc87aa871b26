//! The exceptions weaveloop raises, with asyncio's types and messages, in one place.

use pyo3::exceptions::{PyBaseException, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The exception object of `err` with its traceback attached. (`PyErr::value` alone
/// leaves `__traceback__` unset on 3.11, which keeps the traceback beside the value;
/// handed to Python that way, an exception would be logged or re-raised without it.)
pub fn exception<'py>(py: Python<'py>, err: &PyErr) -> Bound<'py, PyBaseException> {
    err.clone_ref(py).into_value(py).into_bound(py)
}

pub fn loop_closed() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

pub fn wrong_thread() -> PyErr {
    PyRuntimeError::new_err(
        "Non-thread-safe operation invoked on an event loop other than the current one",
    )
}

pub fn already_running() -> PyErr {
    PyRuntimeError::new_err("This event loop is already running")
}

pub fn pool_shut_down() -> PyErr {
    PyRuntimeError::new_err("cannot schedule new futures after shutdown")
}

pub fn coroutine_refused(method: &str) -> PyErr {
    PyTypeError::new_err(format!("coroutines cannot be used with {method}()"))
}

pub fn not_callable(method: &str, obj: &Bound<'_, PyAny>) -> PyErr {
    let r = obj
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".into());
    PyTypeError::new_err(format!(
        "a callable object was expected by {method}(), got {r}"
    ))
}

/// `what` is "delay" or "when".
pub fn nan_time(what: &str) -> PyErr {
    PyValueError::new_err(format!("Invalid {what}: NaN (not a number)"))
}

/// An OS error from the poller, built as Python builds its own: `OSError(errno,
/// strerror)`, which picks the subclass (`FileNotFoundError`, ...) and sets `.errno`.
pub fn os_error(e: std::io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(code) => {
            // io::Error's Display appends " (os error N)" to the C library's text.
            let text = std::io::Error::from_raw_os_error(code).to_string();
            let strerror = text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text)
                .to_owned();
            PyOSError::new_err((code, strerror))
        }
        None => PyErr::from(e),
    }
}
