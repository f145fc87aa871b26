//! fd watchers: `_add_reader`/`_remove_reader`/`_add_writer`/`_remove_writer`, the
//! primitives under asyncio's public `add_reader` family and the stock selector
//! transports. Callbacks fire level-triggered, once per iteration while the fd is ready.

use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyAttributeError, PyOverflowError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyTuple};

use crate::errors;
use crate::handles::{Callback, Handle};
use crate::interop;
use crate::loop_core::{interest, lock, LoopCore};

const EVENT_READ: u8 = 1;
const EVENT_WRITE: u8 = 2;

/// An int fd or an object with `fileno()`, as an int object, read as the `selectors`
/// module and the stock `_ensure_fd_no_transport` read it (an int, or
/// `int(obj.fileno())`); ValueError("Invalid file object: ...") if it has no usable
/// `fileno()`.
fn fileobj_to_int<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    if obj.is_instance_of::<PyInt>() {
        return Ok(obj.clone());
    }
    match obj
        .call_method0(crate::intern!(py, "fileno"))
        .and_then(|f| py.get_type::<PyInt>().call1((f,)))
    {
        Err(e)
            if e.is_instance_of::<PyAttributeError>(py)
                || e.is_instance_of::<PyTypeError>(py)
                || e.is_instance_of::<PyValueError>(py) =>
        {
            Err(PyValueError::new_err(format!(
                "Invalid file object: {}",
                obj.repr().map(|r| r.to_string()).unwrap_or_default()
            )))
        }
        r => r,
    }
}

/// `fileobj_to_int`, checked as a selector checks it: a negative number is a
/// ValueError. None: an int too large for a C int, which no watched fd can be.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let fd = fileobj_to_int(obj)?;
    if fd.lt(0)? {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    Ok(fd.extract::<RawFd>().ok())
}

#[derive(Clone, Copy)]
pub(crate) enum Side {
    Read,
    Write,
}

impl LoopCore {
    pub(crate) fn add_watcher(
        &self,
        py: Python<'_>,
        side: Side,
        fileobj: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        once: bool,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        self.check_thread_strict()?;
        let Some(fd) = fileobj_to_fd(fileobj)? else {
            // (What epoll's registration says of it.)
            return Err(PyOverflowError::new_err(
                "Python int too large to convert to C int",
            ));
        };
        let method = match side {
            Side::Read => "add_reader",
            Side::Write => "add_writer",
        };
        // A watcher runs many times in one context of its own, as the stock loop's
        // reader handle does (a variable it sets is there on its next call): a real
        // copy even of an empty context, never the shared empty one.
        let context = interop::copy_context(py)?.into_bound(py);
        let cb = Callback::new(callback, args, Some(&context), method, self.is_debug())?;
        let handle = Handle::watcher(py, cb)?;
        let shared = self.shared();
        let replaced = {
            let mut watchers = lock(&self.watchers);
            let w = watchers.entry(fd).or_default();
            if w.fileobj.is_none() {
                w.fileobj = Some(fileobj.clone().unbind());
            }
            let reader = w.reader.is_some().then_some(w.reader_once);
            let writer = w.writer.is_some().then_some(w.writer_once);
            let next = match side {
                Side::Read => interest(Some(once), writer),
                Side::Write => interest(reader, Some(once)),
            };
            match shared.poller.watch(fd, next) {
                Ok(()) => {
                    let (slot, slot_once) = match side {
                        Side::Read => (&mut w.reader, &mut w.reader_once),
                        Side::Write => (&mut w.writer, &mut w.writer_once),
                    };
                    *slot_once = once;
                    Ok(slot.replace(handle.clone_ref(py)))
                }
                Err(e) => Err((e, watchers.remove(&fd))),
            }
        };
        match replaced {
            Ok(Some(old)) => {
                old.get().cb().cancel(py, "Handle", || None)?;
                Ok(handle)
            }
            Ok(None) => Ok(handle),
            // `forgotten` is dropped with no lock held (releasing a callback or the file
            // object can run Python code).
            Err((e, forgotten)) => {
                drop(forgotten);
                Err(errors::os_error(e))
            }
        }
    }

    pub(crate) fn remove_watcher(&self, side: Side, fileobj: &Bound<'_, PyAny>) -> PyResult<bool> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        self.check_thread_strict()?;
        let fd = match fileobj_to_fd(fileobj) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(false),
            // A file object closed since it was registered (fileno() is -1 now): the
            // registration made with that very object, as the selectors module does.
            Err(e) if e.is_instance_of::<PyValueError>(fileobj.py()) => lock(&self.watchers)
                .iter()
                .find(|(_, w)| w.fileobj.as_ref().is_some_and(|o| o.is(fileobj)))
                .map(|(fd, _)| *fd)
                .ok_or(e)?,
            Err(e) => return Err(e),
        };
        let shared = self.shared();
        let (removed, emptied, refused) = {
            let mut watchers = lock(&self.watchers);
            let Some(w) = watchers.get_mut(&fd) else {
                return Ok(false);
            };
            let removed = match side {
                Side::Read => w.reader.take(),
                Side::Write => w.writer.take(),
            };
            let interest = w.interest();
            let (read, write) = (interest.read, interest.write);
            // Stopping all watching of a closed fd cannot fail (epoll forgot it already).
            let refused = shared.poller.watch(fd, interest).err();
            let emptied = if refused.is_some() || (!read && !write) {
                watchers.remove(&fd)
            } else {
                None
            };
            (removed, emptied, refused)
        };
        drop(emptied);
        if let Some(e) = refused {
            return Err(errors::os_error(e));
        }
        Ok(match removed {
            Some(h) => {
                h.get().cb().cancel(fileobj.py(), "Handle", || None)?;
                true
            }
            None => false,
        })
    }
}

impl LoopCore {
    /// Whether the watcher on `fd`'s `side` is still the one that calls `callback` (not
    /// replaced or removed since): what the stock loop asks of a watcher's handle
    /// (`not handle.cancelled()`) before removing it when a socket operation is done.
    pub(crate) fn watcher_calls(
        &self,
        py: Python<'_>,
        side: Side,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
    ) -> bool {
        let watchers = lock(&self.watchers);
        let Some(w) = watchers.get(&fd) else {
            return false;
        };
        let slot = match side {
            Side::Read => &w.reader,
            Side::Write => &w.writer,
        };
        slot.as_ref()
            .is_some_and(|h| !h.get().cb().is_cancelled() && h.get().cb().calls(py, callback))
    }

    /// The public `add_reader`/`add_writer`: `_ensure_fd_no_transport`, then the watcher.
    fn add_checked(
        slf: &Bound<'_, Self>,
        side: Side,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::ensure_fd_no_transport(slf, fd)?;
        slf.get()
            .add_watcher(slf.py(), side, fd, callback, args, false)
            .map(drop)
    }

    /// The stock `_ensure_fd_no_transport`: RuntimeError if a transport that is not
    /// closing owns `fd` (an int or an object with `fileno()`), ValueError for an object
    /// that has no usable `fileno()`.
    pub(crate) fn ensure_fd_no_transport(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let fileno = fileobj_to_int(fd)?;
        let transports = slf.getattr(crate::intern!(py, "_transports"))?;
        let transport = if transports.is_exact_instance(interop::weak_value_dictionary(py)?) {
            // Its own dict of weak references, read directly: what `transports[fileno]`
            // finds, without the Python frames of WeakValueDictionary's methods.
            let data = transports.getattr(crate::intern!(py, "data"))?;
            match data.cast::<PyDict>()?.get_item(&fileno)? {
                Some(r) => Some(r.call0()?),
                None => None,
            }
        } else {
            Some(transports.call_method1(crate::intern!(py, "get"), (&fileno,))?)
        };
        let Some(transport) = transport.filter(|t| !t.is_none()) else {
            return Ok(());
        };
        if transport
            .call_method0(crate::intern!(py, "is_closing"))?
            .is_truthy()?
        {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(format!(
            "File descriptor {} is used by transport {}",
            fd.repr()?,
            transport.repr()?
        )))
    }
}

#[pymethods]
impl LoopCore {
    fn _ensure_fd_no_transport(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::ensure_fd_no_transport(slf, fd)
    }

    /// The stock `add_reader`: `_ensure_fd_no_transport`, then `_add_reader`.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_checked(slf, Side::Read, fd, callback, args)
    }

    /// The stock `add_writer`: `_ensure_fd_no_transport`, then `_add_writer`.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_checked(slf, Side::Write, fd, callback, args)
    }

    /// The stock `remove_reader`: `_ensure_fd_no_transport`, then `_remove_reader`.
    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::ensure_fd_no_transport(slf, fd)?;
        slf.get().remove_watcher(Side::Read, fd)
    }

    /// The stock `remove_writer`: `_ensure_fd_no_transport`, then `_remove_writer`.
    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::ensure_fd_no_transport(slf, fd)?;
        slf.get().remove_watcher(Side::Write, fd)
    }
}

#[pymethods]
impl LoopCore {
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.add_watcher(py, Side::Read, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.add_watcher(py, Side::Write, fd, callback, args, false)
    }

    fn _remove_reader(&self, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_watcher(Side::Read, fd)
    }

    fn _remove_writer(&self, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_watcher(Side::Write, fd)
    }

    /// `(events mask, reader handle, writer handle, file object registered)` for a
    /// watched fd, else None (also for an fd too large for a C int, which no watched fd
    /// can be).
    #[allow(clippy::type_complexity)]
    fn _io_key(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
    ) -> PyResult<
        Option<(
            u8,
            Option<Py<Handle>>,
            Option<Py<Handle>>,
            Option<Py<PyAny>>,
        )>,
    > {
        let Some(fd) = fileobj_to_fd(fd)? else {
            return Ok(None);
        };
        let watchers = lock(&self.watchers);
        let Some(w) = watchers.get(&fd) else {
            return Ok(None);
        };
        let mut mask = 0;
        if w.reader.is_some() {
            mask |= EVENT_READ;
        }
        if w.writer.is_some() {
            mask |= EVENT_WRITE;
        }
        Ok(Some((
            mask,
            w.reader.as_ref().map(|h| h.clone_ref(py)),
            w.writer.as_ref().map(|h| h.clone_ref(py)),
            w.fileobj.as_ref().map(|o| o.clone_ref(py)),
        )))
    }

    /// Every watched fd.
    fn _io_fds(&self) -> Vec<RawFd> {
        lock(&self.watchers).keys().copied().collect()
    }
}
