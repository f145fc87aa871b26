//! The thread side's blocking: timeout arguments parsed as `threading`/`queue` do, the
//! misuse check (a blocking call on a thread running an event loop is a `RuntimeError`
//! naming the async form), and parking without the GIL.
//! Invariant: a thread never parks while holding the GIL, and the main thread wakes at
//! least every 50 ms to run signal handlers (Ctrl+C interrupts a blocked acquire).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use super::wake::W;
use crate::interop::running_loop;

/// How long a blocking call may wait.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Non-blocking: succeed now or fail.
    Now,
    Until(Instant),
    Forever,
    /// A timeout the clock cannot hold, refused by `park` once the call has to wait: a
    /// queue's get or put reads its timeout at once but uses it only then (a `get` with
    /// `timeout=math.inf` of an item that is there returns it).
    Refused(BadTimeout),
}

/// A timeout no wait can use.
#[derive(Clone, Copy, Debug)]
pub enum BadTimeout {
    NotANumber,
    /// Beyond what CPython's clock holds; `int`: it was given as an int.
    TooLarge {
        int: bool,
    },
}

impl BadTimeout {
    /// As CPython's clock refuses it (`_PyTime_FromSecondsObject`), under every stdlib
    /// wait. (`_thread` says "timeout value is too large" only for the few values between
    /// its limit and the largest its clock holds.)
    fn error(self, py: Python<'_>) -> PyErr {
        match self {
            BadTimeout::NotANumber => PyValueError::new_err("Invalid value NaN (not a number)"),
            BadTimeout::TooLarge { int: false } => {
                PyOverflowError::new_err("timestamp out of range for platform time_t")
            }
            BadTimeout::TooLarge { int: true } => {
                PyOverflowError::new_err(if py.version_info() >= (3, 13) {
                    "timestamp too large to convert to C PyTime_t"
                } else {
                    "timestamp too large to convert to C _PyTime_t"
                })
            }
        }
    }
}

/// A timeout in seconds, as read from its argument (see `ClockSeconds`, `queue_wait`).
#[derive(Clone, Copy, Debug)]
pub struct Seconds {
    value: f64,
    /// Given as an int (for the words of its refusal).
    int: bool,
}

impl Seconds {
    /// The timeout in whole nanoseconds, rounded by `round` as CPython's clock rounds a
    /// float (`_PyTime_FromSecondsObject`; an int's are whole already).
    fn nanoseconds(self, round: impl Fn(f64) -> f64) -> f64 {
        round(self.value * 1e9)
    }

    /// What CPython's clock cannot hold: NaN, or beyond `clock_holds` either way.
    fn unusable(self) -> Option<BadTimeout> {
        if self.value.is_nan() {
            return Some(BadTimeout::NotANumber);
        }
        (!clock_holds(self.value)).then_some(BadTimeout::TooLarge { int: self.int })
    }
}

/// A timeout argument read as CPython's clock reads one (`_PyTime_FromSecondsObject`): a
/// float, or an int (anything with `__index__`; a Fraction is a TypeError), refused if
/// NaN or beyond what the clock holds, before anything else is looked at. For a `_thread`
/// lock's `acquire` and `_queue.SimpleQueue.get` (C).
#[derive(Clone, Copy, Debug)]
pub struct ClockSeconds(Seconds);

impl ClockSeconds {
    /// `Lock.acquire`'s default, "no timeout".
    pub const UNSET: ClockSeconds = ClockSeconds(Seconds {
        value: -1.0,
        int: true,
    });
}

impl<'a, 'py> FromPyObject<'a, 'py> for ClockSeconds {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let py = obj.py();
        let seconds = if let Ok(f) = obj.cast::<PyFloat>() {
            Seconds {
                value: f.value(),
                int: false,
            }
        } else {
            // An int, or what `operator.index` makes one of (its TypeError otherwise, in
            // CPython's words); an int subclass's own value, not its `__float__`.
            let index = if obj.is_exact_instance_of::<PyInt>() {
                obj.to_owned()
            } else {
                py.import("operator")?.getattr("index")?.call1((obj,))?
            };
            let value = match index.extract::<f64>() {
                Ok(v) => v,
                Err(_) if index.lt(0)? => f64::NEG_INFINITY,
                Err(_) => f64::INFINITY,
            };
            Seconds { value, int: true }
        };
        match seconds.unusable() {
            Some(bad) => Err(bad.error(py)),
            None => Ok(ClockSeconds(seconds)),
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

/// The timeouts CPython's clock holds: under 2**63 ns, either way (`_thread` accepts
/// 9223372036.854774 s; its `TIMEOUT_MAX`, 9223372036.0, is not where it refuses).
fn clock_holds(seconds: f64) -> bool {
    seconds.abs() * 1e9 < 9_223_372_036_854_775_808.0
}

/// A wait of `timeout` seconds; one the clock cannot hold is `Wait::Refused`.
fn until(timeout: Seconds) -> Wait {
    if let Some(bad) = timeout.unusable() {
        return Wait::Refused(bad);
    }
    let timeout = timeout.value;
    if timeout <= 0.0 {
        return Wait::Now;
    }
    let d = Duration::from_secs_f64(timeout);
    Instant::now()
        .checked_add(d)
        .map_or(Wait::Forever, Wait::Until)
}

/// `Lock.acquire(blocking, timeout)` arguments (`timeout=-1`: forever), refused in the
/// running Python's words and order: a timeout its clock cannot hold first.
pub fn lock_wait(py: Python<'_>, blocking: bool, timeout: ClockSeconds) -> PyResult<Wait> {
    let timeout = timeout.0;
    // (In whole nanoseconds, rounded away from zero as the clock rounds a lock's timeout:
    // -0.9999999995 is -1, no timeout.)
    let ns = timeout.nanoseconds(|d| if d >= 0.0 { d.ceil() } else { d.floor() });
    const UNSET_NS: f64 = -1e9;
    if !blocking {
        if ns != UNSET_NS {
            return Err(PyValueError::new_err(
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(Wait::Now);
    }
    if ns == UNSET_NS {
        return Ok(Wait::Forever);
    }
    if ns < 0.0 {
        return Err(PyValueError::new_err(if py.version_info() >= (3, 13) {
            "timeout value must be a non-negative number"
        } else {
            "timeout value must be positive"
        }));
    }
    Ok(until(timeout))
}

/// Whether a `Condition.wait`-style timeout may make the call wait (None, or above 0),
/// looked at without raising: rule 4 refuses a blocking call before its timeout is read,
/// and one that does not compare with 0 is refused where `condition_wait` reads it.
pub fn may_wait(timeout: Option<&Bound<'_, PyAny>>) -> bool {
    match timeout {
        None => true,
        Some(t) => t.gt(0).unwrap_or(true),
    }
}

/// A timeout read as `threading.Condition.wait` reads it, when it is about to wait: None
/// waits for good; one not above 0 (Python's `>`, with its TypeError) does not wait; one
/// above 0 as a `_thread` lock's acquire reads it (`ClockSeconds`: a Fraction is a
/// TypeError, inf an OverflowError). `Event.wait` reads it so when the event is not set,
/// `Semaphore.acquire` when no permit is free.
pub fn condition_wait(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Wait> {
    match timeout {
        None => Ok(Wait::Forever),
        Some(t) if !t.gt(0)? => Ok(Wait::Now),
        Some(t) => Ok(until(t.extract::<ClockSeconds>()?.0)),
    }
}

/// The stdlib's deadline `time() + timeout`, less the time: Python's addition to a
/// float, with its errors (a str, a Decimal, an int too large for a float), as
/// `threading.Semaphore` and `queue.Queue` make theirs.
pub fn deadline_seconds<'py>(timeout: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    PyFloat::new(timeout.py(), 0.0).add(timeout)
}

/// `Semaphore.acquire`'s timeout once no permit is free: threading's makes a deadline of
/// it first (`deadline_seconds`), then waits on its condition with it (`condition_wait`).
pub fn semaphore_wait(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Wait> {
    if let Some(t) = timeout {
        deadline_seconds(t)?;
    }
    condition_wait(timeout)
}

/// `Queue.put/get(block, timeout)` arguments, read as the queue module reads them: not
/// at all unless blocking, then `timeout < 0` refused (Python's comparison, with its
/// error), then a deadline made (`deadline_seconds`).
pub fn queue_wait(block: bool, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Wait> {
    match (block, timeout) {
        (false, _) => Ok(Wait::Now),
        (true, None) => Ok(Wait::Forever),
        (true, Some(t)) => {
            if t.lt(0)? {
                return Err(PyValueError::new_err(
                    "'timeout' must be a non-negative number",
                ));
            }
            let value: f64 = deadline_seconds(t)?.extract()?;
            Ok(until(Seconds { value, int: false }))
        }
    }
}

/// `SimpleQueue.get(block, timeout)` arguments, read as `_queue` (C) reads them: a
/// timeout as the clock reads it (see `ClockSeconds`), then refused if negative.
pub fn simple_queue_wait(block: bool, timeout: Option<ClockSeconds>) -> PyResult<Wait> {
    match (block, timeout) {
        (false, _) => Ok(Wait::Now),
        (true, None) => Ok(Wait::Forever),
        // (In whole nanoseconds, rounded up as `_queue` rounds it: -1e-10 is 0.)
        (true, Some(ClockSeconds(t))) if t.nanoseconds(f64::ceil) < 0.0 => Err(
            PyValueError::new_err("'timeout' must be a non-negative number"),
        ),
        (true, Some(ClockSeconds(t))) => Ok(until(t)),
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
        Wait::Refused(bad) => return Err(bad.error(py)),
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
