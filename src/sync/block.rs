//! The thread side's blocking: timeout arguments parsed as `threading`/`queue` do, the
//! misuse check (a blocking call on a thread running an event loop is a `RuntimeError`
//! naming the async form), and parking without the GIL.
//! Invariant: a thread never parks while holding the GIL, and the main thread wakes at
//! least every 50 ms to run signal handlers (Ctrl+C interrupts a blocked acquire).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;

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
    /// Beyond what CPython's clock holds; `int`: it was given as an int.
    TooLarge {
        int: bool,
    },
    /// An int too large for a float, which `threading.Semaphore` and `queue.Queue` add to
    /// the time to make a deadline.
    NotAFloat,
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
            BadTimeout::NotAFloat => PyOverflowError::new_err("int too large to convert to float"),
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

/// A timeout argument in seconds: a float, an int, or what converts to a float (more than
/// `_thread` takes, which refuses a Fraction or a Decimal). An int
/// too large for a float (`10**400`) reads as an infinite one of its sign: refused as
/// too large by a wait that uses it, and nothing to the calls that never look at it (a
/// set event's `wait`).
#[derive(Clone, Copy, Debug)]
pub struct Seconds {
    value: f64,
    /// Given as an int (for the words of its refusal).
    int: bool,
}

impl Seconds {
    /// `Lock.acquire`'s default, "no timeout".
    pub const UNSET: Seconds = Seconds {
        value: -1.0,
        int: true,
    };

    /// What CPython's clock cannot hold: NaN, or beyond `clock_holds` either way.
    fn unusable(self) -> Option<BadTimeout> {
        if self.value.is_nan() {
            return Some(BadTimeout::NotANumber);
        }
        (!clock_holds(self.value)).then_some(BadTimeout::TooLarge { int: self.int })
    }

    /// The timeout, refused if CPython's clock cannot hold it: as a `_thread` lock's
    /// `acquire` and `_queue.SimpleQueue.get` (C) convert theirs, before they look at
    /// anything else.
    pub fn converted(self, py: Python<'_>) -> PyResult<Self> {
        match self.unusable() {
            Some(bad) => Err(bad.error(py)),
            None => Ok(self),
        }
    }

    /// An int too large for a float (read as infinite).
    fn not_a_float(self) -> bool {
        self.int && self.value.is_infinite()
    }

    /// A negative timeout (or NaN) waits not at all, as `Condition.wait`'s does.
    fn at_least_zero(self) -> Self {
        Seconds {
            value: self.value.max(0.0),
            ..self
        }
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Seconds {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let int = obj.is_instance_of::<PyInt>();
        let value = match obj.extract::<f64>() {
            Ok(v) => v,
            Err(e) if int && e.is_instance_of::<PyOverflowError>(obj.py()) => {
                if obj.lt(0)? {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Seconds { value, int })
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

/// A wait of `timeout` seconds; one no wait can use is `Wait::Refused` (see there).
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
pub fn lock_wait(py: Python<'_>, blocking: bool, timeout: Seconds) -> PyResult<Wait> {
    let timeout = timeout.converted(py)?;
    let timeout_value = timeout.value;
    if !blocking {
        if timeout_value != -1.0 {
            return Err(PyValueError::new_err(
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(Wait::Now);
    }
    if timeout_value == -1.0 {
        return Ok(Wait::Forever);
    }
    if timeout_value < 0.0 {
        return Err(PyValueError::new_err(if py.version_info() >= (3, 13) {
            "timeout value must be a non-negative number"
        } else {
            "timeout value must be positive"
        }));
    }
    Ok(until(timeout))
}

/// `Semaphore.acquire(blocking, timeout)` arguments (`timeout=None`: forever).
pub fn semaphore_wait(blocking: bool, timeout: Option<Seconds>) -> PyResult<Wait> {
    match (blocking, timeout) {
        (false, Some(_)) => Err(PyValueError::new_err(
            "can't specify timeout for non-blocking acquire",
        )),
        (false, None) => Ok(Wait::Now),
        (true, None) => Ok(Wait::Forever),
        // (The stdlib makes a deadline of it only once it has to wait.)
        (true, Some(t)) if t.not_a_float() => Ok(Wait::Refused(BadTimeout::NotAFloat)),
        (true, Some(t)) => Ok(until(t.at_least_zero())),
    }
}

/// `Event.wait(timeout)`, `Condition.wait(timeout)` arguments (None: forever).
pub fn optional_wait(timeout: Option<Seconds>) -> PyResult<Wait> {
    match timeout {
        None => Ok(Wait::Forever),
        Some(t) => Ok(until(t.at_least_zero())),
    }
}

/// `Queue.put/get(block, timeout)` arguments, with queue's own checks.
pub fn queue_wait(py: Python<'_>, block: bool, timeout: Option<Seconds>) -> PyResult<Wait> {
    match (block, timeout) {
        (false, _) => Ok(Wait::Now),
        (true, None) => Ok(Wait::Forever),
        (true, Some(t)) if t.value < 0.0 => Err(PyValueError::new_err(
            "'timeout' must be a non-negative number",
        )),
        // (The queue module makes its deadline, a float, before it looks at the queue: an
        // int too large for one is refused at once, and one its clock cannot hold in the
        // words for a float.)
        (true, Some(t)) if t.not_a_float() => Err(BadTimeout::NotAFloat.error(py)),
        (true, Some(t)) => Ok(until(Seconds { int: false, ..t })),
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
