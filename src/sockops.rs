//! `sock_recv`, `sock_recv_into` and `sock_sendall` for a plain non-blocking
//! `socket.socket`, without a Python frame: the stock method's first attempt (a `recv`
//! or `send` that would block is an answer, not a BlockingIOError raised and caught),
//! and, when the socket is not ready, its wait. The wait is the stock one: a future, an
//! fd watcher (`SockWait`) that tries again on each readiness until it settles the
//! future, and a done callback on the future (the same `SockWait`) that removes the
//! watcher if it is still the fd's, as the stock `_sock_read_done`/`_sock_write_done` do.
//!
//! Each `_sock_*_native` method returns the result, the future to await, or
//! `NotImplemented` for what it leaves to the stock method (see `_loop.py`): a socket of
//! another class (a subclass may override `recv` or `send`), one with a timeout, a
//! closed one, a size or buffer out of the ordinary, data that is not `bytes`.
//!
//! The watcher reads and writes the socket's number, so before each attempt it looks
//! at the socket object: closed since (its number maybe another file's by now), the
//! attempt goes through the object, which fails as on the stock loop (EBADF).

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::intern;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyInt, PyMemoryView, PyString};
use pyo3::PyTraverseError;
use weaveloop_engine::net::{self, Received};

use crate::errors;
use crate::gil::GilCell;
use crate::interop;
use crate::io::Side;
use crate::loop_core::{new_future, LoopCore};
use crate::run::is_fatal;
use crate::transport::{with_recv_buffer, WritableBuffer, RECV_MAX};

/// What a wait is for, with what it needs to try again.
enum Op {
    /// `sock_recv(sock, n)`.
    Recv(usize),
    /// `sock_recv_into(sock, buf)`.
    RecvInto(Py<PyAny>),
    /// `sock_sendall(sock, data)`, `sent` bytes of it gone out so far.
    SendAll {
        data: Py<PyBytes>,
        sent: GilCell<usize>,
    },
}

/// What one attempt gave.
enum Attempt<'py> {
    /// The operation's result (bytes, a count, None).
    Done(Bound<'py, PyAny>),
    /// The socket is not ready: wait for the next readiness.
    NotNow,
    /// The operation failed: the future's exception.
    Failed(PyErr),
}

/// A plain `socket.socket` with no timeout, open, whose `method` is the C one: its fd.
/// (None: the stock method.)
fn plain_nonblocking(
    sock: &Bound<'_, PyAny>,
    method: &Bound<'_, PyString>,
) -> PyResult<Option<RawFd>> {
    if !plain_without_timeout(sock, method)? {
        return Ok(None);
    }
    open_fd(sock)
}

/// Whether `sock` is a plain `socket.socket` with no timeout whose `method` is the C
/// one. Runs no Python code (the type is exactly socket's, whose methods are then C).
fn plain_without_timeout(sock: &Bound<'_, PyAny>, method: &Bound<'_, PyString>) -> PyResult<bool> {
    let py = sock.py();
    if !sock.get_type().is(interop::socket_type(py)?) || !c_method(sock, method)? {
        return Ok(false);
    }
    let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
    Ok(timeout.cast::<PyFloat>().is_ok_and(|t| t.value() == 0.0))
}

/// Whether `sock`'s class has `_socket.socket`'s own `method`, not one put in its place
/// on `socket.socket` (`mock.patch.object(socket.socket, "recv", ...)`, as tests do to
/// make a read fail): the stock methods call that one.
fn c_method(sock: &Bound<'_, PyAny>, method: &Bound<'_, PyString>) -> PyResult<bool> {
    let own = interop::c_socket_type(sock.py())?.getattr(method)?;
    Ok(sock.get_type().getattr(method)?.is(&own))
}

/// The socket object's fd, None once it is closed (`fileno()` -1).
fn open_fd(sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let fileno: i64 = sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?;
    Ok(RawFd::try_from(fileno).ok().filter(|fd| *fd >= 0))
}

/// Reads of this many bytes or more make the loop's `sock_recv` go to the stock method
/// (see `LoopCore::large_sock_reads`)...
const LARGE_READ: usize = 64 * 1024;

/// ...until this many smaller reads in a row. (A large message often comes in a few
/// reads, the last one small: one small read is no sign that reads are small now.)
const SMALL_READS_BACK: usize = 16;

/// One `recv` of up to `n` bytes through the buffer the process shares, what came
/// copied out; `large` is set (to SMALL_READS_BACK) when that was LARGE_READ bytes or
/// more.
fn recv_bytes<'py>(
    py: Python<'py>,
    socket: BorrowedFd<'_>,
    n: usize,
    large: &AtomicUsize,
) -> Attempt<'py> {
    with_recv_buffer(py, n, |buf| match net::recv_now(socket, buf) {
        Ok(Received::Data(got)) => {
            if got >= LARGE_READ {
                large.store(SMALL_READS_BACK, Relaxed);
            }
            Attempt::Done(PyBytes::new(py, &buf[..got]).into_any())
        }
        Ok(Received::Eof) => Attempt::Done(PyBytes::new(py, b"").into_any()),
        Ok(Received::NotNow) => Attempt::NotNow,
        Err(e) => Attempt::Failed(errors::os_error(e)),
    })
}

/// `buf`'s memory for a `recv_into`, exported until dropped; None if it exports no
/// writable contiguous memory, or none at all (the stock method). Getting it may run
/// Python code (a class's `__buffer__`, Python 3.12+), so it is got before the socket
/// object is looked at, and what that code does to the socket is seen there.
fn writable(buf: &Bound<'_, PyAny>) -> Option<WritableBuffer> {
    let mut view = WritableBuffer::get(buf)?;
    (!view.memory().is_empty()).then_some(view)
}

/// One `recv` into `view`'s memory.
fn recv_into<'py>(
    py: Python<'py>,
    socket: BorrowedFd<'_>,
    view: &mut WritableBuffer,
) -> Attempt<'py> {
    match net::recv_uninit_now(socket, view.memory()) {
        Ok(Received::Data(got)) => Attempt::Done(PyInt::new(py, got).into_any()),
        Ok(Received::Eof) => Attempt::Done(PyInt::new(py, 0).into_any()),
        Ok(Received::NotNow) => Attempt::NotNow,
        Err(e) => Attempt::Failed(errors::os_error(e)),
    }
}

/// The stock answer to a Python-level attempt: BlockingIOError and InterruptedError mean
/// try again later; KeyboardInterrupt and SystemExit are raised; anything else fails the
/// operation.
fn stock_outcome<'py>(py: Python<'py>, r: PyResult<Bound<'py, PyAny>>) -> PyResult<Attempt<'py>> {
    match r {
        Ok(v) => Ok(Attempt::Done(v)),
        Err(e)
            if e.is_instance_of::<PyBlockingIOError>(py)
                || e.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(Attempt::NotNow)
        }
        Err(e) if is_fatal(py, &e) => Err(e),
        Err(e) => Ok(Attempt::Failed(e)),
    }
}

/// A socket operation waiting for its socket: the fd watcher that tries it again on
/// each readiness (called with no argument), and its future's done callback (called
/// with the future). Holds the future until it is done.
#[pyclass(module = "weaveloop._core", frozen)]
pub struct SockWait {
    fut: GilCell<Option<Py<PyAny>>>,
    sock: Py<PyAny>,
    fd: RawFd,
    op: Op,
    /// The loop's `large_sock_reads`.
    large: Arc<AtomicUsize>,
}

impl SockWait {
    fn side(&self) -> Side {
        match self.op {
            Op::Recv(_) | Op::RecvInto(_) => Side::Read,
            Op::SendAll { .. } => Side::Write,
        }
    }

    /// The socket method the stock attempt calls.
    fn method<'py>(&self, py: Python<'py>) -> &Bound<'py, PyString> {
        match self.op {
            Op::Recv(_) => intern!(py, "recv"),
            Op::RecvInto(_) => intern!(py, "recv_into"),
            Op::SendAll { .. } => intern!(py, "send"),
        }
    }

    /// One attempt at the operation, with the socket's number if its object is still
    /// open on it, else through the object as the stock `_sock_recv` & co. do.
    fn attempt<'py>(&self, py: Python<'py>) -> PyResult<Attempt<'py>> {
        let mut view = match &self.op {
            Op::RecvInto(buf) => match writable(buf.bind(py)) {
                Some(view) => Some(view),
                None => return self.stock_attempt(py),
            },
            _ => None,
        };
        let sock = self.sock.bind(py);
        if !c_method(sock, self.method(py))? || open_fd(sock)? != Some(self.fd) {
            drop(view);
            return self.stock_attempt(py);
        }
        // SAFETY: `fd` is the socket's: its object was just seen open on it, and nothing
        // since ran Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        Ok(match &self.op {
            Op::Recv(n) => recv_bytes(py, socket, *n, &self.large),
            Op::RecvInto(_) => match view.as_mut() {
                Some(view) => recv_into(py, socket, view),
                None => return self.stock_attempt(py), // (not reached: got above)
            },
            Op::SendAll { data, sent } => {
                let data = data.bind(py).as_bytes();
                let from = sent.with(py, |s| *s);
                match net::send_now(socket, &data[from..]) {
                    Ok(Some(n)) => self.sent(py, from + n, data.len()),
                    Ok(None) => Attempt::NotNow,
                    Err(e) => Attempt::Failed(errors::os_error(e)),
                }
            }
        })
    }

    /// The attempt as the stock loop makes it, through the socket object's methods.
    fn stock_attempt<'py>(&self, py: Python<'py>) -> PyResult<Attempt<'py>> {
        let sock = self.sock.bind(py);
        match &self.op {
            Op::Recv(n) => stock_outcome(py, sock.call_method1(intern!(py, "recv"), (*n,))),
            Op::RecvInto(buf) => {
                stock_outcome(py, sock.call_method1(intern!(py, "recv_into"), (buf,)))
            }
            Op::SendAll { data, sent } => {
                let from = sent.with(py, |s| *s);
                let view = PyMemoryView::from(data.bind(py).as_any())?;
                let rest =
                    view.get_item(pyo3::types::PySlice::new(py, from as isize, isize::MAX, 1))?;
                match stock_outcome(py, sock.call_method1(intern!(py, "send"), (rest,)))? {
                    Attempt::Done(n) => {
                        let total = data.bind(py).as_bytes().len();
                        Ok(self.sent(py, from + n.extract::<usize>()?, total))
                    }
                    other => Ok(other),
                }
            }
        }
    }

    /// `sendall`'s progress: done once all of it is out.
    fn sent<'py>(&self, py: Python<'py>, sent: usize, total: usize) -> Attempt<'py> {
        if let Op::SendAll { sent: s, .. } = &self.op {
            s.with(py, |s| *s = sent);
        }
        if sent >= total {
            Attempt::Done(py.None().into_bound(py))
        } else {
            Attempt::NotNow
        }
    }

    /// The socket is ready: the stock `_sock_recv`/`_sock_recv_into`/`_sock_sendall`;
    /// once the operation is done, its watcher goes at once (the stock one goes in the
    /// future's done callback, in the next iteration: after a poll, which would have
    /// re-armed the one-shot registration for nothing; see `poller::Interest::once`).
    fn ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(fut) = this.fut.with(py, |f| f.as_ref().map(|f| f.clone_ref(py))) else {
            return Ok(());
        };
        let fut = fut.bind(py);
        // (A cancellation may have been scheduled in the previous iteration.)
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let settled = match this.attempt(py)? {
            Attempt::NotNow => return Ok(()),
            Attempt::Done(v) => fut.call_method1(intern!(py, "set_result"), (v,)),
            Attempt::Failed(e) => {
                fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))
            }
        };
        Self::unwatch(slf, fut, false)?;
        settled.map(drop)
    }

    /// The future is done: the stock `_sock_read_done`/`_sock_write_done`.
    fn done(slf: &Bound<'_, Self>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        let held = slf.get().fut.with(slf.py(), Option::take);
        drop(held);
        Self::unwatch(slf, fut, true)
    }

    /// Removes the fd's watcher unless it was replaced or removed meanwhile (the stock
    /// loop asks its handle: `not handle.cancelled()`); `as_stock`: through the checks
    /// of the stock `remove_reader`/`remove_writer` (`_ensure_fd_no_transport`).
    fn unwatch(slf: &Bound<'_, Self>, fut: &Bound<'_, PyAny>, as_stock: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = fut.call_method0(intern!(py, "get_loop"))?;
        let event_loop = event_loop.cast::<LoopCore>()?;
        let side = this.side();
        if !event_loop
            .get()
            .watcher_calls(py, side, this.fd, slf.as_any())
        {
            return Ok(());
        }
        let fd = this.fd.into_pyobject(py)?.into_any();
        if as_stock {
            LoopCore::ensure_fd_no_transport(event_loop, &fd)?;
        }
        event_loop.get().remove_watcher(side, &fd)?;
        Ok(())
    }
}

#[pymethods]
impl SockWait {
    #[pyo3(signature = (fut = None))]
    fn __call__(slf: &Bound<'_, Self>, fut: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match fut {
            None => Self::ready(slf),
            Some(fut) => Self::done(slf, fut),
        }
    }

    /// The stock method this watcher stands in for, as a report of its error names it.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        match self.op {
            Op::Recv(_) => "BaseSelectorEventLoop._sock_recv",
            Op::RecvInto(_) => "BaseSelectorEventLoop._sock_recv_into",
            Op::SendAll { .. } => "BaseSelectorEventLoop._sock_sendall",
        }
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        let qualname = self.__qualname__();
        qualname.rsplit('.').next().unwrap_or(qualname)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(fut) = self.fut.peek_in_gc() {
            visit.call(fut)?;
        }
        visit.call(&self.sock)?;
        match &self.op {
            Op::Recv(_) => Ok(()),
            Op::RecvInto(buf) => visit.call(buf),
            Op::SendAll { data, .. } => visit.call(data),
        }
    }
}

impl LoopCore {
    /// A first attempt's outcome: its result, its error, or the stock method's wait for
    /// the socket to try `op()` again.
    fn done_or_wait<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        attempt: Attempt<'py>,
        op: impl FnOnce() -> Op,
    ) -> PyResult<Bound<'py, PyAny>> {
        match attempt {
            Attempt::Done(v) => Ok(v),
            Attempt::Failed(e) => Err(e),
            Attempt::NotNow => Self::sock_wait(slf, sock, fd, op()),
        }
    }

    /// The wait of the stock method: a future, the fd watcher, the done callback.
    fn sock_wait<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        op: Op,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let fut = new_future(slf.as_any())?;
        let fd_obj = fd.into_pyobject(py)?.into_any();
        Self::ensure_fd_no_transport(slf, &fd_obj)?;
        let wait = SockWait {
            fut: GilCell::new(Some(fut.clone().unbind())),
            sock: sock.clone().unbind(),
            fd,
            op,
            large: slf.get().large_sock_reads.clone(),
        };
        let side = wait.side();
        let wait = Bound::new(py, wait)?.into_any();
        let no_args = pyo3::types::PyTuple::empty(py);
        slf.get()
            .add_watcher(py, side, &fd_obj, &wait, &no_args, true)?;
        fut.call_method1(intern!(py, "add_done_callback"), (&wait,))?;
        Ok(fut)
    }
}

#[pymethods]
impl LoopCore {
    /// A read of the stock `sock_recv` of `size` bytes, while the loop's reads are large
    /// (see `large_sock_reads`): a large one keeps them so, SMALL_READS_BACK smaller ones
    /// in a row give them back to the Rust path.
    fn _stock_sock_read(&self, size: usize) {
        if size >= LARGE_READ {
            self.large_sock_reads.store(SMALL_READS_BACK, Relaxed);
        } else {
            let _ = self
                .large_sock_reads
                .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1));
        }
    }

    /// `sock_recv(sock, n)` for a plain non-blocking socket: the bytes received, the
    /// future to await, or NotImplemented (the stock method; also while the loop's reads
    /// are large, see `LoopCore::large_sock_reads`).
    fn _sock_recv_native<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let not_here = py.NotImplemented().into_bound(py);
        if slf.get().large_sock_reads.load(Relaxed) != 0 {
            return Ok(not_here);
        }
        let Some(n) = n
            .cast_exact::<PyInt>()
            .ok()
            .and_then(|n| n.extract::<usize>().ok())
            .filter(|n| (1..=RECV_MAX).contains(n))
        else {
            return Ok(not_here);
        };
        let Some(fd) = plain_nonblocking(sock, intern!(py, "recv"))? else {
            return Ok(not_here);
        };
        // SAFETY: `plain_nonblocking` has just seen the socket object open on `fd`, and
        // nothing since ran Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let attempt = recv_bytes(py, socket, n, &slf.get().large_sock_reads);
        Self::done_or_wait(slf, sock, fd, attempt, || Op::Recv(n))
    }

    /// `sock_recv_into(sock, buf)` for a plain non-blocking socket: the count received,
    /// the future to await, or NotImplemented (the stock method).
    fn _sock_recv_into_native<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        buf: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let not_here = py.NotImplemented().into_bound(py);
        if !plain_without_timeout(sock, intern!(py, "recv_into"))? {
            return Ok(not_here);
        }
        // The buffer before the socket's fd: a class's `__buffer__` (3.12+) runs Python
        // code, which may close the socket and give its number to another file.
        let Some(mut view) = writable(buf) else {
            return Ok(not_here);
        };
        let Some(fd) = open_fd(sock)? else {
            // Closed, before the call or by that code: what the stock method's
            // `recv_into` raises then, without getting the buffer a second time.
            return Err(errors::os_error(io::Error::from_raw_os_error(libc::EBADF)));
        };
        // SAFETY: as in `_sock_recv_native` (the buffer was got before the look).
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let attempt = recv_into(py, socket, &mut view);
        drop(view);
        Self::done_or_wait(slf, sock, fd, attempt, || {
            Op::RecvInto(buf.clone().unbind())
        })
    }

    /// `sock_sendall(sock, data)` for a plain non-blocking socket and `bytes`: None once
    /// all of it went out at once, else the future to await; or NotImplemented (the
    /// stock method).
    fn _sock_sendall_native<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let not_here = py.NotImplemented().into_bound(py);
        let Ok(bytes) = data.cast_exact::<PyBytes>() else {
            return Ok(not_here);
        };
        let buf = bytes.as_bytes();
        if buf.is_empty() {
            return Ok(not_here);
        }
        let Some(fd) = plain_nonblocking(sock, intern!(py, "send"))? else {
            return Ok(not_here);
        };
        // SAFETY: as in `_sock_recv_native`.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let sent = match net::send_now(socket, buf) {
            Ok(Some(n)) if n == buf.len() => return Ok(py.None().into_bound(py)),
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(e) => return Err(errors::os_error(e)),
        };
        let op = Op::SendAll {
            data: bytes.clone().unbind(),
            sent: GilCell::new(sent),
        };
        Self::sock_wait(slf, sock, fd, op)
    }
}
