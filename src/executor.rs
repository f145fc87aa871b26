//! The executor's Python face: `PoolCore` (base of `weaveloop.ThreadPoolExecutor`), the
//! worker run loop (`worker_main`, the target of real `threading.Thread`s) and the
//! `run_in_executor` fast path. Invariant: a worker waits for jobs and posts completions
//! without the GIL; a job whose future was cancelled before it started never runs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use weaveloop_engine::{Pool, Submitted};

use crate::errors;
use crate::gil::GilCell;
use crate::handles::{check_callback, check_not_coroutine};
use crate::interop;
use crate::loop_core::{lock, new_future, LoopCore, Shared};
use crate::posted::{Outcome, Posted};

/// `run_in_executor` job: settles an asyncio future on its loop.
pub struct LoopJob {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    fut: Py<PyAny>,
    target: Arc<Shared>,
}

/// `submit` job: settles a `concurrent.futures.Future`.
pub struct SubmitJob {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    fut: Py<PyAny>,
    /// `func` is a stdlib work item's `run`, which starts, runs and settles `fut` itself
    /// (queued by the stdlib pool's own `submit`, see `_put_work_item`).
    whole: bool,
}

pub enum Job {
    Loop(LoopJob),
    Submit(SubmitJob),
}

/// A pool's configuration and job queue: what its workers share with it. Workers hold
/// this, not the executor object, so that an executor dropped without `shutdown()` can
/// be collected; its drop then lets the workers exit once the queue is done (as the
/// stdlib pool's weak reference to its executor does).
pub struct PoolState {
    pool: Mutex<Arc<Pool<Job>>>,
    prefix: String,
    initializer: Option<Py<PyAny>>,
    initargs: Py<PyTuple>,
    broken: Mutex<Option<String>>,
    /// `shutdown()` was called (a broken pool is shut down too, but not by it).
    shutdown_called: AtomicBool,
}

/// The argument of a worker thread's `worker_main`.
#[pyclass(module = "weaveloop._core", frozen)]
pub struct WorkerArgs {
    state: Arc<PoolState>,
}

#[pyclass(module = "weaveloop._core", subclass, frozen, weakref)]
pub struct PoolCore {
    /// Set by `_configure` (from `ThreadPoolExecutor.__init__`, so that subclasses may
    /// pass their own constructor arguments).
    state: OnceLock<Arc<PoolState>>,
    /// The workers started so far. Behind an `Arc` that a forked child replaces rather
    /// than locks: `_started_threads` takes its lock without the GIL, and a fork (by
    /// the GIL's holder) may land while another thread holds it.
    listed: GilCell<Arc<Listed>>,
    started: AtomicUsize,
}

#[derive(Default)]
struct Listed {
    threads: Mutex<Vec<Py<PyAny>>>,
    /// Signalled when a started worker joins `threads` or a reservation is undone.
    changed: Condvar,
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        // Collected without shutdown(): the workers exit once the queued jobs are done.
        if let Some(state) = self.state.get() {
            drop(state.pool().shutdown(false));
        }
    }
}

/// How long a shutdown waits for a worker that a racing submit is still starting
/// (starting a thread takes microseconds).
const START_WAIT: Duration = Duration::from_secs(10);
/// How often that wait looks at pending signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

const BROKEN_MSG: &str = "A thread initializer failed, the thread pool is not usable anymore";

/// What `_release_worker_list` tells the thread `_hold_worker_list` started (tests).
static HELD_WORKER_LIST: Mutex<Option<std::sync::mpsc::Sender<()>>> = Mutex::new(None);

/// Set when the interpreter starts exiting (`_python_exit`): no new jobs from then on.
static INTERPRETER_EXITING: AtomicBool = AtomicBool::new(false);

impl PoolCore {
    /// The list of started workers (see `listed`).
    fn listed(&self, py: Python<'_>) -> Arc<Listed> {
        self.listed.with(py, |l| Arc::clone(l))
    }
}

impl PoolState {
    fn pool(&self) -> Arc<Pool<Job>> {
        lock(&self.pool).clone()
    }

    /// In the stdlib's order: broken, shut down, then the interpreter exiting.
    fn check_accepting(&self, py: Python<'_>) -> PyResult<Arc<Pool<Job>>> {
        if let Some(msg) = lock(&self.broken).clone() {
            return Err(PyErr::from_value(
                interop::broken_thread_pool(py)?.call1((msg,))?,
            ));
        }
        let pool = self.pool();
        let exiting = INTERPRETER_EXITING.load(Relaxed);
        // (A pool the exit hook stopped reads as shut down once one of its workers has
        // stopped, as a stdlib worker marks its pool: until then, a job still running
        // hears "after interpreter shutdown", as it would there.)
        if pool.is_shut_down() && (self.shutdown_called.load(Relaxed) || !exiting) {
            return Err(errors::pool_shut_down());
        }
        if exiting {
            return Err(PyRuntimeError::new_err(
                "cannot schedule new futures after interpreter shutdown",
            ));
        }
        Ok(pool)
    }

    /// Fails every queued job with BrokenThreadPool (an initializer failed).
    fn break_pool(&self, py: Python<'_>) -> PyResult<()> {
        *lock(&self.broken) = Some(BROKEN_MSG.to_string());
        let pool = self.pool();
        let queued = pool.shutdown(true);
        for job in queued {
            let err = PyErr::from_value(interop::broken_thread_pool(py)?.call1((BROKEN_MSG,))?);
            match job {
                Job::Submit(j) => {
                    // A future the caller cancelled meanwhile is skipped; one failure
                    // must not leave the jobs behind it pending.
                    let fut = j.fut.bind(py);
                    let failed = interop::call_method(fut, crate::intern!(py, "done"), &[])
                        .and_then(|d| d.is_truthy())
                        .and_then(|done| match done {
                            true => Ok(()),
                            false => {
                                let exc = errors::exception(py, &err).into_any();
                                let set_exception = crate::intern!(py, "set_exception");
                                interop::call_method(fut, set_exception, &[&exc]).map(drop)
                            }
                        });
                    if let Err(e) = failed {
                        e.write_unraisable(py, Some(fut));
                    }
                }
                Job::Loop(j) => post_done(py, j.target, j.fut, Outcome::Error(err)),
            }
        }
        Ok(())
    }
}

impl PoolCore {
    /// The pool's state; an error before `__init__` has configured it.
    fn state(&self) -> PyResult<&Arc<PoolState>> {
        self.state.get().ok_or_else(|| {
            PyRuntimeError::new_err(
                "the ThreadPoolExecutor was not initialized (__init__ not called)",
            )
        })
    }

    /// Queues `job`, starting a worker thread when the stdlib's policy asks for one.
    fn enqueue(slf: &Bound<'_, Self>, pool: &Pool<Job>, job: Job) -> PyResult<()> {
        match pool.submit(job) {
            Err(_refused) => Err(errors::pool_shut_down()),
            Ok(Submitted::Queued) => Ok(()),
            Ok(Submitted::SpawnWorker) => {
                let this = slf.get();
                let state = Arc::clone(this.state()?);
                let n = this.started.fetch_add(1, Relaxed);
                let name = format!("{}_{}", state.prefix, n);
                let args = WorkerArgs { state };
                let py = slf.py();
                let (name, args) = (PyString::new(py, &name), Bound::new(py, args)?.into_any());
                let start_worker = crate::intern!(py, "_start_worker");
                match interop::call_method(slf.as_any(), start_worker, &[&name, &args]) {
                    Ok(t) => {
                        let listed = this.listed(py);
                        lock(&listed.threads).push(t.unbind());
                        listed.changed.notify_all();
                        Ok(())
                    }
                    Err(e) => {
                        pool.worker_failed_to_start();
                        // The next worker takes this one's number, as in the stdlib
                        // pool (which names a worker by how many it has), unless another
                        // start took the next number meanwhile.
                        let _ = this.started.compare_exchange(n + 1, n, Relaxed, Relaxed);
                        // Under the lock: a shutdown between its check and its wait
                        // still sees this.
                        let listed = this.listed(py);
                        let _listing = lock(&listed.threads);
                        listed.changed.notify_all();
                        Err(e)
                    }
                }
            }
        }
    }

    /// The fast path of `run_in_executor`: an asyncio future settled through the loop's
    /// injector, no `concurrent.futures.Future`, no self-pipe.
    pub fn submit_for_loop<'py>(
        slf: &Bound<'py, Self>,
        loop_obj: &Bound<'py, LoopCore>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let pool = slf.get().state()?.check_accepting(py)?;
        let fut = new_future(loop_obj.as_any())?;
        let core = loop_obj.get();
        core.track_in_flight(&fut);
        let target = core.shared();
        target.know_loop(loop_obj)?;
        let job = Job::Loop(LoopJob {
            func: func.clone().unbind(),
            args: args.clone().unbind(),
            fut: fut.clone().unbind(),
            target,
        });
        if let Err(e) = Self::enqueue(slf, &pool, job) {
            drop(core.untrack_in_flight(&fut.clone().unbind()));
            return Err(e);
        }
        Ok(fut)
    }
}

/// Posts a completion to a loop; if the loop is closed the completion is dropped
/// (`close()` already cancelled the future).
fn post_done(py: Python<'_>, target: Arc<Shared>, fut: Py<PyAny>, outcome: Outcome) {
    let (refused, stopped) = py.detach(|| {
        let refused = target.injector.post(Posted::done(fut, outcome)).err();
        let stopped = refused.is_none() && target.drained_by_poster();
        (refused, stopped)
    });
    drop(refused);
    if stopped {
        drain_stopped_loop(py, &target);
    }
}

/// A completion was posted to a loop that is not running, which may never drain it:
/// applied now, on the loop's behalf (see `LoopCore::drain_while_idle`).
fn drain_stopped_loop(py: Python<'_>, target: &Shared) {
    let Some(core) = target.loop_core(py) else {
        return; // (gone: nothing left to keep alive)
    };
    if let Err(e) = core.get().drain_while_idle(&core) {
        e.write_unraisable(py, None);
    }
}

/// Runs a `submit` job; `ran` is called once it is over: its future settled, done
/// callbacks included (or the callable skipped), still holding the GIL, as the stdlib
/// worker releases its idle semaphore after `work_item.run()`. Counted idle before the
/// callbacks, the worker would be taken for a `submit` one of them makes, which then
/// waited for it (a callback that waited for that job's result never returned).
fn run_submit_job(py: Python<'_>, job: SubmitJob, ran: impl FnOnce()) -> PyResult<()> {
    if job.whole {
        let result = interop::call_with_slice(job.func.bind(py), &[]);
        ran();
        return result.map(drop);
    }
    let fut = job.fut.bind(py);
    let start = interop::call_method(fut, crate::intern!(py, "set_running_or_notify_cancel"), &[])
        .and_then(|r| r.is_truthy());
    if !matches!(start, Ok(true)) {
        // Cancelled before it started, or the future was in a state it cannot start
        // from (its error is the caller's to report): the job does not run.
        ran();
        return start.map(drop);
    }
    let result = interop::call_with_kwargs(
        job.func.bind(py),
        job.args.bind(py),
        job.kwargs.as_ref().map(|k| k.bind(py)),
    );
    // Either runs the future's done callbacks, Python code.
    let settled = match result {
        Ok(v) => interop::call_method(fut, crate::intern!(py, "set_result"), &[&v]),
        Err(e) => {
            let exc = errors::exception(py, &e).into_any();
            interop::call_method(fut, crate::intern!(py, "set_exception"), &[&exc])
        }
    };
    ran();
    settled.map(drop)
}

fn run_loop_job(py: Python<'_>, job: &LoopJob) -> Outcome {
    let cancelled = job
        .fut
        .bind(py)
        .call_method0(crate::intern!(py, "cancelled"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(false);
    if cancelled && !job.target.was_abandoned(&job.fut) {
        // Cancelled by the caller before it started: it never runs. (A future the caller
        // settled otherwise, as a soft timeout may, does not stop the job, as on the
        // stock loop; its outcome then goes nowhere, as a cancelled running job's.)
        return Outcome::Skipped;
    }
    match interop::call_with_tuple(job.func.bind(py), job.args.bind(py)) {
        Ok(v) => Outcome::Value(v.unbind()),
        Err(e) => Outcome::Error(e),
    }
}

/// `concurrent.futures`' logger, as the stdlib pool reports what goes wrong in a worker.
fn log_critical(py: Python<'_>, msg: &str, e: &PyErr) -> PyResult<()> {
    let logger = py.import("concurrent.futures._base")?.getattr("LOGGER")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("exc_info", errors::exception(py, e))?;
    logger.call_method("critical", (msg,), Some(&kwargs))?;
    Ok(())
}

/// The body of every worker thread: runs the initializer, then jobs until told to exit.
#[pyfunction]
pub fn worker_main(py: Python<'_>, args: &Bound<'_, WorkerArgs>) -> PyResult<()> {
    let this = &args.get().state;
    let pool = this.pool();
    if let Some(init) = &this.initializer {
        if let Err(e) = interop::call_with_tuple(init.bind(py), this.initargs.bind(py)) {
            log_critical(py, "Exception in initializer:", &e)?;
            return this.break_pool(py);
        }
    }
    let mut done: Option<(Arc<Shared>, Posted)> = None;
    let mut counted_idle = false;
    loop {
        // Post the previous completion and wait for the next job in one GIL release,
        // unless the loop turns out not to be running (then the completion is applied
        // first, with the GIL: see drain_stopped_loop).
        let (job, refused, stopped) = py.detach(|| {
            if let Some((target, posted)) = done.take() {
                match target.injector.post(posted) {
                    Err(refused) => return (None, Some(refused), None),
                    Ok(()) if target.drained_by_poster() => return (None, None, Some(target)),
                    Ok(()) => {}
                }
            }
            (Some(pool.next_job(counted_idle)), None, None)
        });
        drop(refused);
        if let Some(target) = stopped {
            drain_stopped_loop(py, &target);
        }
        let Some(job) = job else { continue };
        counted_idle = false;
        match job {
            None => {
                // Stopped by the interpreter's exit (its hook, `_python_exit`): the pool
                // reads as shut down from now on, as a stdlib worker marks its own pool
                // when it meets the exit's sentinel.
                if INTERPRETER_EXITING.load(Relaxed) {
                    this.shutdown_called.store(true, Relaxed);
                }
                return Ok(());
            }
            // (Counted idle before whoever awaits the job can run, see Pool::idle_soon,
            // and after its done callbacks, see run_submit_job.)
            Some(Job::Submit(j)) => {
                // Settling the future failed: a done callback raised a BaseException
                // (they run here, as in the stdlib pool), or the future was put in a
                // wrong state by hand. Logged as the stdlib worker logs it, whose thread
                // then dies (a one-worker pool is then stuck); this worker goes on.
                if let Err(e) = run_submit_job(py, j, || counted_idle = pool.idle_soon()) {
                    if let Err(log_failed) = log_critical(py, "Exception in worker", &e) {
                        e.write_unraisable(py, None);
                        log_failed.write_unraisable(py, None);
                    }
                }
            }
            Some(Job::Loop(j)) => {
                let outcome = run_loop_job(py, &j);
                counted_idle = pool.idle_soon();
                done = Some((j.target, Posted::done(j.fut, outcome)));
            }
        }
    }
}

#[pymethods]
impl PoolCore {
    /// An unconfigured pool: `__init__` configures it (`_configure`), so a subclass's
    /// constructor may take arguments of its own.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        PoolCore {
            state: OnceLock::new(),
            listed: GilCell::new(Arc::default()),
            started: AtomicUsize::new(0),
        }
    }

    /// The stdlib pool's constructor arguments, validated as it validates them.
    #[pyo3(signature = (max_workers = None, thread_name_prefix = None, initializer = None, initargs = None))]
    fn _configure(
        &self,
        py: Python<'_>,
        max_workers: Option<&Bound<'_, PyAny>>,
        thread_name_prefix: Option<&str>,
        initializer: Option<&Bound<'_, PyAny>>,
        initargs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let max = match max_workers {
            Some(m) if !m.is_none() => m.extract::<i64>()?,
            _ => {
                // As concurrent.futures does: the CPUs this process may use (Python
                // 3.13's os.process_cpu_count), else all of them.
                let os = py.import("os")?;
                let count = os
                    .getattr("process_cpu_count")
                    .or_else(|_| os.getattr("cpu_count"))?;
                let cpus: Option<i64> = count.call0()?.extract()?;
                (cpus.unwrap_or(1) + 4).min(32)
            }
        };
        if max <= 0 {
            return Err(PyValueError::new_err("max_workers must be greater than 0"));
        }
        let initializer = match initializer {
            Some(i) if !i.is_none() => {
                if !i.is_callable() {
                    return Err(PyTypeError::new_err("initializer must be a callable"));
                }
                Some(i.clone().unbind())
            }
            _ => None,
        };
        let initargs = match initargs {
            Some(a) if !a.is_none() => a.try_iter()?.collect::<PyResult<Vec<_>>>()?,
            _ => Vec::new(),
        };
        let prefix = match thread_name_prefix {
            Some(p) if !p.is_empty() => p.to_string(),
            // Numbered in the stdlib pool's sequence, so that no two pools of either
            // kind name their threads alike.
            _ => {
                let n = interop::stdlib_pool(py)?
                    .getattr(crate::intern!(py, "_counter"))?
                    .call0()?;
                format!("ThreadPoolExecutor-{n}")
            }
        };
        let state = PoolState {
            pool: Mutex::new(Arc::new(Pool::new(max as usize))),
            prefix,
            initializer,
            initargs: PyTuple::new(py, initargs)?.unbind(),
            broken: Mutex::new(None),
            shutdown_called: AtomicBool::new(false),
        };
        self.state
            .set(Arc::new(state))
            .map_err(|_| PyRuntimeError::new_err("the ThreadPoolExecutor is already initialized"))
    }

    /// `submit(fn, *args, **kwargs)` without the argument packing (done in Python); or,
    /// the job checked, NotImplemented while something wraps the stdlib pool's `submit`
    /// (a tracing agent's context propagation): `submit` then calls that wrapper.
    #[pyo3(signature = (func, args, kwargs = None))]
    fn _submit<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let pool = slf.get().state()?.check_accepting(py)?;
        check_not_coroutine(func, "submit")?;
        if !interop::stdlib_submit_is_its_own(py)? {
            return Ok(py.NotImplemented().into_bound(py));
        }
        let fut = interop::call_with_slice(interop::concurrent_future(py)?, &[])?;
        let job = Job::Submit(SubmitJob {
            func: func.clone().unbind(),
            args: args.clone().unbind(),
            kwargs: kwargs.map(|k| k.clone().unbind()),
            fut: fut.clone().unbind(),
            whole: false,
        });
        PoolCore::enqueue(slf, &pool, job)?;
        Ok(fut)
    }

    /// Queues a stdlib `_WorkItem` (what the stdlib pool's own `submit` puts on its
    /// `_work_queue`, reached through a wrapper of it): a worker calls its `run()`; a
    /// shutdown with `cancel_futures`, or a broken pool, settles its `future`.
    fn _put_work_item(slf: &Bound<'_, Self>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let pool = slf.get().state()?.check_accepting(py)?;
        let job = Job::Submit(SubmitJob {
            func: item.getattr(crate::intern!(py, "run"))?.unbind(),
            args: PyTuple::empty(py).unbind(),
            kwargs: None,
            fut: item.getattr(crate::intern!(py, "future"))?.unbind(),
            whole: true,
        });
        PoolCore::enqueue(slf, &pool, job)
    }

    /// Refuses new jobs and tells the workers to exit when the queue is done; with
    /// `cancel_futures`, queued jobs are cancelled instead of run. Joining is Python's.
    /// `by_exit`: the interpreter exit hook's, which leaves the pool marked as not shut
    /// down (`_shutdown`) until one of its workers has stopped (see `worker_main`).
    #[pyo3(signature = (cancel_futures, by_exit = false))]
    fn _shutdown_pool(&self, py: Python<'_>, cancel_futures: bool, by_exit: bool) -> PyResult<()> {
        let state = self.state()?;
        if !by_exit {
            state.shutdown_called.store(true, Relaxed);
        }
        let cancelled = state.pool().shutdown(cancel_futures);
        // The jobs are out of the queue: each future is cancelled even when a done
        // callback of an earlier one raises (a BaseException: a Ctrl+C landing there),
        // which is raised once all are, the next ones reported as unraisable. (The stdlib
        // pool stops at it, and leaves the rest queued for its workers to run.)
        let mut failed = None;
        for job in cancelled {
            match job {
                Job::Submit(j) => {
                    // Runs the future's done callbacks.
                    let fut = j.fut.bind(py);
                    if let Err(e) = interop::call_method(fut, crate::intern!(py, "cancel"), &[]) {
                        match failed {
                            None => failed = Some(e),
                            Some(_) => e.write_unraisable(py, Some(fut)),
                        }
                    }
                }
                Job::Loop(j) => post_done(py, j.target, j.fut, Outcome::Cancelled),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Every worker thread started so far. A submit on another thread may have reserved
    /// a worker and still be starting it (`Thread.start()` releases the GIL): this waits,
    /// without the GIL, until each reserved worker is listed, so that a shutdown joins
    /// them all. (Bounded by `START_WAIT`, against a start that never returns.)
    fn _started_threads(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let pool = self.state()?.pool();
        let listed = self.listed(py);
        let deadline = Instant::now() + START_WAIT;
        // In slices, with a look at pending signals between them (Ctrl+C).
        while py.detach(|| {
            let slice_end = deadline.min(Instant::now() + SIGNAL_CHECK);
            let mut threads = lock(&listed.threads);
            while threads.len() < pool.workers() {
                let left = slice_end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Instant::now() < deadline;
                }
                threads = match listed.changed.wait_timeout(threads, left) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            false
        }) {
            py.check_signals()?;
        }
        let threads = lock(&listed.threads)
            .iter()
            .map(|t| t.clone_ref(py))
            .collect();
        Ok(threads)
    }

    /// In a forked child: the parent's workers do not exist here; start afresh (a pool
    /// that was shut down stays shut down).
    fn _reset_after_fork(&self, py: Python<'_>) {
        let Some(state) = self.state.get() else {
            return;
        };
        let fresh = Pool::new(state.pool().max_workers());
        let old = std::mem::replace(&mut *lock(&state.pool), Arc::new(fresh));
        if old.is_shut_down() {
            drop(state.pool().shutdown(false));
        }
        let listed = self.listed.with(py, std::mem::take);
        self.started.store(0, Relaxed);
        // The parent's queued jobs stay with the old pool; it is leaked rather than
        // dropped because its channel may have been locked by a thread that is gone.
        std::mem::forget(old);
        // So is the parent's list of workers if a thread that is gone held its lock
        // (`_started_threads` looking at it); otherwise its thread objects are dropped.
        let threads = match listed.threads.try_lock() {
            Ok(mut threads) => Some(std::mem::take(&mut *threads)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(std::mem::take(&mut *p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        match threads {
            Some(threads) => drop(threads),
            None => std::mem::forget(listed),
        }
    }

    /// For tests: a thread of its own (not Python's) takes the lock of the workers'
    /// list and holds it, without the GIL, as `_started_threads` does while it looks,
    /// until `_release_worker_list()`; this returns once the lock is held (a fork may
    /// then land inside that window). Meanwhile nothing here may start a worker.
    fn _hold_worker_list(&self, py: Python<'_>) -> PyResult<()> {
        let listed = self.listed(py);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _threads = lock(&listed.threads);
            let _ = held.send(());
            let _ = released.recv();
        });
        py.detach(move || is_held.recv())
            .map_err(|_| PyRuntimeError::new_err("the holding thread ended"))?;
        *lock(&HELD_WORKER_LIST) = Some(release);
        Ok(())
    }

    /// For tests: ends `_hold_worker_list()`.
    #[staticmethod]
    fn _release_worker_list() {
        drop(lock(&HELD_WORKER_LIST).take());
    }

    #[getter]
    fn _max_workers(&self) -> PyResult<usize> {
        Ok(self.state()?.pool().max_workers())
    }

    #[getter]
    fn _thread_name_prefix(&self) -> PyResult<String> {
        Ok(self.state()?.prefix.clone())
    }

    /// As the stdlib pool's attribute: False, or why the pool broke.
    #[getter]
    fn _broken(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match lock(&self.state()?.broken).clone() {
            Some(why) => why.into_pyobject(py)?.into_any().unbind(),
            None => interop::py_bool(py, false),
        })
    }

    /// As the stdlib pool's attribute (code tests `pool._shutdown` before submitting):
    /// whether `shutdown()` was called; a broken pool says so in `_broken` instead.
    #[getter]
    fn _shutdown(&self) -> PyResult<bool> {
        Ok(self.state()?.shutdown_called.load(Relaxed))
    }
}

/// `_python_exit`: the interpreter is exiting; every pool refuses new jobs from now on.
#[pyfunction]
pub fn _mark_interpreter_exiting() {
    INTERPRETER_EXITING.store(true, Relaxed);
}

#[pymethods]
impl LoopCore {
    /// `run_in_executor`: the fast path for weaveloop pools, the generic path (via
    /// `concurrent.futures.Future`) for any other executor.
    #[pyo3(signature = (executor, func, *args))]
    fn run_in_executor<'py>(
        slf: &Bound<'py, Self>,
        executor: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        this.check_thread_strict()?;
        check_callback(func, "run_in_executor", this.is_debug())?;
        let executor = if executor.is_none() {
            let default = lock(&this.default_executor)
                .as_ref()
                .map(|e| e.clone_ref(py));
            match default {
                Some(e) if !this.executor_shutdown_called.load(Relaxed) => e.into_bound(py),
                _ => interop::call_method(slf, crate::intern!(py, "_default_pool"), &[])?,
            }
        } else {
            executor.clone()
        };
        match executor.cast::<PoolCore>() {
            // A subclass that overrides submit() gets its override called.
            Ok(pool) if interop::submit_is_the_pools(&executor)? => {
                PoolCore::submit_for_loop(pool, slf, func, args)
            }
            _ => {
                let foreign = crate::intern!(py, "_run_in_foreign_executor");
                interop::call_method(slf, foreign, &[&executor, func, args])
            }
        }
    }
}
