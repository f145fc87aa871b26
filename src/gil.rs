//! `GilCell`: state of the binding layer that only code holding the GIL touches;
//! `GilOnce` and `intern!`: values set up on first use, safe across `os.fork()`.

use std::cell::UnsafeCell;

use pyo3::prelude::*;
use pyo3::types::PyString;

/// A value that is only ever read or written with the GIL held: no lock and no atomic
/// instruction, which matters on the per-callback path. Each operation is a single move
/// or reference-count increment that cannot run Python code, so no access can begin
/// while another one on the same thread is in progress either.
pub struct GilCell<T>(UnsafeCell<T>);

// SAFETY: every access below requires a `Python` token (or runs inside the GC, which
// holds the GIL), and the module is declared `gil_used`, so a free-threaded interpreter
// turns the GIL on when it imports it: accesses from different threads never overlap.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell(UnsafeCell::new(value))
    }

    /// `f` must not run Python code (no drop of a Python object, no call).
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: the GIL is held (the token proves it), see the Sync impl; `f` runs no
        // Python code, so nothing on this thread can reach the cell while it holds it.
        f(unsafe { &mut *self.0.get() })
    }

    /// For `tp_traverse`, which gets no token but runs with the GIL held.
    pub fn peek_in_gc(&self) -> &T {
        // SAFETY: the GC runs with the GIL held and is only triggered by allocating a
        // Python object, which no `with` closure does; so no `&mut` borrow is live.
        unsafe { &*self.0.get() }
    }
}

/// A value set up on first use and kept for the life of the process, like pyo3's
/// `PyOnceLock`, but safe across `os.fork()`.
///
/// `PyOnceLock` releases the GIL, marks itself "being initialised", then waits for the
/// GIL again before computing the value. A fork made by the GIL's holder inside that
/// window gives the child a cell marked "being initialised" by a thread that does not
/// exist there: its first use in the child waits forever (the class of rust-lang/rust
/// #43448). Here the value is computed first, with the GIL held and the cell untouched;
/// only the store marks the cell busy, and it runs no Python code and never lets go of
/// the GIL, so no fork (which needs the GIL) can happen inside it. Two threads may both
/// compute the value (the computation may release the GIL: an import); the first store
/// wins and the other value is dropped.
pub struct GilOnce<T>(std::sync::OnceLock<T>);

impl<T> GilOnce<T> {
    pub const fn new() -> Self {
        GilOnce(std::sync::OnceLock::new())
    }

    #[inline]
    pub fn get_or_try_init<E>(
        &self,
        py: Python<'_>,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<&T, E> {
        match self.0.get() {
            Some(value) => Ok(value),
            None => self.init(py, init),
        }
    }

    #[inline]
    pub fn get_or_init(&self, py: Python<'_>, init: impl FnOnce() -> T) -> &T {
        match self.get_or_try_init(py, || Ok::<T, std::convert::Infallible>(init())) {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    #[cold]
    fn init<E>(&self, _py: Python<'_>, init: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
        let value = init()?;
        // (A value that lost the race is dropped here, with the GIL held: `_py`.)
        let _ = self.0.set(value);
        Ok(self.0.get().expect("a GilOnce is set once a store returns"))
    }
}

impl GilOnce<Py<PyAny>> {
    /// `module.attribute`, imported on first use.
    pub fn import<'py>(
        &self,
        py: Python<'py>,
        module: &str,
        attribute: &str,
    ) -> PyResult<&Bound<'py, PyAny>> {
        self.get_or_try_init(py, || Ok(py.import(module)?.getattr(attribute)?.unbind()))
            .map(|value| value.bind(py))
    }
}

/// The interned `str` behind `crate::intern!`: pyo3's `intern!`, on a `GilOnce`.
pub struct Interned(&'static str, GilOnce<Py<PyString>>);

impl Interned {
    pub const fn new(text: &'static str) -> Self {
        Interned(text, GilOnce::new())
    }

    #[inline]
    pub fn get<'py>(&self, py: Python<'py>) -> &Bound<'py, PyString> {
        self.1
            .get_or_init(py, || PyString::intern(py, self.0).unbind())
            .bind(py)
    }
}

/// An interned Python `str`, made on first use and kept (pyo3's `intern!`, made safe
/// across `os.fork()`: see `GilOnce`).
#[macro_export]
macro_rules! intern {
    ($py:expr, $text:expr) => {{
        static INTERNED: $crate::gil::Interned = $crate::gil::Interned::new($text);
        INTERNED.get($py)
    }};
}
