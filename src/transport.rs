//! The socket transport's hot paths in Rust.
//!
//! `SocketReader` is what a weaveloop socket transport registers as its reader instead
//! of the bound `_read_ready` method. For a protocol read through `data_received` it
//! does what the stock `_read_ready__data_received` does — skip a transport whose
//! connection is lost, one `recv(max_size)`, EOF to `_read_ready__on_eof()`, a failure
//! or a raising protocol to `_fatal_error()` with the stock messages — without a Python
//! frame, reading into one process-wide buffer and copying out only what arrived (or,
//! while reads are large, straight into the bytes object handed over: see
//! `DIRECT_READ_MIN`).
//! For a buffered protocol it does what `_read_ready__get_buffer` does, receiving into
//! the protocol's buffer from Rust. An unusual `max_size` goes through the transport's
//! own Python method.
//!
//! `SocketWriter` is the transport's `write` (an instance attribute, in front of the
//! class's method): for `bytes` written while nothing is buffered, the stock `write`'s
//! checks and its attempt to send at once, and what is left buffered and the writer
//! registered as the stock one does; anything else (other bytes-like types, a write
//! behind buffered data, after `write_eof()`, during `sendfile`, on a lost connection)
//! goes to the class's `write`.
//!
//! `DatagramReader` is an IPv4 datagram transport's reader: the stock `_read_ready`.
//! `DatagramWriter` is its `sendto` (an instance attribute, as `SocketWriter` is): for
//! `bytes` sent while nothing is buffered, to the connected peer or to a numeric IPv4
//! address, the stock `sendto`'s attempt to send at once, and an OSError to the
//! protocol's `error_received`; anything else goes to the class's `sendto`.
//!
//! They read and write the socket's number, not the socket object, so each looks first
//! at the object (`holds_its_socket`): its owner may have closed it (a socket passed in
//! with `sock=`) and the number may be another file's by now. The writers also check
//! rule 5 before sending anything.

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::intern;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyInt, PyMemoryView, PySlice, PyString, PyTuple};
use pyo3::PyTraverseError;
use weaveloop_engine::net::{self, Received};

use crate::errors;
use crate::gil::GilCell;
use crate::interop;
use crate::loop_core::LoopCore;
use crate::run::is_fatal;

/// The largest `max_size` read through the shared buffer (the stock transports' own
/// `max_size` is 256 KiB); a larger one reads as the stock transport does.
pub(crate) const RECV_MAX: usize = 256 * 1024;

/// The receive buffer every reader of the process shares: it is only used between a
/// `recv` and the copy of what arrived, with the GIL held and no Python code run.
static RECV_BUFFER: GilCell<Vec<u8>> = GilCell::new(Vec::new());

/// Runs `read` on the first `max_size` (at most RECV_MAX) bytes of the shared receive
/// buffer. `read` may make the bytes object of what arrived (a bytes object is not
/// tracked by the GC: allocating it runs no Python code) but must not run Python code.
pub(crate) fn with_recv_buffer<R>(
    py: Python<'_>,
    max_size: usize,
    read: impl FnOnce(&mut [u8]) -> R,
) -> R {
    RECV_BUFFER.with(py, |buf| {
        if buf.len() < RECV_MAX {
            buf.resize(RECV_MAX, 0);
        }
        read(&mut buf[..max_size])
    })
}

/// What the transport's Rust parts share besides their work: a repr naming the
/// transport, the name of the stock method each one stands in for (`__qualname__` and
/// `__name__`, which asyncio's reports of a callback's error show: "Exception in callback
/// _SelectorDatagramTransport._read_ready()", as on the stock loop), and the reference
/// to the transport shown to the GC (the transport holds its part in its `__dict__`: a
/// cycle).
macro_rules! of_transport {
    ($ty:ident, $class:literal, $method:literal $(, $also:ident)*) => {
        #[pymethods]
        impl $ty {
            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                let transport = self.transport.bind(py).repr()?;
                Ok(format!(concat!("<", stringify!($ty), " of {}>"), transport))
            }

            #[getter]
            fn __qualname__(&self) -> &'static str {
                concat!($class, ".", $method)
            }

            #[getter]
            fn __name__(&self) -> &'static str {
                $method
            }

            fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
                visit.call(&self.transport)?;
                $(visit.call(&self.$also)?;)*
                Ok(())
            }
        }
    };
}

/// The transport's `max_size`, if a read of that many bytes goes through the shared
/// buffer (an int within 1..=RECV_MAX); None: the transport reads as the stock one does.
fn read_size(transport: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    let size = transport.getattr(intern!(transport.py(), "max_size"))?;
    Ok(size
        .extract::<usize>()
        .ok()
        .filter(|n| (1..=RECV_MAX).contains(n)))
}

/// `transport._fatal_error(exc, message)`, as the stock transport reports a failed read
/// or write: from its `except` clause, where `exc` is the exception being handled (what
/// the debug-mode log of an OSError shows with `exc_info=True`).
fn fatal(transport: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
    let py = transport.py();
    let exc = err.into_value(py).into_bound(py);
    interop::while_handling(exc.as_any(), || {
        let message = PyString::new(py, message);
        interop::call_method(transport, intern!(py, "_fatal_error"), &[&exc, &message])
    })?;
    Ok(())
}

/// What one read came to, once out of the shared buffer.
enum Outcome<'py> {
    Data(Bound<'py, PyBytes>),
    Eof,
    NotNow,
    Failed(std::io::Error),
}

/// After a read of at least this many bytes, a reader asks how much is waiting before
/// its next read, and when that is this much or more, receives it straight into the
/// bytes object it hands over instead of copying it out of the shared buffer: one more
/// syscall per read, worth it only when it saves a copy this large.
const DIRECT_READ_MIN: usize = 64 * 1024;

#[pyclass(module = "weaveloop._core", frozen)]
pub struct SocketReader {
    transport: Py<PyAny>,
    fd: RawFd,
    /// The protocol is read through `data_received` (not a `BufferedProtocol`); set by
    /// the transport's `set_protocol`.
    direct: AtomicBool,
    /// The last read was DIRECT_READ_MIN bytes or more.
    large: AtomicBool,
}

impl SocketReader {
    /// One `recv` of up to `max_size` bytes: into the shared buffer, or after a large
    /// read, when a large read is waiting, into a bytes object of its size. Called right
    /// after `holds_its_socket`.
    fn receive<'py>(&self, py: Python<'py>, max_size: usize) -> PyResult<Outcome<'py>> {
        // SAFETY: `fd` is the transport's socket: the caller has just seen its socket
        // object open on it (`holds_its_socket`), and nothing since ran Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        if self.large.load(Relaxed) {
            // (Where FIONREAD fails, the read goes through the shared buffer.)
            let waiting = net::pending(socket).unwrap_or(0).min(max_size);
            if waiting >= DIRECT_READ_MIN {
                return receive_into_bytes(py, socket, waiting);
            }
        }
        let outcome = with_recv_buffer(py, max_size, |buf| match net::recv(socket, buf) {
            Ok(Received::Data(n)) => Outcome::Data(PyBytes::new(py, &buf[..n])),
            Ok(Received::Eof) => Outcome::Eof,
            Ok(Received::NotNow) => Outcome::NotNow,
            Err(e) => Outcome::Failed(e),
        });
        let large =
            matches!(&outcome, Outcome::Data(data) if data.as_bytes().len() >= DIRECT_READ_MIN);
        self.large.store(large, Relaxed);
        Ok(outcome)
    }

    /// For a `BufferedProtocol`: the stock `_read_ready__get_buffer` — skip a transport
    /// whose connection is lost, `get_buffer(-1)` (an empty one is an error), one `recv`
    /// into it, EOF to `_read_ready__on_eof()`, `buffer_updated(n)`, failures to
    /// `_fatal_error()` with the stock messages — with the `recv` made from Rust.
    fn read_buffered(&self, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = transport.py();
        if transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
        let protocol = transport.getattr(intern!(py, "_protocol"))?;
        let buf = match get_buffer(&protocol) {
            Ok(buf) => buf,
            Err(e) if is_fatal(py, &e) => return Err(e),
            Err(e) => {
                return fatal(
                    transport,
                    e,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let received = match self.recv_into(transport, &buf) {
            Ok(received) => received,
            Err(e) if is_fatal(py, &e) => return Err(e),
            Err(e) => return fatal(transport, e, "Fatal read error on socket transport"),
        };
        match received {
            Received::NotNow => Ok(()),
            Received::Eof => {
                interop::call_method(transport, intern!(py, "_read_ready__on_eof"), &[])?;
                Ok(())
            }
            // The protocol as it is now, as the stock transport reads `self._protocol`
            // again: `get_buffer()` may have set another one.
            Received::Data(n) => {
                match transport
                    .getattr(intern!(py, "_protocol"))
                    .and_then(|protocol| {
                        let n = n.into_pyobject(py)?.into_any();
                        interop::call_method(&protocol, intern!(py, "buffer_updated"), &[&n])
                    }) {
                    Ok(_) => Ok(()),
                    Err(e) if is_fatal(py, &e) => Err(e),
                    Err(e) => fatal(
                        transport,
                        e,
                        "Fatal error: protocol.buffer_updated() call failed.",
                    ),
                }
            }
        }
    }

    /// One `recv` into `buf`, a writable contiguous buffer; anything else is read as the
    /// stock transport reads it, with `sock.recv_into(buf)` (which raises what it raises).
    fn recv_into(
        &self,
        transport: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<Received> {
        let py = transport.py();
        // The buffer first: exporting it may run Python code (a class's `__buffer__`,
        // Python 3.12+). Then a second look at the socket: `get_buffer()` and that code
        // ran since the first.
        let view = WritableBuffer::get(buf);
        let view = match view {
            Some(view) if holds_its_socket(transport, self.fd)? => Some(view),
            _ => None,
        };
        let Some(mut view) = view else {
            let sock = transport.getattr(intern!(py, "_sock"))?;
            return match interop::call_method(&sock, intern!(py, "recv_into"), &[buf]) {
                Ok(n) => Ok(match n.extract::<usize>()? {
                    0 => Received::Eof,
                    n => Received::Data(n),
                }),
                Err(e)
                    if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                        || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) =>
                {
                    Ok(Received::NotNow)
                }
                Err(e) => Err(e),
            };
        };
        // SAFETY: `fd` is the transport's socket: `holds_its_socket` has just seen its
        // socket object open on it, after the buffer was exported, and nothing since ran
        // Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        // (get_buffer() returned a buffer whose len() is not 0, so it has memory: a
        // read of nothing cannot be taken for end of file.)
        net::recv_uninit(socket, view.memory()).map_err(errors::os_error)
    }
}

/// `protocol.get_buffer(-1)`, refused as the stock transport refuses an empty one.
fn get_buffer<'py>(protocol: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = protocol.py();
    let any_size = (-1i32).into_pyobject(py)?.into_any();
    let buf = interop::call_method(protocol, intern!(py, "get_buffer"), &[&any_size])?;
    if buf.len()? == 0 {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "get_buffer() returned an empty buffer",
        ));
    }
    Ok(buf)
}

/// The memory of an object that exports a writable contiguous buffer (what `recv_into`
/// asks for), held until dropped.
pub(crate) struct WritableBuffer(pyo3::ffi::Py_buffer);

impl WritableBuffer {
    /// None if the object exports no such buffer (its error is discarded).
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> Option<Self> {
        let mut view = MaybeUninit::<pyo3::ffi::Py_buffer>::uninit();
        // SAFETY: the GIL is held (a Bound), and `view` is memory for one Py_buffer,
        // which PyObject_GetBuffer fills on success.
        let rc = unsafe {
            pyo3::ffi::PyObject_GetBuffer(
                obj.as_ptr(),
                view.as_mut_ptr(),
                pyo3::ffi::PyBUF_WRITABLE,
            )
        };
        if rc < 0 {
            drop(PyErr::fetch(obj.py()));
            return None;
        }
        // SAFETY: PyObject_GetBuffer succeeded, so `view` is filled in.
        Some(WritableBuffer(unsafe { view.assume_init() }))
    }

    pub(crate) fn memory(&mut self) -> &mut [MaybeUninit<u8>] {
        let len = usize::try_from(self.0.len).unwrap_or(0);
        if len == 0 {
            return &mut [];
        }
        // SAFETY: a PyBUF_WRITABLE request without PyBUF_ND/STRIDES gives one contiguous
        // writable block of `len` bytes at `buf`, exported until PyBuffer_Release; the
        // GIL is held while the reader uses it and nothing else writes it meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.0.buf.cast::<MaybeUninit<u8>>(), len) }
    }
}

impl Drop for WritableBuffer {
    fn drop(&mut self) {
        // SAFETY: the buffer was exported by PyObject_GetBuffer and not released yet;
        // the GIL is held (a WritableBuffer lives within a reader's call).
        unsafe { pyo3::ffi::PyBuffer_Release(&mut self.0) }
    }
}

/// One `recv` of up to `size` bytes straight into a new bytes object of that size (cut
/// down, by a copy, in the unusual case that fewer arrive).
fn receive_into_bytes<'py>(
    py: Python<'py>,
    socket: BorrowedFd<'_>,
    size: usize,
) -> PyResult<Outcome<'py>> {
    debug_assert!(size <= RECV_MAX);
    // (At most RECV_MAX: no overflow.)
    let len = size as pyo3::ffi::Py_ssize_t;
    // SAFETY: with a null pointer, PyBytes_FromStringAndSize makes a new bytes object of
    // `len` bytes whose contents are not initialised yet; the GIL is held.
    let raw = unsafe { pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len) };
    if raw.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `raw` is a new, owned reference to a bytes object.
    let bytes = unsafe { Bound::from_owned_ptr(py, raw).cast_into_unchecked::<PyBytes>() };
    // SAFETY: the object's buffer holds `size` bytes (plus its trailing NUL), nothing else
    // has seen the object yet, and MaybeUninit<u8> has u8's layout; only recv writes it.
    let buf = unsafe {
        let start = pyo3::ffi::PyBytes_AsString(raw).cast::<MaybeUninit<u8>>();
        std::slice::from_raw_parts_mut(start, size)
    };
    Ok(match net::recv_uninit(socket, buf) {
        Ok(Received::Data(n)) if n == size => Outcome::Data(bytes),
        Ok(Received::Data(n)) => {
            // SAFETY: recv initialised the first n bytes.
            let got = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            Outcome::Data(PyBytes::new(py, got))
        }
        Ok(Received::Eof) => Outcome::Eof,
        Ok(Received::NotNow) => Outcome::NotNow,
        Err(e) => Outcome::Failed(e),
    })
}

#[pymethods]
impl SocketReader {
    #[new]
    fn new(transport: Py<PyAny>, fd: RawFd) -> Self {
        SocketReader {
            transport,
            fd,
            direct: AtomicBool::new(true),
            large: AtomicBool::new(false),
        }
    }

    #[getter]
    fn direct(&self) -> bool {
        self.direct.load(Relaxed)
    }

    #[setter]
    fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Relaxed);
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let transport = self.transport.bind(py);
        if !self.direct.load(Relaxed) {
            return self.read_buffered(transport);
        }
        if transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
        let Some(max_size) = read_size(transport)? else {
            interop::call_method(transport, intern!(py, "_read_ready__data_received"), &[])?;
            return Ok(());
        };
        if !holds_its_socket(transport, self.fd)? {
            return stock_read_ready(transport);
        }
        match self.receive(py, max_size)? {
            Outcome::NotNow => Ok(()),
            Outcome::Eof => {
                interop::call_method(transport, intern!(py, "_read_ready__on_eof"), &[])?;
                Ok(())
            }
            Outcome::Failed(e) => fatal(
                transport,
                errors::os_error(e),
                "Fatal read error on socket transport",
            ),
            Outcome::Data(data) => {
                let protocol = transport.getattr(intern!(py, "_protocol"))?;
                match interop::call_method(&protocol, intern!(py, "data_received"), &[&data]) {
                    Ok(_) => Ok(()),
                    Err(e) if is_fatal(py, &e) => Err(e),
                    Err(e) => fatal(
                        transport,
                        e,
                        "Fatal error: protocol.data_received() call failed.",
                    ),
                }
            }
        }
    }
}

of_transport!(SocketReader, "_SelectorSocketTransport", "_read_ready");

/// An internet address as the socket module gives it: `(host, port)` for IPv4,
/// `(host, port, flowinfo, scope_id)` for IPv6.
fn address_tuple<'py>(py: Python<'py>, addr: Option<SocketAddr>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match addr {
        Some(SocketAddr::V4(a)) => (a.ip().to_string(), a.port()).into_pyobject(py)?.into_any(),
        Some(SocketAddr::V6(a)) => (a.ip().to_string(), a.port(), a.flowinfo(), a.scope_id())
            .into_pyobject(py)?
            .into_any(),
        None => py.None().into_bound(py),
    })
}

/// The datagram transport's reader, for IPv4 sockets (whose sender addresses read the
/// same from Rust as from the socket module): the stock `_read_ready` — skip a transport
/// whose connection is lost, one `recvfrom(max_size)`, an OSError to the protocol's
/// `error_received`, the datagram and its sender to `datagram_received` — reading into
/// the shared buffer. An unusual `max_size` reads through the class's `_read_ready`.
#[pyclass(module = "weaveloop._core", frozen)]
pub struct DatagramReader {
    transport: Py<PyAny>,
    fd: RawFd,
}

#[pymethods]
impl DatagramReader {
    #[new]
    fn new(transport: Py<PyAny>, fd: RawFd) -> Self {
        DatagramReader { transport, fd }
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let transport = self.transport.bind(py);
        if transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
        let max_size = match read_size(transport)? {
            Some(n) if holds_its_socket(transport, self.fd)? => n,
            _ => return stock_read_ready(transport),
        };
        // SAFETY: `fd` is the transport's socket: `holds_its_socket` has just seen its
        // socket object open on it, and nothing since ran Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let received = with_recv_buffer(py, max_size, |buf| {
            net::recv_from(socket, buf)
                .map(|r| r.map(|(n, from)| (PyBytes::new(py, &buf[..n]), from)))
        });
        let protocol = transport.getattr(intern!(py, "_protocol"))?;
        match received {
            Ok(None) => {}
            Ok(Some((data, from))) => {
                let from = address_tuple(py, from)?;
                let (data, from) = (data.into_any(), from.into_any());
                interop::call_method(&protocol, intern!(py, "datagram_received"), &[&data, &from])?;
            }
            Err(e) => error_received(&protocol, e)?,
        }
        Ok(())
    }
}

of_transport!(DatagramReader, "_SelectorDatagramTransport", "_read_ready");

/// `protocol.error_received(exc)` for a failed datagram read or send, called as the
/// stock transport calls it: from the `except` clause that caught `exc`.
fn error_received(protocol: &Bound<'_, PyAny>, e: std::io::Error) -> PyResult<()> {
    let py = protocol.py();
    let exc = errors::os_error(e).into_value(py).into_bound(py);
    interop::while_handling(exc.as_any(), || {
        interop::call_method(protocol, intern!(py, "error_received"), &[&exc])
    })?;
    Ok(())
}

/// A numeric IPv4 `(host, port)` as the socket module reads it without looking a name
/// up (`inet_pton` accepts every host Rust's parser does, as the same address); None for
/// anything else, which the stock `sendto` reads, looks up or refuses itself.
fn ipv4_address(addr: &Bound<'_, PyAny>) -> Option<SocketAddrV4> {
    let pair = addr.cast_exact::<PyTuple>().ok()?;
    if pair.len() != 2 {
        return None;
    }
    let host = pair.get_item(0).ok()?;
    let ip: Ipv4Addr = host
        .cast_exact::<PyString>()
        .ok()?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let port = pair.get_item(1).ok()?;
    let port: u16 = port.cast_exact::<PyInt>().ok()?.extract().ok()?;
    Some(SocketAddrV4::new(ip, port))
}

/// The `sendto` of an IPv4 datagram transport (see the module's doc).
#[pyclass(module = "weaveloop._core", frozen)]
pub struct DatagramWriter {
    transport: Py<PyAny>,
    fd: RawFd,
    /// The transport's loop: rule 5 is checked before anything is sent.
    event_loop: Py<LoopCore>,
    /// The socket has a peer (the transport's `_extra['peername']`, read once when it was
    /// made): the stock `sendto` then sends with `send`, to that peer.
    connected: bool,
}

impl DatagramWriter {
    /// The class's `sendto` (the stock one), for what this one does not do itself.
    fn stock(
        &self,
        transport: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = transport.py();
        let sendto = transport.get_type().getattr(intern!(py, "sendto"))?;
        let addr = match addr {
            Some(addr) => addr.clone(),
            None => py.None().into_bound(py),
        };
        interop::call_with_slice(&sendto, &[transport.as_ptr(), data.as_ptr(), addr.as_ptr()])?;
        Ok(())
    }

    /// Where the stock `sendto` would send `addr`'s datagram at once, with nothing to
    /// check or say first: Some(None) to the connected peer (no address given), Some(to)
    /// to a numeric IPv4 address (no address fixed at creation to check it against);
    /// None: ask the stock `sendto`. Also None unless `holds_its_socket_idle`.
    fn destination(
        &self,
        transport: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Option<SocketAddrV4>>> {
        let py = transport.py();
        let to = match addr {
            None if self.connected => None,
            Some(addr) if !self.connected => {
                if transport.getattr(intern!(py, "_address"))?.is_truthy()? {
                    return Ok(None);
                }
                match ipv4_address(addr) {
                    Some(to) => Some(to),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(holds_its_socket_idle(transport, self.fd)?.then_some(to))
    }
}

#[pymethods]
impl DatagramWriter {
    #[new]
    fn new(transport: Py<PyAny>, fd: RawFd, event_loop: Py<LoopCore>, connected: bool) -> Self {
        DatagramWriter {
            transport,
            fd,
            event_loop,
            connected,
        }
    }

    #[pyo3(signature = (data, addr=None))]
    fn __call__(&self, data: &Bound<'_, PyAny>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = data.py();
        // Before anything is sent (a send that blocks ends in registering the writer,
        // which checks too, but the stock `sendto` would have tried a send by then).
        self.event_loop.get().check_thread_strict()?;
        let transport = self.transport.bind(py);
        let Ok(bytes) = data.cast_exact::<PyBytes>() else {
            return self.stock(transport, data, addr);
        };
        let buf = bytes.as_bytes();
        if buf.is_empty() {
            return self.stock(transport, data, addr);
        }
        let Some(to) = self.destination(transport, addr)? else {
            return self.stock(transport, data, addr);
        };
        // SAFETY: `fd` is the transport's socket: `destination` has just seen its socket
        // object open on it (`holds_its_socket`), and nothing since ran Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let sent = match to {
            None => net::send(socket, buf),
            Some(to) => net::send_to(socket, buf, to),
        };
        match sent {
            Ok(Some(_)) => Ok(()),
            // Would block: nothing was sent. The stock `sendto` tries again, and on
            // blocking again registers its writer and buffers the datagram.
            Ok(None) => self.stock(transport, data, addr),
            Err(e) => error_received(&transport.getattr(intern!(py, "_protocol"))?, e),
        }
    }
}

of_transport!(
    DatagramWriter,
    "_SelectorDatagramTransport",
    "sendto",
    event_loop
);

#[pyclass(module = "weaveloop._core", frozen)]
pub struct SocketWriter {
    transport: Py<PyAny>,
    fd: RawFd,
    /// The transport's loop: rule 5 is checked before anything is sent.
    event_loop: Py<LoopCore>,
}

impl SocketWriter {
    /// The class's `write` (the stock one), for what this one does not do itself.
    fn stock(&self, transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = transport.py();
        let write = transport.get_type().getattr(intern!(py, "write"))?;
        interop::call_with_slice(&write, &[transport.as_ptr(), data.as_ptr()])?;
        Ok(())
    }

    /// Whether the stock `write` would try to send at once, with nothing to say first:
    /// not after `write_eof()`, not during `sendfile`, and `holds_its_socket_idle`.
    fn may_send_now(transport: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
        let py = transport.py();
        Ok(!transport.getattr(intern!(py, "_eof"))?.is_truthy()?
            && transport.getattr(intern!(py, "_empty_waiter"))?.is_none()
            && holds_its_socket_idle(transport, fd)?)
    }
}

/// What both writers ask before sending at once: the transport's connection is not
/// lost, nothing is buffered, and `holds_its_socket`.
fn holds_its_socket_idle(transport: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
    let py = transport.py();
    Ok(!transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()?
        && !transport.getattr(intern!(py, "_buffer"))?.is_truthy()?
        && holds_its_socket(transport, fd)?)
}

/// Whether the transport's socket object is still open on `fd`, the number its Rust
/// parts read and write; the check that makes their `BorrowedFd`s sound. A transport
/// closed once its buffer drained has let its socket go (`_sock` None, the fd closed)
/// with `_conn_lost` still 0, and a socket passed in with `sock=` may have been closed
/// by its owner meanwhile (`fileno()` -1): either way the number may be another file's
/// by now, and the stock path, through the socket object, fails as it should (EBADF).
fn holds_its_socket(transport: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
    let py = transport.py();
    let sock = transport.getattr(intern!(py, "_sock"))?;
    if sock.is_none() {
        return Ok(false);
    }
    let fileno: i64 = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    Ok(fileno == i64::from(fd))
}

/// The transport class's own `_read_ready` (the stock one, or the datagram transport's
/// Python one), for a read the Rust reader does not make itself.
fn stock_read_ready(transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let read_ready = transport.get_type().getattr(intern!(py, "_read_ready"))?;
    interop::call_with_slice(&read_ready, &[transport.as_ptr()])?;
    Ok(())
}

#[pymethods]
impl SocketWriter {
    #[new]
    fn new(transport: Py<PyAny>, fd: RawFd, event_loop: Py<LoopCore>) -> Self {
        SocketWriter {
            transport,
            fd,
            event_loop,
        }
    }

    fn __call__(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = data.py();
        // Before anything is sent: a write that does not all go out at once ends in
        // registering the writer, which checks too, but after sending part of it.
        self.event_loop.get().check_thread_strict()?;
        let transport = self.transport.bind(py);
        let Ok(bytes) = data.cast_exact::<PyBytes>() else {
            return self.stock(transport, data);
        };
        let buf = bytes.as_bytes();
        if buf.is_empty() || !Self::may_send_now(transport, self.fd)? {
            return self.stock(transport, data);
        }
        // SAFETY: `fd` is the transport's socket: `may_send_now` has just seen its socket
        // object open on it (`holds_its_socket`), and nothing since ran Python code.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let sent = match net::send(socket, buf) {
            Ok(Some(n)) if n == buf.len() => return Ok(()),
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(e) => {
                return fatal(
                    transport,
                    errors::os_error(e),
                    "Fatal write error on socket transport",
                );
            }
        };
        // Not all was written: register the write handler and buffer the rest.
        let write_ready = transport.getattr(intern!(py, "_write_ready"))?;
        let event_loop = transport.getattr(intern!(py, "_loop"))?;
        let fd = self.fd.into_pyobject(py)?.into_any();
        interop::call_method(
            &event_loop,
            intern!(py, "_add_writer"),
            &[&fd, &write_ready],
        )?;
        let buffer = transport.getattr(intern!(py, "_buffer"))?;
        if buffer.is_instance_of::<PyByteArray>() {
            // Python 3.11: the buffer is one bytearray.
            let rest = PyBytes::new(py, &buf[sent..]).into_any();
            interop::call_method(&buffer, intern!(py, "extend"), &[&rest])?;
        } else {
            // 3.12 and later: a deque of buffers, the rest a view of the data written.
            let view = PyMemoryView::from(bytes.as_any())?;
            let rest = view.get_item(PySlice::new(py, sent as isize, buf.len() as isize, 1))?;
            interop::call_method(&buffer, intern!(py, "append"), &[&rest])?;
        }
        // May call the protocol's pause_writing().
        interop::call_method(transport, intern!(py, "_maybe_pause_protocol"), &[])?;
        Ok(())
    }
}

of_transport!(
    SocketWriter,
    "_SelectorSocketTransport",
    "write",
    event_loop
);
