"""The weaveloop event loop: Rust core (``_core.LoopCore``) under asyncio's own API.

Rust owns scheduling, timers, polling, wake-ups and the executor fast path; the
stock selector loop's protocol code (sockets, pipes, subprocesses, signals) is
reused on top of the Rust poller through ``_add_reader``/``_add_writer``.
Invariant: every method that touches the ready queue or the timer heap is Rust.
"""

from __future__ import annotations

import _socket
import asyncio
import collections.abc
import concurrent.futures
import functools
import math
import os
import selectors
import signal
import socket
import sys
import threading
import types
import warnings
import weakref
from asyncio import (
    base_events,
    constants,
    coroutines,
    events,
    selector_events,
    sslproto,
    unix_events,
)

from . import _core
from ._executor import ThreadPoolExecutor
from ._patches import defined_in

try:
    import ssl
except ImportError:  # (built without it: no TLS, as asyncio says)
    ssl = None

__all__ = ["Loop", "new_event_loop", "LOOP_OPTIONS"]

#: Loop options, keyword-only, accepted by ``new_event_loop``/``run``/``Loop``.
LOOP_OPTIONS = {
    "strict_threads": "raise RuntimeError when a non-thread-safe method is called from a "
    "thread other than the one running the loop (default True)",
    "executor_workers": "max_workers of the default executor (default: the stdlib's "
    "min(32, cpu_count + 4))",
}

_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()

#: Datagram reads of up to this many bytes (the transports' default max_size) go
#: through the loop's receive buffer; a larger max_size reads as the stock transport
#: does, so the buffer, kept for the loop's life, stays this small.
_RECV_BUFFER_MAX = 256 * 1024
# The C methods (socket.socket's own unless something is patched in their place there;
# _socket.socket, a built-in type, cannot be patched).
_SOCKET_RECV = _socket.socket.recv
_SOCKET_RECV_INTO = _socket.socket.recv_into
_SOCKET_SEND = _socket.socket.send
_SOCKET_RECVFROM = _socket.socket.recvfrom
_SOCKET_RECVFROM_INTO = _socket.socket.recvfrom_into
_SOCKET_SENDTO = _socket.socket.sendto


def _stock_socket_methods(sock, **methods) -> bool:
    """Whether ``sock``'s class has the socket module's own methods by these names (a
    subclass may override one, and a transport then calls it as the stock one does)."""
    return all(getattr(type(sock), name, None) is m for name, m in methods.items())


class _SelectorView:
    """Read-only stand-in for ``loop._selector``: what the Rust poller watches.

    The stock transports only read it (``get_key`` in their reprs); its keys are those
    the stock selector would hold (the registered file object, its fd, the events mask,
    ``(reader, writer)``), and ``get_map()`` is looked up by fd or file object.
    """

    def __init__(self, loop: Loop) -> None:
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj):
        loop = self._loop()
        info = None
        if loop is not None:
            try:
                fd = selectors._fileobj_to_fd(fileobj)
                info = loop._io_key(fd)
            except ValueError:
                # A file object closed since it was registered: found by identity, as
                # the selectors module finds it.
                for fd in loop._io_fds():
                    info = loop._io_key(fd)
                    if info is not None and info[3] is fileobj:
                        break
                else:
                    raise
        if info is None:
            raise KeyError(f"{fileobj!r} is not registered")
        events_mask, reader, writer, registered = info
        fileobj = registered if registered is not None else fd
        return selectors.SelectorKey(fileobj, fd, events_mask, (reader, writer))

    def get_map(self):
        return _KeyMap(self)

    def close(self) -> None:
        pass


class _KeyMap(collections.abc.Mapping):
    """``get_map()``: fd -> key, also looked up by file object (as the selectors module's)."""

    def __init__(self, view: _SelectorView) -> None:
        self._view = view

    def _fds(self):
        loop = self._view._loop()
        return loop._io_fds() if loop is not None else []

    def __len__(self) -> int:
        return len(self._fds())

    def __iter__(self):
        return iter(self._fds())

    def __getitem__(self, fileobj):
        # (A closed file object never registered: ValueError, as the selectors module's
        # mapping raises, also out of get() and `in`.)
        return self._view.get_key(fileobj)


def _recv_buffer(transport) -> memoryview | None:
    """The loop's receive buffer, for a datagram read of ``transport.max_size`` bytes:
    one per loop, for its datagram transports, which read one at a time on the loop's
    thread. None where the transport must read as the stock one does: a ``max_size``
    that is not an int within 1..``_RECV_BUFFER_MAX``, a socket whose class overrides
    ``recvfrom``, or a stock ``_read_ready`` patched when the transport was made.
    (Socket transports read through ``_core.SocketReader``, which has a buffer of its
    own for the same reason.)

    The stock transports receive each read into a fresh ``max_size`` (256 KiB) bytes
    object, which glibc serves with an mmap, a shrinking mremap and a munmap: with small
    messages most of the time goes to the kernel's memory management. Here a read lands
    in this buffer and what arrived is copied out before the protocol sees it (a small
    allocation): the protocol gets the same bytes as before.
    """
    size = transport.max_size
    if not (isinstance(size, int) and 0 < size <= _RECV_BUFFER_MAX):
        return None
    # (The stock transport reads with recvfrom; this read, with recvfrom_into.)
    if not _stock_socket_methods(
        transport._sock, recvfrom=_SOCKET_RECVFROM, recvfrom_into=_SOCKET_RECVFROM_INTO
    ):
        return None
    if not transport._own_reads:
        return None  # (the stock _read_ready patched: the transport calls the patch)
    loop = transport._loop
    buf = loop._recv_buffer
    if len(buf) < size:
        buf = loop._recv_buffer = memoryview(bytearray(size))
    return buf


#: The transport methods that change a transport's state and call the loop's
#: non-thread-safe methods. In strict mode (rule 5) each checks the calling thread
#: first, so that one called from another thread raises before it has changed anything:
#: checked only deep in the stock code, the error would come half-way (a TLS record
#: encrypted and lost, a transport marked closing that never closes).
_THREAD_CHECKED = (
    "write",
    "writelines",
    "write_eof",
    "sendto",
    "close",
    "abort",
    "pause_reading",
    "resume_reading",
)


def _like(stock):
    """Decorator: an override that passes its arguments on to `stock` shows `stock`'s
    docstring and (through `__wrapped__`) its signature."""

    def decorate(method):
        return functools.update_wrapper(method, stock, assigned=("__doc__",), updated=())

    return decorate


def _thread_checked(cls):
    """Class decorator: the `_THREAD_CHECKED` methods `cls` has check the thread first,
    while `cls._loop_attached` (by default: `_loop` is set, which a socket or pipe
    transport's lost connection clears) says they can still reach the loop."""
    if "_loop_attached" not in cls.__dict__:
        cls._loop_attached = lambda self: self._loop is not None
    for name in _THREAD_CHECKED:
        method = getattr(cls, name, None)
        if method is not None:
            setattr(cls, name, _checking_thread(cls, name, method))
    return cls


#: What strict mode does not refuse from another thread but hands to the loop's thread
#: (see `_checking_thread`).
_HANDED_OVER = frozenset(("close", "abort"))


def _checking_thread(cls, name, method):
    """`method`, `cls`'s `name`, checking the thread first. One `cls` inherits from the
    stock class is looked up past `cls` at each call, so that a patch of the stock class
    (a test's `mock.patch.object`, an agent's wrapper) is called as on the stock loop.
    A `close` or `abort` from another thread is not refused: it is handed to the loop's
    thread, where it runs as soon as the loop gets to it. Finalizers call them from
    whatever thread frees their object (an unclosed StreamWriter's `__del__`, a
    `weakref.finalize`, run by the garbage collector there): refused, the transport
    would stay open for good; and a closing call is safe to defer."""
    handed_over = name in _HANDED_OVER
    own = name in cls.__dict__

    def checked(self, *args, **kwargs):
        if self._loop_attached():
            try:
                self._loop._check_thread_strict()
            except RuntimeError:
                if not handed_over:
                    raise
                self._loop.call_soon_threadsafe(functools.partial(checked, self, *args, **kwargs))
                return None
        if own:
            return method(self, *args, **kwargs)
        return getattr(super(cls, self), name)(*args, **kwargs)

    return functools.wraps(method)(checked)


_unpatched_seen: dict[tuple, tuple[int, bool]] = {}


def _unpatched(transport, cls, stock_cls, *names) -> bool:
    """Whether `transport`'s methods `names` are `cls`'s own, each passing on to
    `stock_cls`'s, asyncio's own: no patch in their place for a Rust path to skip.
    (Known while its class, and so each base, keeps its version: see _class_version.)"""
    t = type(transport)
    key = (t, cls, names)
    seen = _unpatched_seen.get(key)
    version = _core._class_version(t)
    if seen is not None and version and seen[0] == version:
        return seen[1]
    module = sys.modules[stock_cls.__module__]
    verdict = all(
        getattr(t, name) is cls.__dict__.get(name, getattr(stock_cls, name))
        and defined_in(getattr(stock_cls, name), module, name)
        for name in names
    )
    _unpatched_seen[key] = (_core._class_version(t), verdict)
    return verdict


class _RustPaths:
    """For a transport whose hot paths are Rust objects kept as instance attributes
    (`_rust_paths` names them). A socket transport's hold the transport, a cycle (the
    stock socket transports of 3.12+ have one too until they close: their bound
    `_read_ready_cb` and `_write_ready`): once its connection is lost they go with the
    socket, so that a closed transport is freed without the cyclic GC. The class's
    methods take over, and do what those would have done on a lost connection. (A
    datagram transport's also go when its loop closes, see `_DatagramTransport`.)"""

    _rust_paths: tuple[str, ...] = ()

    def _call_connection_lost(self, exc):
        try:
            super()._call_connection_lost(exc)
        finally:
            self._let_rust_paths_go()

    def _let_rust_paths_go(self):
        for name in self._rust_paths:
            self.__dict__.pop(name, None)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Each transport class gets this method under the stock one's name, which a
        # report of an error in connection_lost names ("Exception in callback
        # _SelectorSocketTransport._call_connection_lost(None)").
        own = _RustPaths._call_connection_lost
        named = types.FunctionType(
            own.__code__, own.__globals__, own.__name__, own.__defaults__, own.__closure__
        )
        named.__qualname__ = super()._call_connection_lost.__qualname__
        cls._call_connection_lost = named


@_thread_checked
class _SocketTransport(_RustPaths, selector_events._SelectorSocketTransport):
    """The stock socket transport, with its hot paths in Rust: its reader is
    ``_core.SocketReader`` (for a protocol read through ``data_received``, one ``recv``
    into a buffer the process shares, what arrived copied out, or while reads are large
    straight into the bytes handed over; for a buffered protocol, such as asyncio's TLS,
    one ``recv`` into its buffer; EOF and errors to the stock methods) and its ``write``
    a ``_core.SocketWriter`` (``bytes`` sent at once when nothing is buffered; everything
    else to the stock ``write``). A socket whose class overrides ``recv`` or ``send``
    reads or writes as the stock one does (a reader reads with ``recv`` or, for a
    buffered protocol, ``recv_into``).
    """

    _rust_paths = ("_read_ready", "write")

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        fd = sock.fileno()
        stock = selector_events._SelectorSocketTransport
        if _stock_socket_methods(
            sock, recv=_SOCKET_RECV, recv_into=_SOCKET_RECV_INTO
        ) and _unpatched(
            self,
            _SocketTransport,
            stock,
            "_read_ready",
            "_read_ready__data_received",
            "_read_ready__get_buffer",
        ):
            # Before the stock __init__, which registers self._read_ready.
            self._read_ready = _core.SocketReader(self, fd)
        if _stock_socket_methods(sock, send=_SOCKET_SEND) and _unpatched(
            self, _SocketTransport, stock, "write"
        ):
            # (An instance attribute: found before the class's write.)
            self.write = _core.SocketWriter(self, fd, loop)
        super().__init__(loop, sock, protocol, waiter, extra, server)

    def set_protocol(self, protocol):
        super().set_protocol(protocol)
        reader = self.__dict__.get("_read_ready")
        if reader is not None:
            reader.direct = not isinstance(protocol, asyncio.BufferedProtocol)


@_thread_checked
class _DatagramTransport(_RustPaths, selector_events._SelectorDatagramTransport):
    """The stock datagram transport, whose reader and ``sendto`` for an IPv4 socket are
    ``_core.DatagramReader`` (the stock read path in Rust, into a buffer the process
    shares) and ``_core.DatagramWriter`` (the stock attempt to send at once, in Rust);
    other sockets receive into the loop's receive buffer (see ``_recv_buffer``)."""

    _rust_paths = ("_read_ready", "sendto")

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        ipv4 = sock.family == socket.AF_INET
        stock = selector_events._SelectorDatagramTransport
        # Looked at once, as the stock transport's reader is bound once (registered by
        # its __init__): reads go the weaveloop way unless the stock one was patched.
        self._own_reads = _unpatched(self, _DatagramTransport, stock, "_read_ready")
        if ipv4 and self._own_reads and _stock_socket_methods(sock, recvfrom=_SOCKET_RECVFROM):
            # Before the stock __init__, which registers self._read_ready.
            self._read_ready = _core.DatagramReader(self, sock.fileno())
        super().__init__(loop, sock, protocol, address, waiter, extra)
        if (
            ipv4
            and _stock_socket_methods(sock, sendto=_SOCKET_SENDTO, send=_SOCKET_SEND)
            and _unpatched(self, _DatagramTransport, stock, "sendto")
        ):
            # (An instance attribute: found before the class's sendto. The protocol's
            # connection_made, which may send, runs later: call_soon'd by the stock
            # __init__.)
            connected = bool(self._extra["peername"])
            self.sendto = _core.DatagramWriter(self, sock.fileno(), loop, connected)
        # The stock transport is held by its reader's registration, which the loop lets
        # go when it closes: one nobody else holds is then freed, and its __del__ closes
        # the socket. The Rust paths hold this one in a cycle; they go at the loop's
        # close, so that it is freed then too, not at the next cyclic GC.
        loop._datagram_transports.add(self)

    def _read_ready(self):
        if self._conn_lost:
            return
        buf = _recv_buffer(self)
        if buf is None:
            return super()._read_ready()
        try:
            n, addr = self._sock.recvfrom_into(buf, self.max_size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
        else:
            self._protocol.datagram_received(bytes(buf[:n]), addr)

    # (As a report of an error in datagram_received names it.)
    _read_ready.__qualname__ = "_SelectorDatagramTransport._read_ready"


@_thread_checked
class _SSLTransport(sslproto._SSLProtocolTransport):
    """The stock TLS transport (what the application protocol writes to), its methods
    thread-checked. The stock TLS protocol makes a stock one; the loop gives it this
    class (same layout, nothing added) before anyone else sees it."""

    def _loop_attached(self):
        # Once the TLS protocol has lost its connection, these methods are no-ops.
        protocol = self._ssl_protocol
        return protocol is not None and protocol._transport is not None


def _refuse_nan_ssl_timeouts(handshake, shutdown) -> None:
    """The stock TLS protocol refuses a timeout <= 0 as it is made, and NaN passes that
    test; this loop's timers refuse a NaN delay (DESIGN.md's bad-input table), which
    would fail later, inside the protocol, leaving the connection to hang. Refused at
    once instead, in the stock message's words."""
    for name, value in (("ssl_handshake_timeout", handshake), ("ssl_shutdown_timeout", shutdown)):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError(f"{name} should be a positive number, got {value}")


def _refuse_nan_tls_timeouts_of(kwargs) -> None:
    """`_refuse_nan_ssl_timeouts` for a call that makes TLS connections (`ssl=`), before
    it connects or serves: a server would otherwise fail each connection it accepts, and
    a client connect first, then fail."""
    if kwargs.get("ssl"):
        _refuse_nan_ssl_timeouts(
            kwargs.get("ssl_handshake_timeout"), kwargs.get("ssl_shutdown_timeout")
        )


@_thread_checked
class _Server(base_events.Server):
    """The stock server, its `close()` thread-checked (it would stop serving half-way:
    its sockets forgotten before the loop refuses to unregister the first one)."""

    def _loop_attached(self):
        return self._sockets is not None  # (closed: close() does nothing)


def _as_checked(obj, checked):
    """`obj`, an object the stock code made, given `checked`, its thread-checked
    subclass (same layout, nothing added), before anyone else sees it. Only an object of
    the very class `checked` extends: a class a program put in the module's place since
    keeps its own methods."""
    if type(obj) is checked.__base__:
        obj.__class__ = checked
    return obj


@_thread_checked
class _ReadPipeTransport(unix_events._UnixReadPipeTransport):
    """The stock read pipe transport, its methods thread-checked."""


@_thread_checked
class _WritePipeTransport(unix_events._UnixWritePipeTransport):
    """The stock write pipe transport, its methods thread-checked."""


def _validate_options(options: dict) -> dict:
    unknown = set(options) - set(LOOP_OPTIONS)
    if unknown:
        name = sorted(unknown)[0]
        raise TypeError(f"unknown weaveloop loop option {name!r}; known: {sorted(LOOP_OPTIONS)}")
    strict = options.get("strict_threads", True)
    if not isinstance(strict, bool):
        raise TypeError(f"strict_threads must be a bool, got {strict!r}")
    workers = options.get("executor_workers")
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise TypeError(f"executor_workers must be an int, got {workers!r}")
        if workers <= 0:
            raise ValueError("executor_workers must be greater than 0")
    return {"strict_threads": strict, "executor_workers": workers}


class Loop(_core.LoopCore, unix_events.SelectorEventLoop):
    """An ``asyncio.AbstractEventLoop`` whose scheduler, timers, poller and executor are Rust."""

    def __new__(cls, *args, **options):
        # Refuse bad options before an object exists (a half-built loop would be
        # finalised as an unclosed one). A subclass with an __init__ of its own takes
        # arguments of its own: what it passes on is checked by Loop.__init__.
        if cls.__init__ is Loop.__init__:
            if args:
                raise TypeError(f"{cls.__name__}() takes keyword-only loop options")
            _validate_options(options)
        return super().__new__(cls)

    def __init__(self, **options) -> None:
        try:
            opts = _validate_options(options)
        except BaseException:
            # (Reached with bad options from a subclass's __init__: the half-built
            # loop is closed at once, not finalised as an unclosed one.)
            self._close_core(False)
            raise
        # The Python-side bookkeeping of BaseEventLoop.__init__, minus what the Rust core
        # owns (ready queue, timers, closed/stopping flags, running thread, clock).
        self._internal_fds = 0
        self._exception_handler = None
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self.set_debug(coroutines._is_debug_mode())
        self._strict_threads = opts["strict_threads"]
        self._custom_clock = self._time_replaced()
        self._plain_setattr = self._own_setattr()
        self._executor_workers = opts["executor_workers"]
        self._selector = _SelectorView(self)
        self._transports = weakref.WeakValueDictionary()
        self._signal_handlers = {}
        # (Python 3.13's stock servers and run_forever read these two.)
        self._unix_server_sockets = {}
        self._old_agen_hooks = None
        self._ssock = self._csock = None
        self._wakeup_fd_to_restore = None
        self._abandoned = False
        # Shared by the loop's datagram transports (see _recv_buffer).
        self._recv_buffer = memoryview(b"")
        self._datagram_transports: weakref.WeakSet = weakref.WeakSet()
        self._make_self_pipe()
        _live_loops.add(self)

    # A `time()` set on the instance (`loop.time = ...`, `mock.patch.object(loop, "time")`,
    # as virtual-clock test tools do) drives the scheduler, as in the stock loop, whose
    # scheduler calls self.time(); so does a subclass's (see __init__).
    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        if name == "time":
            self._custom_clock = True

    def __delattr__(self, name) -> None:
        super().__delattr__(name)
        if name == "time":
            self._custom_clock = self._time_replaced()

    def _own_setattr(self) -> bool:
        # Whether attributes are set through this class's own __setattr__ only: debug mode
        # then sets `_current_handle` past it (see run_item_timed in src/run.rs).
        return type(self).__setattr__ is Loop.__setattr__

    def _time_replaced(self) -> bool:
        # (A `time()` patched on the class after the loop was made is noticed when the
        # loop next starts running, see _run_forever_setup.)
        return type(self).time is not _core.LoopCore.time or "time" in self.__dict__

    @property
    def _nest_patched(self):
        # nest_asyncio.apply() rewrites a BaseEventLoop subclass's run loop in Python,
        # on the class, and the Rust scheduler cannot honour that: every loop of the
        # class would break. Its first look at a loop is `hasattr(loop, "_nest_patched")`:
        # refused there with the error it gives for uvloop. Anyone else asking (code
        # probing whether nest_asyncio patched the loop) learns that it did not.
        caller = sys._getframe(1)
        if caller.f_code.co_name == "_patch_loop" or str(
            caller.f_globals.get("__name__")
        ).startswith("nest_asyncio"):  # nest_asyncio, its forks and vendored copies
            raise ValueError(f"Can't patch loop of type {type(self)}")
        raise AttributeError("_nest_patched")

    # -- running -------------------------------------------------------------------

    def run_forever(self) -> None:
        # Through the setup and cleanup steps 3.13 split out, so that a subclass that
        # extends them has them run (on every Python version).
        self._run_forever_setup()
        try:
            self._run_forever_core()
        finally:
            self._run_forever_cleanup()

    def _run_forever_setup(self) -> None:
        """Sets the loop up to run on this thread: what `run_forever()` does before its
        first iteration (Python 3.13's hook, for loops that a GUI toolkit's loop drives
        by calling `_run_once()`, until `_run_forever_cleanup()`). Undone if it fails:
        a loop that is already running stays as it was."""
        self._check_closed()
        self._check_running()
        # Also a `time()` patched on the class since (`mock.patch.object(Loop, "time")`).
        self._custom_clock = self._time_replaced()
        self._plain_setattr = self._own_setattr()
        self._enter_running()
        try:
            self._set_coroutine_origin_tracking(self._debug)
            self._old_agen_hooks = sys.get_asyncgen_hooks()
            self._wakeup_fd_to_restore = self._install_wakeup_fd()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
        except BaseException:
            Loop._run_forever_cleanup(self)  # (this class's: a subclass's may pair with its setup)
            raise

    def _run_forever_cleanup(self) -> None:
        """Undoes `_run_forever_setup()`: what `run_forever()` does after its last
        iteration (Python 3.13's hook)."""
        try:
            self._leave_running()
        finally:
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            if self._old_agen_hooks is not None:
                sys.set_asyncgen_hooks(*self._old_agen_hooks)
                self._old_agen_hooks = None
            self._restore_wakeup_fd(self._wakeup_fd_to_restore)
            self._wakeup_fd_to_restore = None

    def _install_wakeup_fd(self):
        # So that Ctrl+C wakes a parked loop even when the kernel delivers SIGINT to
        # another thread: CPython writes the signal number to this fd.
        if self._csock is None or threading.current_thread() is not threading.main_thread():
            return None
        try:
            old = signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            return None
        if old != -1:
            # Someone (add_signal_handler, another library) already owns it: keep theirs.
            _put_back_wakeup_fd(old)
            return None
        return old

    def add_signal_handler(self, sig, callback, *args) -> None:
        # Refused at once, as every scheduling method does (the stock code accepts a
        # non-callable and fails only when the signal arrives).
        if not callable(callback) and not coroutines.iscoroutine(callback):
            self._check_signal(sig)
            self._check_closed()
            raise TypeError(
                f"a callable object was expected by add_signal_handler(), got {callback!r}"
            )
        super().add_signal_handler(sig, callback, *args)

    add_signal_handler.__doc__ = unix_events.SelectorEventLoop.add_signal_handler.__doc__

    def remove_signal_handler(self, sig) -> bool:
        removed = super().remove_signal_handler(sig)
        if removed and not self._signal_handlers and self.is_running():
            # The stock code has just uninstalled the wake-up fd (set_wakeup_fd(-1)); this
            # run still needs it, so that Ctrl+C wakes a parked loop. Back until it ends.
            old = self._install_wakeup_fd()
            if old is not None:
                self._wakeup_fd_to_restore = old
        return removed

    remove_signal_handler.__doc__ = unix_events.SelectorEventLoop.remove_signal_handler.__doc__

    def _restore_wakeup_fd(self, old) -> None:
        if old is None:
            return
        try:
            if self._signal_handlers:
                return  # add_signal_handler now relies on our fd
            current = signal.set_wakeup_fd(old)
        except (ValueError, OSError):
            return
        if current != self._csock.fileno():
            # Someone else installed theirs while we ran: it stays.
            _put_back_wakeup_fd(current)

    # The socket methods below: for a plain non-blocking socket.socket (and, for
    # sock_sendall, bytes), the first attempt and the wait are Rust (``_core.SockWait``);
    # the Rust method says NotImplemented for everything else, which the stock method does.

    async def sock_recv(self, sock, n):
        """Receive up to ``n`` bytes from ``sock``, waiting until some come (asyncio's)."""
        got = self._sock_recv_native(sock, n)
        if got.__class__ is bytes:
            return got
        if got is NotImplemented:
            data = await super().sock_recv(sock, n)
            if data.__class__ is bytes:
                # While reads are large the stock method reads them (see
                # large_sock_reads in src/loop_core.rs): this one's size counts.
                self._stock_sock_read(len(data))
            return data
        return await got

    async def sock_recv_into(self, sock, buf):
        """Receive into ``buf`` from ``sock``, waiting until some bytes come; their
        count (asyncio's)."""
        got = self._sock_recv_into_native(sock, buf)
        if got.__class__ is int:
            return got
        if got is NotImplemented:
            return await super().sock_recv_into(sock, buf)
        return await got

    async def sock_sendall(self, sock, data):
        """Send all of ``data`` on ``sock``, waiting while it does not take it (asyncio's)."""
        got = self._sock_sendall_native(sock, data)
        if got is None:
            return None
        if got is NotImplemented:
            return await super().sock_sendall(sock, data)
        return await got

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return _SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        # The stock one, over this loop's socket transport (its Rust read and write
        # paths serve the TLS protocol, a buffered protocol writing bytes).
        _refuse_nan_ssl_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout)
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        _SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return _as_checked(ssl_protocol._app_transport, _SSLTransport)

    @_like(unix_events.SelectorEventLoop.start_tls)
    async def start_tls(self, transport, protocol, sslcontext, **kwargs):
        # (After the stock checks of the context and the transport, as the stock
        # protocol's own check of the timeouts comes after them.)
        if (
            ssl is not None
            and isinstance(sslcontext, ssl.SSLContext)
            and getattr(transport, "_start_tls_compatible", False)
        ):
            _refuse_nan_ssl_timeouts(
                kwargs.get("ssl_handshake_timeout"), kwargs.get("ssl_shutdown_timeout")
            )
        app_transport = await super().start_tls(transport, protocol, sslcontext, **kwargs)
        return _as_checked(app_transport, _SSLTransport)

    @_like(unix_events.SelectorEventLoop.create_connection)
    async def create_connection(self, *args, **kwargs):
        _refuse_nan_tls_timeouts_of(kwargs)
        delay = kwargs.get("happy_eyeballs_delay")
        if isinstance(delay, float) and math.isnan(delay) and kwargs.get("sock") is None:
            # The stock race waits that long between attempts with this loop's timers,
            # which refuse NaN: refused before the first attempt connects a socket that
            # the failure would leave open. (With `sock=` there is no race.)
            raise ValueError("Invalid happy_eyeballs_delay: NaN (not a number)")
        return await super().create_connection(*args, **kwargs)

    @_like(unix_events.SelectorEventLoop.create_unix_connection)
    async def create_unix_connection(self, *args, **kwargs):
        _refuse_nan_tls_timeouts_of(kwargs)
        return await super().create_unix_connection(*args, **kwargs)

    @_like(unix_events.SelectorEventLoop.connect_accepted_socket)
    async def connect_accepted_socket(self, *args, **kwargs):
        _refuse_nan_tls_timeouts_of(kwargs)
        return await super().connect_accepted_socket(*args, **kwargs)

    @_like(unix_events.SelectorEventLoop.create_server)
    async def create_server(self, *args, **kwargs):
        _refuse_nan_tls_timeouts_of(kwargs)
        return _as_checked(await super().create_server(*args, **kwargs), _Server)

    @_like(unix_events.SelectorEventLoop.create_unix_server)
    async def create_unix_server(self, *args, **kwargs):
        _refuse_nan_tls_timeouts_of(kwargs)
        return _as_checked(await super().create_unix_server(*args, **kwargs), _Server)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _WritePipeTransport(self, pipe, protocol, waiter, extra)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return _DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _write_to_self(self) -> None:
        self._wakeup()

    # -- executor ------------------------------------------------------------------

    def _default_pool(self):
        if self._executor_shutdown_called:
            raise RuntimeError("Executor shutdown has been called")
        executor = self._default_executor
        if executor is None:
            executor = ThreadPoolExecutor(
                max_workers=self._executor_workers, thread_name_prefix="asyncio"
            )
            self._default_executor = executor
        return executor

    def _run_in_foreign_executor(self, executor, func, args):
        return asyncio.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor) -> None:
        if not isinstance(executor, (concurrent.futures.ThreadPoolExecutor, ThreadPoolExecutor)):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None) -> None:
        """Shut the default executor down, waiting at most ``timeout`` seconds for it
        (Python 3.12's signature, available here on 3.11 too)."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(executor, future))
        thread.start()
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)
        else:
            thread.join()

    def _do_shutdown(self, executor, future) -> None:
        try:
            executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_done, future, None)
        except Exception as ex:
            if not self.is_closed():
                self.call_soon_threadsafe(future.set_exception, ex)

    # -- async generators ------------------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self._finalize_asyncgen, agen.aclose())

    def _finalize_asyncgen(self, closing) -> None:
        if self.is_closed() or self._weaveloop_closing:
            # Collected on another thread after the last run: close() runs what other
            # threads posted (none vanishes), but there is no loop left to finalise it
            # on. The stock loop drops it silently; so do we, rather than make a task that
            # never runs. (What the closing thread posted, close() drops.)
            closing.close()
            return
        self.create_task(closing)

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            base_events.logger.debug("Close %r", self)
        # (A subclass's loop that skipped __init__ has no such set.)
        for transport in list(getattr(self, "_datagram_transports", ())):
            transport._let_rust_paths_go()
        try:
            # (A KeyboardInterrupt/SystemExit from a posted callback that this runs is
            # raised once the loop is closed: the rest of the close still happens.)
            self._close_core(not self._abandoned)
        finally:
            self._selector = None
            self._executor_shutdown_called = True
            executor = self._default_executor
            if executor is not None:
                self._default_executor = None
                executor.shutdown(wait=False)
            _live_loops.discard(self)
            # After the posted callbacks the core's close runs: with signal handlers,
            # the self-pipe is the process's signal wake-up fd, and a file such code
            # opened could otherwise take the closed socket's number and get the bytes.
            self._close_self_pipe()
            # Last, as the stock loop does: from a thread other than the main one this
            # fails (signal.signal), and the loop is closed all the same.
            self._remove_signal_handlers_at_close()

    def _remove_signal_handlers_at_close(self) -> None:
        if sys.is_finalizing():
            # As the stock loop: the signal module may be gone already.
            if self._signal_handlers:
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown stage, "
                    "skipping signal handlers removal",
                    ResourceWarning,
                    source=self,
                    stacklevel=3,
                )
                self._signal_handlers.clear()
        else:
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)

    # As the stock loop's finalizer, except that what other threads posted to the
    # abandoned loop is dropped, as the stock loop drops its ready queue, rather than run
    # (close() runs such posts) inside the garbage collector, on whatever thread it runs.
    def __del__(self, _warn=warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self._abandoned = True
                self.close()

    def _close_self_pipe(self) -> None:
        if self._ssock is None:
            return
        self._remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._ssock = None
        self._csock.close()
        self._csock = None
        self._internal_fds -= 1

    # -- debug ---------------------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        self._debug = enabled
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _after_fork_in_child(self) -> None:
        # Forked from one of its callbacks, the loop is no longer the running loop in the
        # child, as with the stock loop (Python 3.11: asyncio checks the process id;
        # 3.12+: its at-fork hook forgets it): a child that runs code of its own, as
        # multiprocessing's and ProcessPoolExecutor's forked workers do, may start a
        # loop (`asyncio.run`) of its own.
        try:
            self._after_fork()
        finally:
            self._renew_self_pipe()

    def _renew_self_pipe(self) -> None:
        """A fresh self-pipe in a forked child: the inherited one is shared with the
        parent, which would read the child's signal bytes (and the child the parent's)."""
        if self._ssock is None:
            return
        old = self._csock.fileno()
        self._close_self_pipe()
        self._make_self_pipe()
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            # The signal wake-up fd, if it was the loop's, follows it. (On Python 3.12+
            # asyncio's own at-fork hook, which runs first, has just set it to -1: it was
            # the loop's if the loop held it, for a run or for signal handlers.)
            previous = signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            return
        held = self._wakeup_fd_to_restore is not None or bool(self._signal_handlers)
        if previous != old and not (previous == -1 and held):
            _put_back_wakeup_fd(previous)


def _put_back_wakeup_fd(fd: int) -> None:
    """Re-installs someone else's signal wake-up fd, which a look at it took out (CPython
    can only tell what it was by replacing it). Whether its owner asked for
    ``warn_on_full_buffer`` cannot be read, so it goes back without the warning: an
    owner that wanted it loses a warning, where one that did not (trio, which lets its
    fd fill up) would otherwise get a traceback printed per signal. An fd CPython no
    longer takes (closed, or made blocking since) is not the loop's to mend: the
    wake-up fd is left unset rather than pointing at the loop's own socket, which
    close() closes."""
    try:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        signal.set_wakeup_fd(-1)


def _set_result_unless_done(future, result) -> None:
    if not future.done():
        future.set_result(result)


def new_event_loop(**options) -> Loop:
    """A new weaveloop ``Loop``; ``options`` are keyword-only (see ``LOOP_OPTIONS``)."""
    return Loop(**options)


def _before_fork() -> None:
    for loop in list(_live_loops):
        if not loop.is_closed():
            loop._before_fork()


def _after_fork_in_child() -> None:
    # Every live loop is reset even if one of them fails; the first failure is raised.
    failure = None
    for loop in list(_live_loops):
        if not loop.is_closed():
            try:
                loop._after_fork_in_child()
            except Exception as e:  # noqa: BLE001 - raised below, after the others
                failure = failure or e
    if failure is not None:
        raise failure


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
