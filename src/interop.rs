//! Python objects the binding layer calls into, imported once per interpreter, and small
//! helpers around CPython's C API (contexts, thread idents) that the rest of `src/` uses.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple, PyType};

use crate::gil::{GilCell, GilOnce};

/// Functions returning a Python object imported on first use and kept for the life of the
/// interpreter (`name: "module", "attribute";`), and `import_all`, which looks them all up.
macro_rules! cached_imports {
    ($($fn_name:ident: $module:literal, $attr:literal;)*) => {
        $(
            pub fn $fn_name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
                static CELL: GilOnce<Py<PyAny>> = GilOnce::new();
                CELL.import(py, $module, $attr)
            }
        )*

        fn import_all(py: Python<'_>) -> PyResult<()> {
            $($fn_name(py)?;)*
            Ok(())
        }
    };
}

cached_imports! {
    format_callback_source: "asyncio.format_helpers", "_format_callback_source";
    format_handle: "asyncio.base_events", "_format_handle";
    asyncio_future: "asyncio", "Future";
    concurrent_future: "concurrent.futures", "Future";
    broken_thread_pool: "concurrent.futures.thread", "BrokenThreadPool";
    partial_type: "functools", "partial";
    method_type: "types", "MethodType";
    iscoroutinefunction: "asyncio.coroutines", "iscoroutinefunction";
    convert_future_exc: "asyncio.futures", "_convert_future_exc";
    asyncio_task: "asyncio", "Task";
    thread_pool: "weaveloop._executor", "ThreadPoolExecutor";
    stdlib_pool: "concurrent.futures.thread", "ThreadPoolExecutor";
    own_submit: "weaveloop._executor", "_OWN_SUBMIT";
    is_stdlib_submit: "weaveloop._executor", "_is_stdlib_submit";
    get_running_loop: "asyncio.events", "_get_running_loop";
    heappush: "heapq", "heappush";
    heappop: "heapq", "heappop";
    heapify: "heapq", "heapify";
    extract_stack: "asyncio.format_helpers", "extract_stack";
    getframe: "sys", "_getframe";
    base_event_loop: "asyncio.base_events", "BaseEventLoop";
    weak_value_dictionary: "weakref", "WeakValueDictionary";
    socket_type: "socket", "socket";
    c_socket_type: "_socket", "socket";
}

macro_rules! cached_modules {
    ($($fn_name:ident: $module:literal;)*) => {
        $(
            fn $fn_name(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
                static CELL: GilOnce<Py<PyModule>> = GilOnce::new();
                CELL.get_or_try_init(py, || py.import($module).map(Bound::unbind))
                    .map(|m| m.bind(py))
            }
        )*

        fn import_all_modules(py: Python<'_>) -> PyResult<()> {
            $($fn_name(py)?;)*
            Ok(())
        }
    };
}

cached_modules! {
    base_events: "asyncio.base_events";
    asyncio_tasks: "asyncio.tasks";
}

/// Looks up, once per interpreter, every module and attribute this layer imports: an
/// unclosed loop may be finalized during interpreter shutdown, when `sys.modules` is
/// being emptied and an import fails ("sys.meta_path is None"); its `close()` (which in
/// debug mode formats the handles it cancels) would stop halfway there, leaving its
/// self-pipe open. Called when a loop is made, so nothing is imported first later.
pub fn import_ahead(py: Python<'_>) -> PyResult<()> {
    static DONE: GilOnce<()> = GilOnce::new();
    DONE.get_or_try_init(py, || {
        import_all_modules(py)?;
        import_all(py)?;
        has_set_task_name_helper(py).map(drop)
    })
    .map(|_| ())
}

/// What the stock `create_task` does with the name of a task a task factory made. Up to
/// Python 3.12 (where `asyncio.tasks._set_task_name` exists): `task.set_name(name)`
/// unless the name is None, and for a task without `set_name` a DeprecationWarning,
/// which names the line that called `create_task` (asyncio's `stacklevel=3` from its
/// helper; here, with no Python frame of ours, the current frame). 3.13 calls
/// `task.set_name` itself, which a task then must have (3.13.0 calls it with None too,
/// naming the task "None", a bug later versions fixed: a None name is only looked up).
pub fn set_task_name(
    py: Python<'_>,
    task: &Bound<'_, PyAny>,
    name: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let up_to_3_12 = has_set_task_name_helper(py)?;
    if up_to_3_12 && name.is_none() {
        return Ok(());
    }
    let method = match task.getattr(crate::intern!(py, "set_name")) {
        Ok(method) => method,
        Err(e) if up_to_3_12 && e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {
            let msg = c"Task.set_name() was added in Python 3.8, the method support will be \
                        mandatory for third-party task implementations since 3.13.";
            let category = py.get_type::<pyo3::exceptions::PyDeprecationWarning>();
            return PyErr::warn(py, &category, msg, 1);
        }
        Err(e) => return Err(e),
    };
    if name.is_none() {
        return Ok(());
    }
    call_with_slice(&method, &[name.as_ptr()]).map(drop)
}

/// Whether `asyncio.tasks._set_task_name` exists (up to Python 3.12; see
/// `set_task_name`).
fn has_set_task_name_helper(py: Python<'_>) -> PyResult<bool> {
    static CELL: GilOnce<bool> = GilOnce::new();
    CELL.get_or_try_init(py, || asyncio_tasks(py)?.hasattr("_set_task_name"))
        .copied()
}

/// `asyncio.base_events.logger`, looked up on every call as the stock loop's code does
/// (a module global), so whoever patches or replaces it gets the loop's messages too.
pub fn asyncio_logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    base_events(py)?.getattr(crate::intern!(py, "logger"))
}

/// `contextvars.copy_context()`.
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held (we have `py`); PyContext_CopyCurrent returns a new
    // reference or NULL with an exception set, which from_owned_ptr_or_err handles.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }.map(Bound::unbind)
}

/// Drops `loop_obj`'s entry from asyncio's table of each loop's running task (the C
/// accelerator's `_current_tasks` dict), if this Python has one.
pub fn forget_current_task(loop_obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = loop_obj.py();
    let Ok(tasks) = asyncio_tasks(py)?.getattr("_current_tasks") else {
        return Ok(());
    };
    if let Ok(tasks) = tasks.cast::<pyo3::types::PyDict>() {
        if tasks.contains(loop_obj)? {
            tasks.del_item(loop_obj)?;
        }
    }
    Ok(())
}

/// `asyncio._get_running_loop()` (the C accelerator): the loop running in this thread,
/// or None.
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    get_running_loop(py)?.call0()
}

/// Whether `run_in_executor` may bypass a weaveloop pool's `submit`: only if calling it
/// would reach weaveloop's own `submit` and that would queue the job itself. Not so for a
/// subclass's override, a patch on weaveloop's class or on the instance
/// (`mock.patch.object(pool, "submit")`), nor while something wraps the stdlib pool's
/// `submit` (tracing agents do, to carry a context into the job): weaveloop's `submit`
/// then hands each job to that wrapper.
pub fn submit_is_the_pools(executor: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = executor.py();
    let submit = crate::intern!(py, "submit");
    static SEEN: ClassVerdict = ClassVerdict::new();
    let class_ok = SEEN.get(&executor.get_type(), |cls| {
        Ok(cls.getattr(submit)?.is(own_submit(py)?) && stdlib_submit_is_its_own(py)?)
    })?;
    if !class_ok {
        return Ok(false);
    }
    // SAFETY: `executor` is a live object and the GIL is held; PyObject_GenericGetDict
    // returns a new reference to its `__dict__` (made if it had none yet), or NULL with
    // an exception set.
    let attrs = unsafe { ffi::PyObject_GenericGetDict(executor.as_ptr(), std::ptr::null_mut()) };
    if attrs.is_null() {
        let _ = PyErr::take(py); // (no __dict__: nothing patched on the instance)
        return Ok(true);
    }
    // SAFETY: `attrs` is the new reference just returned, owned from here on.
    let attrs = unsafe { Bound::from_owned_ptr(py, attrs) };
    Ok(!attrs
        .cast::<PyDict>()
        .map_or(true, |d| d.contains(submit).unwrap_or(true)))
}

/// Whether the stdlib pool's `submit` is the one its module defines, not a wrapper.
pub fn stdlib_submit_is_its_own(py: Python<'_>) -> PyResult<bool> {
    static SEEN: ClassVerdict = ClassVerdict::new();
    SEEN.get(stdlib_pool(py)?.cast::<PyType>()?, |cls| {
        let submit = cls.getattr(crate::intern!(py, "submit"))?;
        call_with_slice(is_stdlib_submit(py)?, &[submit.as_ptr()])?.is_truthy()
    })
}

/// The class's version tag: a new one whenever an attribute of it or of a base is set or
/// deleted (given at its next attribute lookup; 0 until then, and for a class modified
/// too often to get one). A verdict about a class's attributes holds while it is the
/// same (`ClassVerdict`; and in Python, `_loop._unpatched`).
#[pyfunction]
pub fn _class_version(cls: &Bound<'_, PyType>) -> u32 {
    // SAFETY: `cls` is a live type object and the GIL is held; its version tag is a
    // plain field that only code holding the GIL changes.
    unsafe { (*cls.as_type_ptr()).tp_version_tag }
}

/// A verdict about a class's attributes, kept while the class and its bases are
/// unchanged: CPython gives a class a new version tag whenever an attribute of it or of
/// a base is set or deleted (the tag its attribute cache and specialised bytecode rely
/// on), so one compare of the class and its tag replaces the attribute lookups.
struct ClassVerdict(GilCell<(usize, u32, bool)>);

impl ClassVerdict {
    const fn new() -> Self {
        ClassVerdict(GilCell::new((0, 0, false)))
    }

    /// The verdict for `cls`: `decide(cls)` unless known for its current version.
    fn get(
        &self,
        cls: &Bound<'_, PyType>,
        decide: impl FnOnce(&Bound<'_, PyType>) -> PyResult<bool>,
    ) -> PyResult<bool> {
        let py = cls.py();
        let key = |cls: &Bound<'_, PyType>| (cls.as_ptr() as usize, _class_version(cls));
        let (at, tag) = key(cls);
        let known = self.0.with(py, |&mut (seen_at, seen_tag, verdict)| {
            (tag != 0 && (seen_at, seen_tag) == (at, tag)).then_some(verdict)
        });
        if let Some(verdict) = known {
            return Ok(verdict);
        }
        let verdict = decide(cls)?;
        // (Read again: the lookups may have given the class its tag. A class whose
        // tag stays 0, modified too often for a new one, is decided each time.)
        let (at, tag) = key(cls);
        self.0.with(py, |seen| *seen = (at, tag, verdict));
        Ok(verdict)
    }
}

/// `object.__setattr__(obj, name, value)`: sets an attribute past any `__setattr__` a
/// Python class defines, so no Python code runs (and no signal handler with it).
pub fn set_plain_attr(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, pyo3::types::PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: the GIL is held (the arguments are Bounds) and all three are live objects;
    // PyObject_GenericSetAttr borrows them and returns -1 with an exception set on error.
    let rc = unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) };
    if rc < 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    Ok(())
}

/// `True`/`False` as an owned object.
pub fn py_bool(py: Python<'_>, value: bool) -> Py<PyAny> {
    pyo3::types::PyBool::new(py, value)
        .to_owned()
        .into_any()
        .unbind()
}

/// Interned keyword-name tuples for `call_kw`.
pub fn kwnames<'py>(
    py: Python<'py>,
    names: &'static [&'static str],
) -> PyResult<&'py Bound<'py, PyTuple>> {
    static LOOP: GilOnce<Py<PyTuple>> = GilOnce::new();
    static TASK: GilOnce<Py<PyTuple>> = GilOnce::new();
    static CONTEXT: GilOnce<Py<PyTuple>> = GilOnce::new();
    static DEBUG: GilOnce<Py<PyTuple>> = GilOnce::new();
    let cell = match names {
        ["loop"] => &LOOP,
        ["context"] => &CONTEXT,
        ["debug"] => &DEBUG,
        ["loop", "name", "context"] => &TASK,
        _ => return Err(pyo3::exceptions::PyValueError::new_err("unknown kwnames")),
    };
    cell.get_or_try_init(py, || PyTuple::new(py, names).map(Bound::unbind))
        .map(|t| t.bind(py))
}

/// `asyncio.format_helpers._format_callback_source(callback, args)`, as the stock handle
/// calls it: from Python 3.13 on with `debug=`, the arguments shown only in debug mode.
pub fn format_callback<'py>(
    py: Python<'py>,
    callback: &Bound<'py, PyAny>,
    args: &Bound<'py, PyAny>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let source = format_callback_source(py)?;
    if py.version_info() >= (3, 13) {
        let debug = pyo3::types::PyBool::new(py, debug).to_owned().into_any();
        call_kw(
            source,
            &[callback, args],
            kwnames(py, &["debug"])?,
            &[&debug],
        )
    } else {
        call_with_slice(source, &[callback.as_ptr(), args.as_ptr()])
    }
}

/// `callable(*positional, **dict(zip(kwnames, kwvalues)))` through vectorcall: no
/// argument tuple or keyword dict is built.
pub fn call_kw<'py>(
    callable: &Bound<'py, PyAny>,
    positional: &[&Bound<'py, PyAny>],
    kwnames: &Bound<'py, PyTuple>,
    kwvalues: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    const MAX: usize = 8;
    let n = positional.len() + kwvalues.len();
    if n > MAX || kwnames.len() != kwvalues.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "call_kw: bad arguments",
        ));
    }
    let mut argv = [std::ptr::null_mut::<ffi::PyObject>(); MAX];
    for (slot, obj) in argv.iter_mut().zip(positional.iter().chain(kwvalues)) {
        *slot = obj.as_ptr();
    }
    // SAFETY: `argv[..n]` holds borrowed pointers to objects the caller keeps alive
    // (their Bounds outlive this call); `kwnames` is a tuple of str whose length equals
    // the number of keyword values (checked above); the GIL is held.
    let result = unsafe {
        vectorcall(
            callable.as_ptr(),
            &argv[..n],
            positional.len(),
            kwnames.as_ptr(),
        )
    };
    // SAFETY: the GIL is held; `result` is a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(callable.py(), result) }
}

/// The Python stack of whoever called into Rust, as asyncio's debug mode records it.
pub fn caller_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let top = 0i32.into_pyobject(py)?;
    let frame = call_with_slice(getframe(py)?, &[top.as_ptr()])?;
    Ok(call_with_slice(extract_stack(py)?, &[frame.as_ptr()])?.unbind())
}

// The calls through which the loop and pool threads run Python code are made "C-unwind":
// code that lets go of the GIL (time.sleep, I/O) may be ended there by CPython before
// 3.14, which exits a thread taking the GIL back once finalization has begun with
// pthread_exit, a forced unwind. Made so, the unwind reaches the guard of the Rust frame
// making the call (`HangOnExit`), which parks the thread for good, as 3.14 does, instead
// of running the destructors of the frames above without the GIL and then aborting the
// process at pyo3's panic boundary. (pyo3 does the same for its own PyEval_RestoreThread
// and PyGILState_Ensure.) The functions are looked up at run time: a second, "C-unwind"
// declaration of a symbol pyo3-ffi declares "C" would be merged with that one, and the
// call then compiled as one that cannot unwind (so with no guard).
type Vectorcall = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
type Call = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

type VectorcallMethod = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
type DecRef = unsafe extern "C-unwind" fn(*mut ffi::PyObject);
type IsFinalizing = unsafe extern "C" fn() -> std::ffi::c_int;

struct MayExit {
    vectorcall: Vectorcall,
    call: Call,
    vectorcall_method: VectorcallMethod,
    decref: DecRef,
    /// `Py_IsFinalizing` (3.13+) or `_Py_IsFinalizing` (before): callable without the GIL.
    is_finalizing: Option<IsFinalizing>,
}

/// None if the interpreter's symbols are not visible to dlsym (an embedding that loaded
/// libpython privately): the calls are then made as pyo3-ffi declares them.
fn may_exit() -> Option<&'static MayExit> {
    static FUNCTIONS: std::sync::OnceLock<Option<MayExit>> = std::sync::OnceLock::new();
    FUNCTIONS
        .get_or_init(|| {
            let find = |name: &std::ffi::CStr| {
                // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other
                // precondition; it returns NULL or the address of that symbol.
                let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!p.is_null()).then_some(p)
            };
            let (v, c) = (find(c"PyObject_Vectorcall")?, find(c"PyObject_Call")?);
            let m = find(c"PyObject_VectorcallMethod")?;
            let d = find(c"Py_DecRef")?;
            let f = find(c"Py_IsFinalizing").or_else(|| find(c"_Py_IsFinalizing"));
            // SAFETY: these are CPython's functions of those names, whose C signatures are
            // the ones of the types (pyo3-ffi declares the same).
            Some(unsafe {
                MayExit {
                    vectorcall: std::mem::transmute::<*mut libc::c_void, Vectorcall>(v),
                    call: std::mem::transmute::<*mut libc::c_void, Call>(c),
                    vectorcall_method: std::mem::transmute::<*mut libc::c_void, VectorcallMethod>(
                        m,
                    ),
                    decref: std::mem::transmute::<*mut libc::c_void, DecRef>(d),
                    is_finalizing: f
                        .map(|f| std::mem::transmute::<*mut libc::c_void, IsFinalizing>(f)),
                }
            })
        })
        .as_ref()
}

/// Parks the thread for good if dropped by an unwind out of a Python call while the
/// interpreter finalizes, i.e. the thread exit described above. Any other unwind goes
/// on as before: a Rust panic (it cannot cross CPython's frames anyway: pyo3 turns one
/// into an exception where Python called Rust), or a C++ exception thrown through a
/// callback, which then aborts the process as it does on the stock loop.
struct HangOnExit;

impl Drop for HangOnExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // SAFETY: Py_IsFinalizing reads the runtime's flag and needs no GIL. If it cannot
        // be found, the unwind is taken for the exit (the likely cause).
        let finalizing = may_exit()
            .and_then(|m| m.is_finalizing)
            .is_none_or(|f| unsafe { f() } != 0);
        if !finalizing {
            return;
        }
        loop {
            std::thread::park();
        }
    }
}

/// Makes `call`, a call into CPython that may run Python code, with the exit guard in
/// this frame (the unwind of a thread exit reaches it through `call`'s, which holds
/// nothing to drop). `call` gets the "C-unwind" entry points, if found.
fn guarded<R>(call: impl FnOnce(Option<&'static MayExit>) -> R) -> R {
    let guard = HangOnExit;
    let result = call(may_exit());
    std::mem::forget(guard);
    result
}

/// Lets go of `obj` from the loop or a pool thread: if that deallocates it, its
/// `__del__` may let go of the GIL, and the deallocation is guarded as a call is
/// (`HangOnExit`). The GIL must be held.
pub fn release<T>(_py: Python<'_>, obj: Py<T>) {
    let ptr = obj.into_ptr();
    // SAFETY: the GIL is held (`_py`); `ptr` is a reference we own (into_ptr), released
    // exactly once here. With other references left, decrementing cannot deallocate.
    unsafe {
        if ffi::Py_REFCNT(ptr) > 1 {
            ffi::Py_DECREF(ptr);
            return;
        }
        guarded(|may_exit| match may_exit {
            Some(may_exit) => (may_exit.decref)(ptr),
            None => ffi::Py_DecRef(ptr),
        });
    }
}

/// `PyObject_Vectorcall(f, args, nargs, kwnames)` with the exit guard (`HangOnExit`):
/// a new reference, or NULL with an exception set.
///
/// # Safety
/// The GIL is held; `f` and the objects in `args` are live for the call; `args` holds
/// `nargs` positional arguments followed by one value per name in `kwnames` (a tuple of
/// str, or NULL for none).
// SAFETY: an unsafe fn: its callers uphold the contract under "# Safety" above.
unsafe fn vectorcall(
    f: *mut ffi::PyObject,
    args: &[*mut ffi::PyObject],
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let a = args.as_ptr();
    // SAFETY: the caller's contract above is vectorcall's; the guarded pointer is
    // CPython's own PyObject_Vectorcall.
    guarded(|may_exit| unsafe {
        match may_exit {
            Some(may_exit) => (may_exit.vectorcall)(f, a, nargs, kwnames),
            None => ffi::PyObject_Vectorcall(f, a, nargs, kwnames),
        }
    })
}

/// `callable(*args)` through vectorcall on the tuple's own item array: no unpacking of
/// the argument tuple as `PyObject_Call` does. Safe at interpreter exit (`HangOnExit`).
pub fn call_with_tuple<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let tuple = args.as_ptr().cast::<ffi::PyTupleObject>();
    // SAFETY: `args` is a live tuple (a Bound<PyTuple>), so `ob_item` holds `len` valid
    // borrowed pointers, which stay alive while the caller holds the (immutable) tuple.
    let items = unsafe {
        let first = std::ptr::addr_of!((*tuple).ob_item).cast::<*mut ffi::PyObject>();
        std::slice::from_raw_parts(first, args.len())
    };
    call_with_slice(callable, items)
}

/// `callable(*items)` through vectorcall; `items` are borrowed references the caller
/// keeps alive for the call. Safe at interpreter exit (`HangOnExit`).
#[inline(always)]
pub fn call_with_slice<'py>(
    callable: &Bound<'py, PyAny>,
    items: &[*mut ffi::PyObject],
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held (`callable` is a Bound); `items` are live objects the caller
    // holds for the call, all positional; no keywords.
    let result = unsafe { vectorcall(callable.as_ptr(), items, items.len(), std::ptr::null_mut()) };
    // SAFETY: the GIL is held; `result` is a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(callable.py(), result) }
}

/// `obj.name(*args)` (up to three arguments) through vectorcall, without a bound method
/// made for the call; safe at interpreter exit (`HangOnExit`), as `call_with_slice`. For
/// the calls the Rust transports make into protocols and the stock transport's code.
pub fn call_method<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let mut stack = [std::ptr::null_mut(); 4];
    let Some(slots) = stack.get_mut(1..=args.len()) else {
        return Err(pyo3::exceptions::PySystemError::new_err(
            "call_method takes at most three arguments",
        ));
    };
    for (slot, arg) in slots.iter_mut().zip(args) {
        *slot = arg.as_ptr();
    }
    stack[0] = obj.as_ptr();
    let n = args.len() + 1;
    // SAFETY: the GIL is held (`obj` is a Bound); `stack[..n]` are live objects (`obj` and
    // `args`, borrowed for the call), self first as PyObject_VectorcallMethod takes them;
    // it returns a new reference or NULL with an exception set.
    let result = unsafe {
        let (name, items, none) = (name.as_ptr(), stack.as_ptr(), std::ptr::null_mut());
        guarded(|may_exit| match may_exit {
            Some(may_exit) => (may_exit.vectorcall_method)(name, items, n, none),
            None => ffi::PyObject_VectorcallMethod(name, items, n, none),
        })
    };
    // SAFETY: the GIL is held; `result` is a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(obj.py(), result) }
}

/// `callable(*args, **kwargs)`, safe at interpreter exit as `call_with_tuple`.
pub fn call_with_kwargs<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (f, a, k) = (
        callable.as_ptr(),
        args.as_ptr(),
        kwargs.map_or(std::ptr::null_mut(), Bound::as_ptr),
    );
    // SAFETY: the GIL is held; all three are live objects (or NULL for no kwargs) that
    // the caller keeps alive for the call; the result is a new reference or NULL.
    let result = unsafe {
        guarded(|may_exit| match may_exit {
            Some(may_exit) => (may_exit.call)(f, a, k),
            None => ffi::PyObject_Call(f, a, k),
        })
    };
    // SAFETY: as in call_with_tuple.
    unsafe { Bound::from_owned_ptr_or_err(callable.py(), result) }
}

/// Runs `f` with `exc` as the exception being handled, as code in an `except` block
/// sees it (`sys.exc_info()`, and the `__context__` of an exception raised meanwhile);
/// the one handled before is restored after.
pub fn while_handling<T>(exc: &Bound<'_, PyAny>, f: impl FnOnce() -> T) -> T {
    // PyErr_GetHandledException reads the innermost exception being handled, whichever
    // frame's it is; PyErr_SetHandledException writes the current frame's only. What to
    // put back is the current frame's own: none if clearing it reveals the same one.
    // SAFETY: the GIL is held (`exc` is a Bound); Get returns a new reference or NULL,
    // Set takes its own reference (NULL clears).
    let own = unsafe {
        let before = ffi::PyErr_GetHandledException();
        ffi::PyErr_SetHandledException(std::ptr::null_mut());
        let below = ffi::PyErr_GetHandledException();
        let own = if below == before {
            ffi::Py_XDECREF(before);
            std::ptr::null_mut()
        } else {
            before
        };
        ffi::Py_XDECREF(below);
        ffi::PyErr_SetHandledException(exc.as_ptr());
        own
    };
    let result = f();
    // SAFETY: the GIL is held; `own` is a reference we own (or NULL), released after Set
    // has taken its own.
    unsafe {
        ffi::PyErr_SetHandledException(own);
        ffi::Py_XDECREF(own);
    }
    result
}

/// A copy of the current context, or None when it has no variables set.
pub fn copy_context_unless_empty(py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    match thread_context_len(py) {
        Some(0) => Ok(None),
        Some(_) => copy_context(py).map(Some),
        None => {
            let ctx = copy_context(py)?;
            Ok(if ctx.bind(py).len()? == 0 {
                None
            } else {
                Some(ctx)
            })
        }
    }
}

/// Where a thread state holds the thread's current context (`PyThreadState.context`,
/// NULL until the thread first needs one), as a byte offset; 0 when unknown. CPython
/// has no function that reads the current context without copying it, and asking
/// whether a callback's context is empty is the common case of every `call_soon`: a
/// copy allocates a Context only to throw it away (4-5% of a `call_soon_threadsafe`).
static CONTEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The thread state's field that holds the current context, read as a pointer.
///
/// # Safety
/// The GIL is held, and `at` is less than the size of a `PyThreadState` minus a
/// pointer (the field is never dereferenced here, only read).
// SAFETY: an unsafe fn for the contract above; its one unsafe block reads within it.
unsafe fn context_field(at: usize) -> *mut ffi::PyObject {
    // SAFETY: the caller's contract; PyThreadState_Get returns the calling thread's
    // state, which lives while the thread holds the GIL.
    unsafe {
        ffi::PyThreadState_Get()
            .cast::<u8>()
            .add(at)
            .cast::<*mut ffi::PyObject>()
            .read()
    }
}

/// Sets up, while the module is imported, what would otherwise be set up on first use
/// in a once-cell that is not safe across `os.fork()`: the dlsym lookups of `may_exit`
/// (a `std` once-cell, taken without the GIL) and the `str`s pyo3 interns inside its
/// own once-cells for a type's names (its conversion errors name types). A fork may
/// land during that import, and leave one of these half set up in the child; but that
/// child cannot finish importing the module either (the import's module lock belongs
/// to a thread that does not exist there), so it never reaches them. Set up later, on
/// first use, a fork could leave them half set up for a child that does use them.
/// (This layer's own cells are `GilOnce`s.)
pub fn set_up_before_any_fork(py: Python<'_>) -> PyResult<()> {
    may_exit();
    let ty = py.get_type::<PyType>();
    ty.name()?;
    ty.qualname()?;
    ty.module()?;
    ty.fully_qualified_name()?;
    Ok(())
}

/// Finds `PyThreadState.context` for `CONTEXT_SLOT` (module import): its offset in
/// the headers of each supported CPython, taken only if entering a new context shows
/// up there and leaving it restores what was there before. Otherwise, or on another
/// Python, contexts are copied to be looked at, as before.
pub fn locate_thread_context(py: Python<'_>) -> PyResult<()> {
    // offsetof(PyThreadState, context) for 3.11, and for 3.12 and 3.13, on 64-bit
    // targets (x86-64 and aarch64 alike: the fields before it are pointers, ints and a
    // 32-bit bit-field; Py_DEBUG does not change it, the struct has no object header);
    // sizeof(PyThreadState) is 360, 288 and 304 bytes.
    if !cfg!(target_pointer_width = "64") {
        return Ok(());
    }
    let at = match py.version_info().minor {
        11 => 224,
        12 | 13 => 208,
        _ => return Ok(()),
    };
    let fresh = new_context(py)?;
    let ctx = fresh.as_ptr();
    // SAFETY: the GIL is held and `at` is inside the thread state (see above); `ctx`
    // is a live Context we own, entered and left on this thread.
    let found = unsafe {
        let before = context_field(at);
        if ffi::PyContext_Enter(ctx) < 0 {
            return Err(PyErr::fetch(py));
        }
        let during = context_field(at);
        if ffi::PyContext_Exit(ctx) < 0 {
            return Err(PyErr::fetch(py));
        }
        during == ctx && context_field(at) == before
    };
    if found {
        CONTEXT_SLOT.store(at, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Whether `copy_context_unless_empty` reads the thread's context in place (tests).
#[pyfunction]
pub fn _reads_context_in_place() -> bool {
    CONTEXT_SLOT.load(std::sync::atomic::Ordering::Relaxed) != 0
}

/// How many variables the current context has set, without copying it; None when the
/// thread state's layout is unknown.
fn thread_context_len(py: Python<'_>) -> Option<usize> {
    let at = CONTEXT_SLOT.load(std::sync::atomic::Ordering::Relaxed);
    if at == 0 {
        return None;
    }
    // SAFETY: we hold the GIL (`py`), and `at` was verified by locate_thread_context.
    let ctx = unsafe { context_field(at) };
    if ctx.is_null() {
        return Some(0);
    }
    // SAFETY: the thread's current context is a live Context while the GIL is held;
    // its length (the number of variables in its mapping) cannot fail.
    let n = unsafe { ffi::PyObject_Size(ctx) };
    if n < 0 {
        let _ = PyErr::take(py);
        return None;
    }
    Some(n as usize)
}

/// `contextvars.Context()`: a new empty context.
pub fn new_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held; PyContext_New returns a new reference or NULL with an
    // exception set, which from_owned_ptr_or_err handles.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_New()) }.map(Bound::unbind)
}

/// Runs `f` with `context` entered, as `Context.run` does.
#[inline(always)]
pub fn in_context<T, E: From<PyErr>>(
    py: Python<'_>,
    context: &Py<PyAny>,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let ctx = context.as_ptr();
    // SAFETY: the GIL is held and `context` is a strong reference that outlives this call;
    // PyContext_Enter type-checks its argument and fails with TypeError for a non-Context.
    if unsafe { ffi::PyContext_Enter(ctx) } < 0 {
        return Err(PyErr::fetch(py).into());
    }
    let result = f();
    // SAFETY: `ctx` was entered just above on this thread and is still alive.
    if unsafe { ffi::PyContext_Exit(ctx) } < 0 {
        let exit_err = PyErr::fetch(py);
        return result.and(Err(exit_err.into()));
    }
    result
}

/// `threading.get_ident()` of the calling thread, without a Python call: on Linux both
/// are `pthread_self()`, which reads the thread pointer (no TLS lookup, no syscall).
pub fn thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

/// A number for the calling thread, never given to another thread of this process
/// (unlike `thread_ident`, which the system reuses once a thread has exited). Never 0.
pub fn thread_serial() -> u64 {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static SERIAL: Cell<u64> = const { Cell::new(0) };
    }
    SERIAL.with(|serial| {
        if serial.get() == 0 {
            serial.set(NEXT.fetch_add(1, Relaxed));
        }
        serial.get()
    })
}

/// True if `obj` is exactly a native coroutine object.
pub fn is_coroutine_object(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object and the GIL is held (it is a Bound).
    unsafe { ffi::PyCoro_CheckExact(obj.as_ptr()) != 0 }
}

const CO_COROUTINE: u32 = 0x80;
const CO_VARKEYWORDS: u32 = 0x08;

/// A yes/no answer about the object last asked about, kept while the same object is
/// asked again. Holding the object keeps its address from being reused by another one
/// while it is cached. (A GIL cell rather than a thread-local: a thread-local in an
/// extension module costs a call to `__tls_get_addr` per access.)
struct LastAnswer(GilCell<Option<(Py<PyAny>, bool)>>);

impl LastAnswer {
    const fn new() -> Self {
        LastAnswer(GilCell::new(None))
    }

    /// The answer for `obj`: the cached one if `obj` was the last asked about, else
    /// `compute()`'s, which is then cached.
    fn get(
        &self,
        obj: &Bound<'_, PyAny>,
        compute: impl FnOnce() -> PyResult<bool>,
    ) -> PyResult<bool> {
        let py = obj.py();
        let hit = self.0.with(py, |c| match c {
            Some((cached, answer)) if cached.as_ptr() == obj.as_ptr() => Some(*answer),
            _ => None,
        });
        if let Some(answer) = hit {
            return Ok(answer);
        }
        let answer = compute()?;
        let fresh = Some((obj.clone().unbind(), answer));
        let old = self.0.with(py, |c| std::mem::replace(c, fresh));
        drop(old); // (outside the cell: dropping an object may run Python code)
        Ok(answer)
    }
}

/// The code object last checked, with whether it is a coroutine's: callbacks tend to be
/// the same function over and over.
static LAST_CODE: LastAnswer = LastAnswer::new();

/// What `BaseEventLoop.create_task` last was, and whether that is asyncio's own: tools
/// (APM agents, such as New Relic) replace it on the class, which the stock loops
/// inherit (see `LoopCore::create_task`). A rewrite of the function's code in place
/// (ddtrace's) keeps asyncio's function and file, and is not told apart.
static BASE_CREATE_TASK: LastAnswer = LastAnswer::new();

/// `BaseEventLoop.create_task` as the class has it now, with whether that is asyncio's
/// own (one lookup in the class's dict while it has not changed); None if it has none.
pub fn base_create_task(py: Python<'_>) -> PyResult<Option<(Bound<'_, PyAny>, bool)>> {
    let cls = base_event_loop(py)?;
    let key = crate::intern!(py, "create_task");
    // SAFETY: the GIL is held and `cls` is a live class, whose `tp_dict` is its own live
    // dict; PyDict_GetItemWithError returns a borrowed reference (NULL if absent, with no
    // error set for a str key).
    let found = unsafe {
        let dict = (*cls.as_ptr().cast::<ffi::PyTypeObject>()).tp_dict;
        ffi::PyDict_GetItemWithError(dict, key.as_ptr())
    };
    if found.is_null() {
        return PyErr::take(py).map_or(Ok(None), Err);
    }
    // SAFETY: a live object the class's dict holds; a new strong reference is taken.
    let found = unsafe { Bound::from_borrowed_ptr(py, found) };
    let stock = BASE_CREATE_TASK.get(&found, || {
        // asyncio's own: a plain function whose code is asyncio.base_events'.
        let file = py.import("asyncio.base_events")?.getattr("__file__")?;
        Ok(found.is_instance_of::<pyo3::types::PyFunction>()
            && found
                .getattr("__code__")?
                .getattr("co_filename")?
                .eq(file)?)
    })?;
    Ok(Some((found, stock)))
}

/// Whether `method` (asyncio's `BaseEventLoop.create_task`) takes `**kwargs`, as it does
/// from Python 3.13.3 (passing them on to the task or the task factory).
pub fn takes_kwargs(method: &Bound<'_, PyAny>) -> PyResult<bool> {
    static LAST: LastAnswer = LastAnswer::new();
    LAST.get(method, || {
        let flags: u32 = method.getattr("__code__")?.getattr("co_flags")?.extract()?;
        Ok(flags & CO_VARKEYWORDS != 0)
    })
}

fn code_is_coroutine(code: &Bound<'_, PyAny>) -> PyResult<bool> {
    LAST_CODE.get(code, || {
        let flags: u32 = code
            .getattr(crate::intern!(code.py(), "co_flags"))?
            .extract()?;
        Ok(flags & CO_COROUTINE != 0)
    })
}

/// Cheap `iscoroutinefunction`: plain functions, bound methods and partials are
/// unwrapped down to their code flags; anything else is asked of asyncio only in debug.
pub fn is_coroutine_function(obj: &Bound<'_, PyAny>, debug: bool) -> PyResult<bool> {
    let py = obj.py();
    let mut f = obj.clone();
    for _ in 0..8 {
        // SAFETY: `f` is a live object and the GIL is held.
        if unsafe { ffi::PyFunction_Check(f.as_ptr()) } != 0 {
            // SAFETY: `f` is a function object (checked above), so PyFunction_GetCode
            // returns a borrowed, non-NULL reference to its code object.
            let code = unsafe { Bound::from_borrowed_ptr(py, ffi::PyFunction_GetCode(f.as_ptr())) };
            let is_coro = code_is_coroutine(&code)?;
            return Ok(is_coro
                || (debug
                    && call_with_slice(iscoroutinefunction(py)?, &[obj.as_ptr()])?
                        .is_truthy()?));
        }
        let ty = f.get_type();
        if ty.is(method_type(py)?) {
            f = f.getattr(crate::intern!(py, "__func__"))?;
        } else if ty.is(partial_type(py)?) {
            f = f.getattr(crate::intern!(py, "func"))?;
        } else {
            break;
        }
    }
    if debug {
        return call_with_slice(iscoroutinefunction(py)?, &[obj.as_ptr()])?.is_truthy();
    }
    Ok(false)
}
