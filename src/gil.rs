//! `GilCell`: state of the binding layer that only code holding the GIL touches.

use std::cell::UnsafeCell;

use pyo3::Python;

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
