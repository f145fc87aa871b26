//! asyncio-compatible callback handles: `Handle` (call_soon, fd watchers) and
//! `TimerHandle` (call_later/call_at), plus the callback checks every scheduling call makes.
//! Invariant: handles are immutable but for atomic flags and the callable of a callback,
//! which is only touched with the GIL held (`GilCell`); so they need no lock or borrow.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::basic::CompareOp;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::PyTraverseError;

use crate::errors;
use crate::gil::GilCell;
use crate::interop;
use crate::spent::Spent;

/// The context that callbacks scheduled from an empty context run in: one empty
/// `Context` reused until a callback leaves a variable set in it, then replaced. A context
/// with no variables is indistinguishable from a fresh one, and callbacks cannot get hold
/// of the object itself (`copy_context()` returns a copy), so reuse is unobservable but
/// for one contrived case: a `Token` one callback keeps after resetting its variable is
/// accepted by `reset()` in a later callback (asyncio: ValueError, another context). It
/// saves allocating a context per callback. A handle whose `get_context()` is asked for
/// gets a context of its own first (see `Callback::get_context`), and one whose callback
/// left a variable set (or raised) keeps the context it ran in, as asyncio's handle keeps
/// its copy: the next run of a watcher's callback, and `get_context()`, see the change.
#[derive(Default)]
pub struct EmptyContext(Option<Py<PyAny>>);

impl EmptyContext {
    fn get(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.0 {
            Some(c) => Ok(c.clone_ref(py)),
            None => {
                let c = interop::new_context(py)?;
                self.0 = Some(c.clone_ref(py));
                Ok(c)
            }
        }
    }

    /// The next callback runs in a new empty context, not the last one.
    fn forget(&mut self) {
        self.0 = None;
    }

    /// Whether the callback that just ran in `ctx` left a variable set in it (then the
    /// next callback gets a new empty context).
    fn changed_by_run(&mut self, py: Python<'_>, ctx: &Py<PyAny>) -> bool {
        let changed = ctx.bind(py).len().map_or(true, |n| n != 0);
        if changed {
            self.0 = None;
        }
        changed
    }
}

/// The callbacks that run in a shared empty context now, by address, each with that
/// context (borrowed from its run, which holds it): `get_context()` on a handle whose
/// callback is listed names the context it runs in (see `Callback::get_context`).
/// Several at once: runs nested through `_run_once()` (the innermost last), and runs on
/// loops of other threads while a callback here lets go of the GIL. Each run removes
/// its own entry (`RunningEmpty`), so they may end in any order: one that restored what
/// it found, as this did once, could put back an entry whose run had ended and whose
/// context was freed.
static RUNNING_EMPTY: GilCell<Vec<(usize, usize)>> = GilCell::new(Vec::new());

/// A run's entry in `RUNNING_EMPTY`, removed when the run ends (also by unwinding).
struct RunningEmpty<'py> {
    py: Python<'py>,
    entry: (usize, usize),
}

impl<'py> RunningEmpty<'py> {
    #[inline(always)]
    fn enter(py: Python<'py>, entry: (usize, usize)) -> Self {
        RUNNING_EMPTY.with(py, |runs| runs.push(entry));
        RunningEmpty { py, entry }
    }
}

impl Drop for RunningEmpty<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        RUNNING_EMPTY.with(self.py, |runs| {
            // (Almost always the last: runs on other threads rarely interleave.)
            if runs.last() == Some(&self.entry) {
                runs.pop();
            } else if let Some(i) = runs.iter().rposition(|e| *e == self.entry) {
                runs.remove(i);
            }
        });
    }
}

/// The error comes boxed: a `PyResult<()>` is eight words, and the run path moved it
/// whole through every layer (the unset words too), each move stalling on the
/// one-word store just made (store forwarding fails); a boxed error is one word,
/// kept in a register.
#[inline(always)]
fn call(py: Python<'_>, t: &Target) -> Result<(), Box<PyErr>> {
    match t.args.call(t.callback.bind(py)) {
        Ok(_) => Ok(()),
        Err(e) => Err(Box::new(e)),
    }
}

/// `context.run(callback, *args)`, for a `context` that is not a `Context`.
fn call_through_run(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    t: &Target,
) -> Result<(), Box<PyErr>> {
    let mut all = vec![t.callback.clone_ref(py)];
    match &t.args {
        Args::Empty => {}
        Args::One(a) => all.push(a.clone_ref(py)),
        Args::Two(ab) => all.extend(ab.iter().map(|a| a.clone_ref(py))),
        Args::Many(many) => all.extend(many.bind(py).iter().map(Bound::unbind)),
    }
    let result = PyTuple::new(py, all).and_then(|all| {
        let run = context.getattr(crate::intern!(py, "run"))?;
        interop::call_with_tuple(&run, &all)
    });
    result.map(drop).map_err(Box::new)
}

/// The callable and its arguments; dropped once a one-shot handle has run or any
/// handle is cancelled, which breaks `obj -> handle -> obj.method` cycles (handles are
/// not tracked by the cyclic GC, so nothing else would).
struct Target {
    callback: Py<PyAny>,
    args: Args,
}

/// A callback's positional arguments. None, one (the shape of nearly every callback:
/// a future passes itself to its done callbacks) or two (`asyncio.sleep`'s timer: the
/// future and the result) are kept apart from the `*args` tuple made for the scheduling
/// call, which dies when the call returns. Kept, that tuple would be a live allocation
/// for the cyclic GC while the callback waits (tracked, as it holds the future), and a
/// burst of them sets off collections that walk them all. (Two are boxed so that a
/// `Callback` stays 56 bytes.)
pub enum Args {
    Empty,
    One(Py<PyAny>),
    Two(Box<[Py<PyAny>; 2]>),
    Many(Py<PyTuple>),
}

impl Args {
    fn new(args: &Bound<'_, PyTuple>) -> Self {
        let mut items = args.iter();
        match (items.next(), items.next(), items.next()) {
            (None, ..) => Args::Empty,
            (Some(one), None, _) => Args::One(one.unbind()),
            (Some(a), Some(b), None) => Args::Two(Box::new([a.unbind(), b.unbind()])),
            _ => Args::Many(args.clone().unbind()),
        }
    }

    #[inline(always)]
    fn call<'py>(&self, callback: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Args::Empty => interop::call_with_slice(callback, &[]),
            Args::One(a) => interop::call_with_slice(callback, &[a.as_ptr()]),
            Args::Two(ab) => interop::call_with_slice(callback, &[ab[0].as_ptr(), ab[1].as_ptr()]),
            Args::Many(t) => interop::call_with_tuple(callback, t.bind(callback.py())),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Args::Empty => Args::Empty,
            Args::One(a) => Args::One(a.clone_ref(py)),
            Args::Two(ab) => Args::Two(Box::new([ab[0].clone_ref(py), ab[1].clone_ref(py)])),
            Args::Many(t) => Args::Many(t.clone_ref(py)),
        }
    }

    /// As asyncio's `handle._args`: a tuple (a new one each time for one or two arguments).
    pub fn to_tuple(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Args::Empty => PyTuple::empty(py).into_any().unbind(),
            Args::One(a) => PyTuple::new(py, [a])?.into_any().unbind(),
            Args::Two(ab) => PyTuple::new(py, ab.iter())?.into_any().unbind(),
            Args::Many(t) => t.clone_ref(py).into_any(),
        })
    }

    fn release(self, py: Python<'_>) {
        match self {
            Args::Empty => {}
            Args::One(a) => interop::release(py, a),
            Args::Two(ab) => {
                let [a, b] = *ab;
                interop::release(py, a);
                interop::release(py, b);
            }
            Args::Many(t) => interop::release(py, t),
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Args::Empty => Ok(()),
            Args::One(a) => visit.call(a),
            Args::Two(ab) => {
                visit.call(&ab[0])?;
                visit.call(&ab[1])
            }
            Args::Many(t) => visit.call(t),
        }
    }
}

impl Target {
    /// Lets go of the callable and arguments, guarded as a call (`interop::release`):
    /// one of them may be deallocated here, its `__del__` letting go of the GIL.
    fn release(self, py: Python<'_>) {
        interop::release(py, self.callback);
        self.args.release(py);
    }
}

/// A callback's exception, with what is needed to report it as asyncio does.
pub struct CallbackError {
    pub err: PyErr,
    pub callback: Py<PyAny>,
    pub args: Args,
    pub source_traceback: Option<Py<PyAny>>,
}

/// A callback with its arguments and the context it runs in.
///
/// `context` is None when the callback was scheduled from a context with no variables
/// set (the common case for threads and plain callbacks): it then runs in a fresh empty
/// context, which is what a copy of an empty context is, but nothing has to be kept
/// alive in the queue. (Queued copies, tracked by the cyclic GC, dominated the cost of
/// `call_soon`/`call_soon_threadsafe` bursts.)
pub struct Callback {
    target: GilCell<Option<Target>>,
    /// None: scheduled from an empty context (see `EmptyContext`); set, after the fact,
    /// to the one it ran in if it raised (see `run`).
    context: GilCell<Option<Py<PyAny>>>,
    /// 0 or 1. A word, not an `AtomicBool`: the callback is moved in 8-byte pieces
    /// right after it is built, and a piece read back over a one-byte store stalls
    /// (store forwarding fails).
    cancelled: AtomicUsize,
    /// For a callback the queue holds apart from its handle (`Held::Shared`): the handle
    /// object the scheduling call returned, while it is alive (not owned: that object's
    /// drop clears it). Error reports name that very object.
    face: AtomicPtr<pyo3::ffi::PyObject>,
    /// Debug mode only, as asyncio's extras.
    debug: Option<Box<DebugInfo>>,
}

// The ready queue holds callbacks by the hundred thousand in a burst: a larger one
// costs call_soon measurably (64 bytes: -4%).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Callback>() == 56);

/// What a callback scheduled in debug mode also keeps.
struct DebugInfo {
    /// Where the callback was scheduled.
    source_traceback: Py<PyAny>,
    /// The handle's repr when it was cancelled: asyncio keeps it in debug mode, so that
    /// a report about the cancelled handle still names its callback.
    repr_at_cancel: GilCell<Option<String>>,
}

/// Debug mode runs Python code while a callback is being scheduled (asyncio's
/// `iscoroutinefunction`, the source traceback), and a signal handler may raise there
/// (KeyboardInterrupt on Ctrl+C). Raised at once, it would unschedule the callback: a
/// future's wake-up lost, so the task awaiting it never runs again and the cleanup that
/// gathers it after the interrupt hangs. Such an exception (a BaseException that is not
/// an Exception) is held instead, and raised once the callback is queued, as if the
/// signal had come just after. (A second one meanwhile is dropped: one interrupt comes
/// out.)
#[derive(Default)]
pub struct HeldInterrupt(Option<PyErr>);

impl HeldInterrupt {
    /// `r`, or `instead()` if `r` is an interrupt, which is then held.
    pub fn hold<T>(
        &mut self,
        py: Python<'_>,
        r: PyResult<T>,
        instead: impl FnOnce() -> T,
    ) -> PyResult<T> {
        match r {
            Err(e) if !e.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                self.0.get_or_insert(e);
                Ok(instead())
            }
            r => r,
        }
    }

    /// The held interrupt, if any, as the scheduling call's error.
    pub fn raise(self) -> PyResult<()> {
        self.0.map_or(Ok(()), Err)
    }
}

impl Callback {
    /// A callback for a scheduling method, its callable checked first (`check_callback`).
    /// `context=None` means a copy of the current context, as asyncio does. An interrupt
    /// raised by debug mode's Python code is raised at once (see `checked` to hold it).
    pub fn new(
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: &str,
        debug: bool,
    ) -> PyResult<Self> {
        let mut held = HeldInterrupt::default();
        let cb = Callback::checked(callback, args, context, method, debug.then_some(&mut held))?;
        held.raise()?;
        Ok(cb)
    }

    /// `new`, where `debug` (Some in debug mode) holds an interrupt raised in its Python
    /// code (asyncio's `iscoroutinefunction`, the source traceback): the callable then
    /// counts as not a coroutine function, and the callback has no debug information.
    #[inline(always)]
    pub fn checked(
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: &str,
        mut debug: Option<&mut HeldInterrupt>,
    ) -> PyResult<Self> {
        check_callback_holding(callback, method, debug.as_deref_mut())?;
        let py = callback.py();
        let debug = match debug {
            Some(held) => held
                .hold(py, interop::caller_stack(py).map(Some), || None)?
                .map(|source_traceback| {
                    Box::new(DebugInfo {
                        source_traceback,
                        repr_at_cancel: GilCell::new(None),
                    })
                }),
            None => None,
        };
        let context = match context {
            Some(c) if !c.is_none() => Some(c.clone().unbind()),
            _ => interop::copy_context_unless_empty(callback.py())?,
        };
        Ok(Callback {
            target: GilCell::new(Some(Target {
                callback: callback.clone().unbind(),
                args: Args::new(args),
            })),
            context: GilCell::new(context),
            cancelled: AtomicUsize::new(0),
            face: AtomicPtr::new(std::ptr::null_mut()),
            debug,
        })
    }

    /// Calls the callback inside its context. Its exception is returned, not reported,
    /// with the callback and arguments for the report. `once`: the handle will not run
    /// again, so its references are released afterwards.
    pub fn run(
        &self,
        py: Python<'_>,
        once: bool,
        empty: &mut EmptyContext,
    ) -> Result<(), CallbackError> {
        let target = if once {
            self.target.with(py, Option::take)
        } else {
            self.target.with(py, |t| {
                t.as_ref().map(|t| Target {
                    callback: t.callback.clone_ref(py),
                    args: t.args.clone_ref(py),
                })
            })
        };
        let Some(t) = target else { return Ok(()) };
        let result = match &self.own_context(py) {
            // SAFETY: `c` is a live object and the GIL is held.
            Some(c) if unsafe { pyo3::ffi::PyContext_CheckExact(c.as_ptr()) } != 0 => {
                interop::in_context(py, c, || call(py, &t))
            }
            // Not a Context: asyncio's handle calls its `run(callback, *args)` all the
            // same, so another object serves as one, and one without `run` fails there
            // with the AttributeError (reported as the callback's error).
            Some(other) => call_through_run(py, other.bind(py), &t),
            None => empty.get(py).map_err(Box::new).and_then(|ctx| {
                let me = (self as *const Callback).addr();
                let running = RunningEmpty::enter(py, (me, ctx.as_ptr().expose_provenance()));
                let r = interop::in_context(py, &ctx, || call(py, &t));
                drop(running);
                // The context it ran in becomes the handle's own if get_context() was
                // asked for meanwhile (it named this one), if the callback left a
                // variable set in it, or if it raised (asyncio 3.12+ runs the exception
                // handler in the context the handle's get_context() names); it is no
                // longer shared with the next callbacks.
                let asked = self.context.with(py, |slot| slot.is_some());
                if asked || empty.changed_by_run(py, &ctx) || r.is_err() {
                    empty.forget();
                    let stale = self.context.with(py, |slot| slot.replace(ctx));
                    drop(stale);
                }
                r
            }),
        };
        match result {
            Ok(()) => {
                t.release(py);
                Ok(())
            }
            Err(err) if self.is_cancelled() => {
                // The callback cancelled its own handle: asyncio's report then names
                // what the cancelled handle holds, nothing ("Exception in callback None()").
                t.release(py);
                Err(CallbackError {
                    err: *err,
                    callback: py.None(),
                    args: Args::Empty,
                    source_traceback: self.source_traceback(py),
                })
            }
            Err(err) => {
                // Keep the callable until the error report has named the handle.
                let error = CallbackError {
                    err: *err,
                    callback: t.callback.clone_ref(py),
                    args: t.args.clone_ref(py),
                    source_traceback: self.source_traceback(py),
                };
                if once {
                    let stale = self.target.with(py, |slot| slot.replace(t));
                    drop(stale);
                } else {
                    t.release(py);
                }
                Err(error)
            }
        }
    }

    /// GC support: what this callback holds (visited by tracked fd-watcher handles
    /// themselves, and by the loop for the untracked one-shot handles it queues).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(t) = self.target.peek_in_gc() {
            visit.call(&t.callback)?;
            t.args.traverse(visit)?;
        }
        visit.call(self.context.peek_in_gc())?;
        match &self.debug {
            Some(d) => visit.call(&d.source_traceback),
            None => Ok(()),
        }
    }

    /// Drops the callable and arguments (a one-shot handle that has run).
    pub fn release(&self, py: Python<'_>) {
        if let Some(t) = self.target.with(py, Option::take) {
            t.release(py);
        }
    }

    pub fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.debug
            .as_ref()
            .map(|d| d.source_traceback.clone_ref(py))
    }

    /// `(callback, args)` while the handle still holds them.
    pub fn parts(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        // The tuple is made outside the cell: allocating it may run the cyclic GC.
        let held = self.target.with(py, |t| {
            t.as_ref()
                .map(|t| (t.callback.clone_ref(py), t.args.clone_ref(py)))
        });
        match held {
            Some((callback, args)) => Ok((callback, args.to_tuple(py)?)),
            None => Ok((py.None(), py.None())),
        }
    }

    /// The context the callback runs in. One scheduled from an empty context has none
    /// of its own until it is asked for (or the callback changed or raised in the
    /// shared one, see `EmptyContext`): a new empty one is made then and kept, so that
    /// what is done in it reaches the callback, as with asyncio's handle.
    pub fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(c) = self.own_context(py) {
            return Ok(c);
        }
        let me = (self as *const Callback).addr();
        let running = RUNNING_EMPTY.with(py, |runs| {
            runs.iter()
                .rev()
                .find(|(cb, _)| *cb == me)
                .map(|&(_, ctx)| ctx)
        });
        let ctx = if let Some(ctx) = running {
            // Asked for while it runs (by the callback, or by another thread while it
            // lets go of the GIL): the shared context it runs in, which it keeps after.
            // SAFETY: the GIL is held, and `ctx` is the context that run holds a strong
            // reference to until it has removed its entry from `RUNNING_EMPTY`.
            unsafe { Bound::from_borrowed_ptr(py, std::ptr::with_exposed_provenance_mut(ctx)) }
                .unbind()
        } else {
            interop::new_context(py)?
        };
        let stale = self
            .context
            .with(py, |slot| slot.replace(ctx.clone_ref(py)));
        drop(stale); // (None: no Python code ran between the look and the store)
        Ok(ctx)
    }

    /// The context kept on the callback, if any (see `context`): a new reference, so
    /// that the cell is not borrowed while Python code runs in it.
    fn own_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context
            .with(py, |c| c.as_ref().map(|c| c.clone_ref(py)))
    }

    /// Whether the callable it still holds is `obj` (false once released).
    pub fn calls(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> bool {
        self.target
            .with(py, |t| t.as_ref().is_some_and(|t| t.callback.is(obj)))
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Relaxed) != 0
    }

    /// Returns true if this call cancelled it (false if it already was). `class` and
    /// `when` (asked for only then): the handle's, for the repr kept in debug mode. A
    /// repr that fails is raised, as asyncio's `cancel()` raises it, once the handle is
    /// cancelled and has let go of its callable all the same.
    pub fn cancel<'py>(
        &self,
        py: Python<'py>,
        class: &str,
        when: impl FnOnce() -> Option<Bound<'py, PyAny>>,
    ) -> PyResult<bool> {
        if self.cancelled.swap(1, Relaxed) != 0 {
            return Ok(false);
        }
        let kept = match &self.debug {
            Some(d) => self
                .repr_parts(py, class, when().as_ref())
                .map(|r| d.repr_at_cancel.with(py, |kept| *kept = Some(r))),
            None => Ok(()),
        };
        self.release(py);
        kept.map(|()| true)
    }

    fn repr_parts(
        &self,
        py: Python<'_>,
        class: &str,
        when: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        if let Some(kept) = self
            .debug
            .as_ref()
            .and_then(|d| d.repr_at_cancel.with(py, |kept| kept.clone()))
        {
            return Ok(kept);
        }
        let mut info = vec![class.to_string()];
        if self.is_cancelled() {
            info.push("cancelled".into());
        }
        if let Some(w) = when {
            info.push(format!("when={}", w.str()?));
        }
        let (callback, args) = self.parts(py)?;
        if !callback.is_none(py) {
            let debug = self.debug.is_some();
            let src = interop::format_callback(py, callback.bind(py), args.bind(py), debug)?;
            info.push(src.to_string());
        }
        if let Some(d) = &self.debug {
            // Debug mode, as asyncio: where the handle was made (the last frame).
            if let Ok(frame) = d.source_traceback.bind(py).get_item(-1) {
                // (Attributes, not `frame[0]`: on Python 3.13 indexing a FrameSummary
                // reads its source line, which at interpreter exit fails to import.)
                let file = frame.getattr(crate::intern!(py, "filename"))?;
                let line = frame.getattr(crate::intern!(py, "lineno"))?;
                info.push(format!("created at {file}:{line}"));
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }
}

/// Checks what asyncio's `_check_callback` checks, always (asyncio: only in debug mode):
/// coroutine objects, coroutine functions and non-callables are refused with TypeError.
pub fn check_callback(cb: &Bound<'_, PyAny>, method: &str, debug: bool) -> PyResult<()> {
    let mut held = HeldInterrupt::default();
    check_callback_holding(cb, method, debug.then_some(&mut held))?;
    held.raise()
}

/// A pool's `submit` check: a coroutine, or a function that makes one, is refused (the
/// job would only make a coroutine that nothing awaits). Anything else is the job's to
/// run: a non-callable fails in the worker, into the future, as in the stdlib pool.
pub fn check_not_coroutine(cb: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    if interop::is_coroutine_object(cb)
        || (cb.is_callable() && interop::is_coroutine_function(cb, false)?)
    {
        return Err(errors::coroutine_refused(method));
    }
    Ok(())
}

/// `check_callback`, where `debug` (Some in debug mode) holds an interrupt raised in
/// asyncio's `iscoroutinefunction`; the callable then counts as not one.
fn check_callback_holding(
    cb: &Bound<'_, PyAny>,
    method: &str,
    debug: Option<&mut HeldInterrupt>,
) -> PyResult<()> {
    if interop::is_coroutine_object(cb) {
        return Err(errors::coroutine_refused(method));
    }
    if !cb.is_callable() {
        return Err(errors::not_callable(method, cb));
    }
    let is_coroutine_function = match debug {
        Some(held) => held.hold(cb.py(), interop::is_coroutine_function(cb, true), || false)?,
        None => interop::is_coroutine_function(cb, false)?,
    };
    if is_coroutine_function {
        return Err(errors::coroutine_refused(method));
    }
    Ok(())
}

/// Takes a new handle out of the cyclic GC's sight. Handles are allocated per callback
/// and often queued by the hundred thousand; tracking them makes every full collection
/// walk them all. Safe to skip because a handle releases its callable and arguments
/// as soon as it has run (one-shot) or is cancelled, so it cannot keep a cycle alive
/// beyond its own life in the injector, ready queue or timer heap.
pub fn untrack<T>(obj: &Py<T>) {
    // SAFETY: `obj` is a live pyclass instance (pyo3 pyclasses are GC types) and the
    // caller holds the GIL (it just created `obj`); PyObject_GC_UnTrack is idempotent
    // and pyo3's dealloc untracks again safely.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) }
}

/// The part of asyncio's handle interface that both handle types share.
macro_rules! callback_accessors {
    ($ty:ty) => {
        #[pymethods]
        impl $ty {
            fn cancelled(&self) -> bool {
                self.cb().is_cancelled()
            }

            fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
                self.cb().get_context(py)
            }

            #[getter]
            fn _callback(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
                Ok(self.cb().parts(py)?.0)
            }

            #[getter]
            fn _args(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
                Ok(self.cb().parts(py)?.1)
            }

            #[getter]
            fn _cancelled(&self) -> bool {
                self.cb().is_cancelled()
            }

            #[getter]
            fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
                self.cb().source_traceback(py)
            }
        }
    };
}

callback_accessors!(Handle);
callback_accessors!(TimerHandle);

/// What `loop.call_soon()`, `call_soon_threadsafe()` and the fd watchers return.
///
/// Two shapes, for where the callback waits:
/// - `call_soon` (and `call_soon_threadsafe` on the thread running the loop): the loop
///   queues an `Arc<Callback>`, not this object, so the object a caller drops at once
///   dies at once. A queued object would count as a live allocation for the cyclic GC
///   until it runs, and a burst of them (a gather of 100k tasks) would set off
///   collections. Several objects may face one such callback (an error report, a
///   `_ready` snapshot): they compare and hash equal.
/// - `call_soon_threadsafe` from any other thread (or while the loop is not running)
///   and fd watchers: the callback lives in this object, which the injector, then the
///   ready queue (or the watcher table) holds: one allocation, made and freed under the
///   GIL, instead of a second one in the Rust heap that the poster allocates and the
///   loop thread frees.
#[pyclass(module = "weaveloop._core", frozen, weakref)]
pub struct Handle {
    held: HeldCell,
}

/// A handle's `Held`, replaced only to reuse a spent posted handle's object: by
/// `Handle::posted`, with the GIL held, on an object taken from a loop's pool of spent
/// handles (`Spent`). An object enters the pool only when `Handle::spend` found that the
/// pool's reference would be its only one, weak or strong, and the pool hands it out to
/// one caller only: nothing else can reach the object while it changes. That also rests
/// on posted handles being untracked by the cyclic GC (`gc.get_objects()` cannot find
/// them; `spend` asserts it in debug builds) and on `Handle` having no Python
/// subclasses. All other access is shared reads.
struct HeldCell(std::cell::UnsafeCell<Held>);

// SAFETY: see `HeldCell`: the one write happens while no other reference exists.
unsafe impl Sync for HeldCell {}

/// True if a weak reference to `obj` exists, or if its type does not say where they
/// are kept (then assumed to exist).
fn has_weakrefs(obj: *mut pyo3::ffi::PyObject) -> bool {
    // SAFETY: `obj` is a live object and the GIL is held. A positive `tp_weaklistoffset`
    // is the offset, within the object, of its (possibly null) weak-reference list.
    unsafe {
        let offset = (*pyo3::ffi::Py_TYPE(obj)).tp_weaklistoffset;
        offset <= 0
            || !(*obj
                .cast::<u8>()
                .offset(offset)
                .cast::<*mut pyo3::ffi::PyObject>())
            .is_null()
    }
}

/// Where a handle's callback lives, with what only that kind of handle keeps.
///
/// A word-wide tag (`repr(u64)`; same size as a byte's plus padding): with a one-byte
/// tag, building `Posted` copied the callback from an odd offset, and the unaligned
/// loads stalled on the stores just made (store forwarding failed), ~4% of a
/// `call_soon_threadsafe` flood.
#[repr(u64)]
enum Held {
    /// An fd watcher's.
    Watcher(Callback),
    /// A `call_soon_threadsafe` through the injector's, with the posting thread's
    /// `interop::thread_serial`.
    Posted(Callback, u64),
    /// A one-shot callback the loop queues apart; true for the object the scheduling
    /// call returned (`Callback::face` points at it).
    Shared(Arc<Callback>, bool),
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Held::Shared(cb, true) = self.held() {
            cb.face.store(std::ptr::null_mut(), Relaxed);
        }
    }
}

impl Handle {
    fn held(&self) -> &Held {
        // SAFETY: see `HeldCell`: no replacement can happen while `self` is borrowed.
        unsafe { &*self.held.0.get() }
    }

    pub fn cb(&self) -> &Callback {
        match self.held() {
            Held::Watcher(cb) | Held::Posted(cb, _) => cb,
            Held::Shared(cb, _) => cb,
        }
    }

    /// An fd watcher's handle: it runs on every readiness until removed (the ready queue
    /// holds it as `Ready::Watcher`). It stays tracked by the cyclic GC (as every new
    /// pyclass object starts) and reports its callback itself; watchers are few.
    pub fn watcher(py: Python<'_>, cb: Callback) -> PyResult<Py<Handle>> {
        Py::new(
            py,
            Handle {
                held: HeldCell(Held::Watcher(cb).into()),
            },
        )
    }

    /// A `call_soon_threadsafe` from any thread but the one running the loop: the object
    /// is what is queued. Shaped as a watcher's, but untracked, as the one-shot handles
    /// below. `spent`: where it takes an object to reuse, if one waits there.
    #[inline(always)]
    pub fn posted(py: Python<'_>, cb: Callback, spent: &Spent) -> PyResult<Py<Handle>> {
        let held = Held::Posted(cb, interop::thread_serial());
        if let Some(handle) = spent.take(py) {
            // SAFETY: the pool's reference was the object's only one (see `spend`), and
            // is now ours; the GIL is held. So nothing else sees the change.
            let old = unsafe { std::ptr::replace(handle.get().held.0.get(), held) };
            drop(old); // holds no Python object (see `spend`)
            return Ok(handle);
        }
        let handle = Py::new(
            py,
            Handle {
                held: HeldCell(held.into()),
            },
        )?;
        untrack(&handle);
        Ok(handle)
    }

    /// For a posted handle the loop has run and is about to let go of: true if that
    /// reference is its only one (no weak reference either) and it holds nothing any
    /// more, so its object may be reused for a later post (`posted`, `Spent`). Lets go
    /// of what it still holds (its context) when so.
    pub fn spend(py: Python<'_>, handle: &Py<Handle>) -> bool {
        let ptr = handle.as_ptr();
        // SAFETY: the GIL is held and `ptr` is a live object the caller holds.
        let alone = || unsafe { pyo3::ffi::Py_REFCNT(ptr) } == 1 && !has_weakrefs(ptr);
        let Held::Posted(cb, _) = handle.get().held() else {
            return false;
        };
        // SAFETY: the GIL is held and `ptr` is a live GC object (every pyclass is one).
        debug_assert_eq!(unsafe { pyo3::ffi::PyObject_GC_IsTracked(ptr) }, 0);
        if cb.debug.is_some() || !alone() {
            return false;
        }
        cb.release(py);
        drop(cb.context.with(py, Option::take));
        // Dropping those may have run Python code, which cannot reach the object (no
        // reference, weak or strong, leads to it), but look again all the same.
        alone()
    }

    /// True if the calling thread posted it through the injector.
    pub fn posted_here(&self) -> bool {
        matches!(self.held(), Held::Posted(_, by) if *by == interop::thread_serial())
    }

    /// A one-shot handle: the object for the caller and the callback for the queue.
    pub fn one_shot(py: Python<'_>, cb: Callback) -> PyResult<(Py<Handle>, Arc<Callback>)> {
        let cb = Arc::new(cb);
        let handle = Handle::untracked(py, &cb, true)?;
        cb.face.store(handle.as_ptr(), Relaxed);
        Ok((handle, cb))
    }

    /// The object for a queued one-shot callback: the one its scheduling call returned
    /// while that is alive, else a new one (equal to it).
    pub fn face(py: Python<'_>, cb: &Arc<Callback>) -> PyResult<Py<PyAny>> {
        let first = cb.face.load(Relaxed);
        // SAFETY: the GIL is held. A non-null `face` is the first handle object, not yet
        // dropped (its drop clears `face` before the memory is freed); a reference count
        // of zero means it is being deallocated right now and must not be revived.
        if !first.is_null() && unsafe { pyo3::ffi::Py_REFCNT(first) } > 0 {
            // SAFETY: `first` is a live object (above); a new strong reference is taken.
            return Ok(unsafe { Bound::from_borrowed_ptr(py, first) }.unbind());
        }
        Ok(Handle::untracked(py, cb, false)?.into_any())
    }

    /// Taken out of the cyclic GC (`untrack`): the loop reports what a queued callback
    /// holds, and nothing may report it twice. (No freelist: pyo3's is slower than
    /// pymalloc here, and reused objects would come back untracked.)
    fn untracked(py: Python<'_>, cb: &Arc<Callback>, first: bool) -> PyResult<Py<Handle>> {
        let handle = Handle {
            held: HeldCell(Held::Shared(Arc::clone(cb), first).into()),
        };
        let handle = Py::new(py, handle)?;
        untrack(&handle);
        Ok(handle)
    }

    /// What identifies the callback: objects facing one `Arc<Callback>` share it.
    fn identity(&self) -> *const Callback {
        self.cb()
    }
}

#[pymethods]
impl Handle {
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.cb().cancel(py, "Handle", || None).map(drop)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.cb().repr_parts(py, "Handle", None)
    }

    /// Objects facing the same callback are equal; otherwise identity, as asyncio's.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> Py<PyAny> {
        let py = other.py();
        match (other.cast::<Handle>(), op) {
            (Ok(o), CompareOp::Eq) => interop::py_bool(py, self.identity() == o.get().identity()),
            (Ok(o), CompareOp::Ne) => interop::py_bool(py, self.identity() != o.get().identity()),
            _ => py.NotImplemented(),
        }
    }

    fn __hash__(&self) -> isize {
        // The callback's address, scrambled as CPython scrambles object ids.
        (self.identity() as usize).rotate_right(4) as isize
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.cb().traverse(&visit)
    }

    fn __clear__(&self) {
        Python::attach(|py| self.cb().release(py));
    }
}

/// What `loop.call_later()`/`call_at()` return.
#[pyclass(module = "weaveloop._core", frozen, weakref)]
pub struct TimerHandle {
    pub cb: Callback,
    pub when: f64,
    /// The `when` given to `call_at` if not a float (an int, say): `when()` returns it
    /// as given, as asyncio's does.
    given: Option<Py<PyAny>>,
    /// True while the handle sits in the loop's timer heap.
    pub scheduled: AtomicBool,
    /// The loop's count of cancelled-but-still-scheduled timers.
    cancelled_in_heap: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn cb(&self) -> &Callback {
        &self.cb
    }

    pub fn new(
        cb: Callback,
        when: f64,
        given: Option<Py<PyAny>>,
        cancelled_in_heap: Arc<AtomicUsize>,
    ) -> Self {
        TimerHandle {
            cb,
            when,
            given,
            scheduled: AtomicBool::new(true),
            cancelled_in_heap,
        }
    }

    fn when_object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.given {
            Some(w) => w.bind(py).clone(),
            None => PyFloat::new(py, self.when).into_any(),
        }
    }
}

#[pymethods]
impl TimerHandle {
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let when = || Some(self.when_object(py));
        let cancelled = self.cb.cancel(py, "TimerHandle", when);
        // An error here is the debug repr's: the handle was cancelled all the same.
        if cancelled.as_ref().map_or(true, |first| *first) && self.scheduled.load(Relaxed) {
            self.cancelled_in_heap.fetch_add(1, Relaxed);
        }
        cancelled.map(drop)
    }

    fn when<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _when<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Relaxed)
    }

    /// `hash(self.when())`, as asyncio's TimerHandle (equal handles hash equal: 0.0, -0.0).
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.when_object(py).hash()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let o = other.get();
        // As asyncio compares `_when`: as given to call_at if either is not a float
        // (so that equal handles hash equal), else as floats without a Python call.
        let when_cmp = |op: CompareOp| -> PyResult<bool> {
            if self.given.is_none() && o.given.is_none() {
                return Ok(match op {
                    CompareOp::Lt => self.when < o.when,
                    CompareOp::Gt => self.when > o.when,
                    _ => self.when == o.when,
                });
            }
            self.when_object(py)
                .rich_compare(o.when_object(py), op)?
                .is_truthy()
        };
        let same = || -> PyResult<bool> {
            let (mine, theirs) = (self.cb.parts(py)?, o.cb.parts(py)?);
            Ok(when_cmp(CompareOp::Eq)?
                && mine.0.bind(py).eq(theirs.0.bind(py))?
                && mine.1.bind(py).eq(theirs.1.bind(py))?
                && self.cb.is_cancelled() == o.cb.is_cancelled())
        };
        let result = match op {
            CompareOp::Lt => when_cmp(CompareOp::Lt)?,
            CompareOp::Gt => when_cmp(CompareOp::Gt)?,
            CompareOp::Le => when_cmp(CompareOp::Lt)? || same()?,
            CompareOp::Ge => when_cmp(CompareOp::Gt)? || same()?,
            CompareOp::Eq => same()?,
            CompareOp::Ne => !same()?,
        };
        Ok(interop::py_bool(py, result))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.cb
            .repr_parts(py, "TimerHandle", Some(&self.when_object(py)))
    }
}
