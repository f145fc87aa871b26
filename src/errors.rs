//! The exceptions weaveloop raises, with asyncio's types and messages, in one place.

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

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

/// An OS error from the poller, as the matching OSError subclass.
pub fn os_error(e: std::io::Error) -> PyErr {
    PyErr::from(e)
}
