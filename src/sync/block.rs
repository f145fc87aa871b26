//! The thread side's blocking: timeout arguments parsed as `threading`/`queue` do, the
//! misuse check (a blocking call on a thread running an event loop is a `RuntimeError`
//! naming the async form), and parking without the GIL.
//! Invariant: a thread never parks while holding the GIL, and the main thread wakes at
//! least every 50 ms to run signal handlers (Ctrl+C interrupts a blocked acquire).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use super::wake::W;
use crate::interop::running_loop;

/// How long a blocking call may wait.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Non-blocking: succeed now or fail.
    Now,
    Until(Instant),
    Forever,
    /// A timeout the stdlib refuses only once it has to wait (`Event.wait(math.inf)` on a
    /// set event returns True): refused by `park`, after every way of not waiting.
    Refused(BadTimeout),
}

/// A timeout no wait can use.
#[derive(Clone, Copy, Debug)]
pub enum BadTimeout {
    NotANumber,
    TooLarge,
}

impl Wait {
    /// A timeout no wait can use, refused before anything is looked at: as a `_thread`
    /// lock's `acquire` and `_queue.SimpleQueue.get` (C) convert theirs first.
    pub fn refused_at_once(self) -> PyResult<Wait> {
        match self {
            Wait::Refused(bad) => Err(bad.error()),
            wait => Ok(wait),
        }
    }
}

impl BadTimeout {
    /// As `_thread` locks refuse it, under every stdlib wait.
    fn error(self) -> PyErr {
        match self {
            BadTimeout::NotANumber => PyValueError::new_err("Invalid value NaN (not a number)"),
            // (`_thread` says "timeout value is too large" only for the few values between
            // its limit and the largest its clock holds.)
            BadTimeout::TooLarge => {
                PyOverflowError::new_err("timestamp out of range for platform time_t")
            }
        }
    }
}

/// A `blocking`/`block` argument of a semaphore or a queue: any object, by its truth
/// value, as the stdlib's `if not blocking` reads it (None is false: do not block).
pub struct Truth(pub bool);

impl<'a, 'py> FromPyObject<'a, 'py> for Truth {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.is_truthy().map(Truth)
    }
}

/// A lock's `acquire(blocking)`, read as the running Python's `_thread` locks read it:
/// an int up to Python 3.11 (None, a float or a str is a TypeError there), a truth
/// value from 3.12 on.
pub struct Blocking(pub bool);

impl<'a, 'py> FromPyObject<'a, 'py> for Blocking {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.py().version_info() >= (3, 12) {
            obj.is_truthy().map(Blocking)
        } else {
            obj.extract::<i32>().map(|b| Blocking(b != 0))
        }
    }
}

/// `_thread.TIMEOUT_MAX` on Linux (seconds).
const TIMEOUT_MAX: f64 = 9_223_372_036.0;

/// A wait of `timeout` seconds; one no wait can use is `Wait::Refused` (see there).
fn until(timeout: f64) -> Wait {
    if timeout.is_nan() {
        return Wait::Refused(BadTimeout::NotANumber);
    }
    if timeout > TIMEOUT_MAX || !timeout.is_finite() {
        return Wait::Refused(BadTimeout::TooLarge);
    }
    if timeout <= 0.0 {
        return Wait::Now;
    }
    let d = Duration::from_secs_f64(timeout);
    Instant::now()
        .checked_add(d)
        .map_or(Wait::Forever, Wait::Until)
}

/// `Lock.acquire(blocking, timeout)` arguments (`timeout=-1`: forever), refused in the
/// running Python's words.
pub fn lock_wait(py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<Wait> {
    if !blocking {
        if timeout != -1.0 {
            return Err(PyValueError::new_err(
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(Wait::Now);
    }
    if timeout == -1.0 {
        return Ok(Wait::Forever);
    }
    if timeout < 0.0 {
        return Err(PyValueError::new_err(if py.version_info() >= (3, 13) {
            "timeout value must be a non-negative number"
        } else {
            "timeout value must be positive"
        }));
    }
    // A `_thread` lock refuses a timeout it cannot use at once, also when it is free.
    until(timeout).refused_at_once()
}

/// `Semaphore.acquire(blocking, timeout)` arguments (`timeout=None`: forever).
pub fn semaphore_wait(blocking: bool, timeout: Option<f64>) -> PyResult<Wait> {
    match (blocking, timeout) {
        (false, Some(_)) => Err(PyValueError::new_err(
            "can't specify timeout for non-blocking acquire",
        )),
        (false, None) => Ok(Wait::Now),
        (true, None) => Ok(Wait::Forever),
        (true, Some(t)) => Ok(until(t.max(0.0))),
    }
}

/// `Event.wait(timeout)`, `Condition.wait(timeout)` arguments (None: forever).
pub fn optional_wait(timeout: Option<f64>) -> PyResult<Wait> {
    match timeout {
        None => Ok(Wait::Forever),
        Some(t) => Ok(until(t.max(0.0))),
    }
}

/// `Queue.put/get(block, timeout)` arguments, with queue's own checks.
pub fn queue_wait(block: bool, timeout: Option<f64>) -> PyResult<Wait> {
    match (block, timeout) {
        (false, _) => Ok(Wait::Now),
        (true, None) => Ok(Wait::Forever),
        (true, Some(t)) if t < 0.0 => Err(PyValueError::new_err(
            "'timeout' must be a non-negative number",
        )),
        (true, Some(t)) => Ok(until(t)),
    }
}

/// Rule 4: refuses a blocking call on a thread that runs an event loop, whether or not
/// it would have had to wait this time (so the mistake shows in every run, not only
/// under contention). `call` names the blocking call, `async_form` what a coroutine
/// should write instead.
pub fn forbid_on_loop(py: Python<'_>, call: &str, async_form: &str) -> PyResult<()> {
    if running_loop(py)?.is_none() {
        return Ok(());
    }
    Err(PyRuntimeError::new_err(format!(
        "{call} would block the event loop running in this thread; \
         in a coroutine use '{async_form}'"
    )))
}

/// Asked at each park, not cached per thread: a thread that forks is the main thread of
/// the child (as CPython's `threading.main_thread()` says there too).
fn is_main_thread() -> bool {
    // SAFETY: both only read process/thread ids; they need no GIL and cannot fail.
    unsafe { libc::getpid() == libc::gettid() }
}

/// Parks a queued thread waiter without the GIL until it is granted (true) or `wait`
/// runs out (false). On the main thread, runs signal handlers every 50 ms, and once more
/// when granted (a signal that came while it waited runs first, as it interrupts
/// threading's acquire); a handler's exception (KeyboardInterrupt) is returned, the
/// waiter still queued or granted, and the caller passes a grant on.
pub fn park(py: Python<'_>, w: &Arc<W>, wait: Wait) -> PyResult<bool> {
    let deadline = match wait {
        Wait::Now => return Ok(!w.is_waiting()),
        Wait::Refused(bad) => return Err(bad.error()),
        Wait::Until(d) => Some(d),
        Wait::Forever => None,
    };
    if !is_main_thread() {
        return Ok(py.detach(|| w.park_until(deadline)));
    }
    const SLICE: Duration = Duration::from_millis(50);
    loop {
        let slice_end = Instant::now() + SLICE;
        let end = deadline.map_or(slice_end, |d| d.min(slice_end));
        if py.detach(|| w.park_until(Some(end))) {
            py.check_signals()?;
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        py.check_signals()?;
    }
}
