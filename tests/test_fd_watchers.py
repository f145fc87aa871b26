"""File-descriptor watchers: add_reader/add_writer/remove_* for fds and socket objects.

Differential: every test runs on weaveloop and on the stock loop. Watchers are
level-triggered: a reader that leaves data unread is called again.
"""

from __future__ import annotations

import contextvars
import errno
import os
import socket

import pytest
from _support import (
    SAFETY,
    assert_fork_script_passes,
    needs_parked_detection,
    run,
    run_python,
)


def _assert_a_fresh_pair_is_watchable(loop, payload: bytes, before_watching=None) -> None:
    """A new socketpair (the OS may hand out a number just closed) gets its reader
    called with ``payload``; ``before_watching`` runs once the pair exists."""
    c, d = socket.socketpair()
    try:
        got = []

        def on_readable():
            got.append(c.recv(1))
            loop.remove_reader(c)

        if before_watching is not None:
            before_watching()
        loop.add_reader(c, on_readable)
        d.send(payload)
        _run_until(loop, lambda: bool(got))
        assert got == [payload]
    finally:
        c.close()
        d.close()


def _run_until(loop, done, timeout: float = SAFETY) -> None:
    """Run the loop until ``done()`` holds after a callback (checked every iteration)."""
    guard = loop.call_later(timeout, loop.stop)

    def check():
        if done():
            loop.stop()
        else:
            loop.call_soon(check)

    loop.call_soon(check)
    loop.run_forever()
    guard.cancel()


@pytest.mark.parametrize("as_object", [False, True], ids=["fd", "socket"])
def test_reader_called_when_data_arrives(loop, pair, as_object):
    a, b = pair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))
        loop.remove_reader(a if as_object else a.fileno())
        loop.stop()

    loop.add_reader(a if as_object else a.fileno(), on_readable, "tag")
    loop.call_soon(b.send, b"hello")
    guard = loop.call_later(SAFETY, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert got == [("tag", b"hello")]


@pytest.mark.parametrize("as_object", [False, True], ids=["fd", "socket"])
def test_writer_called_when_writable(loop, pair, as_object):
    a, _ = pair
    got = []

    def on_writable(tag):
        got.append(tag)
        loop.remove_writer(a if as_object else a.fileno())
        loop.stop()

    loop.add_writer(a if as_object else a.fileno(), on_writable, "w")
    guard = loop.call_later(SAFETY, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert got == ["w"]


def test_remove_reader_return_values(loop, pair):
    a, _ = pair
    assert loop.remove_reader(a) is False
    loop.add_reader(a, lambda: None)
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_remove_writer_return_values(loop, pair):
    a, _ = pair
    assert loop.remove_writer(a.fileno()) is False
    loop.add_writer(a.fileno(), lambda: None)
    assert loop.remove_writer(a.fileno()) is True
    assert loop.remove_writer(a.fileno()) is False


def test_socket_object_and_its_fd_name_the_same_watcher(loop, pair):
    a, _ = pair
    loop.add_reader(a, lambda: None)
    assert loop.remove_reader(a.fileno()) is True
    loop.add_writer(a.fileno(), lambda: None)
    assert loop.remove_writer(a) is True


def test_reader_and_writer_on_one_fd_are_independent(loop, pair):
    a, b = pair
    events = []

    def on_writable():
        events.append("w")
        loop.remove_writer(a)
        b.send(b"x")

    def on_readable():
        events.append("r")
        a.recv(1)
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    _run_until(loop, lambda: len(events) == 2)
    assert events == ["w", "r"]
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_removing_the_writer_keeps_the_reader(loop, pair):
    a, b = pair
    events = []
    loop.add_reader(a, lambda: (events.append("r"), a.recv(1)))
    loop.add_writer(a, lambda: events.append("w"))
    assert loop.remove_writer(a) is True
    b.send(b"x")
    _run_until(loop, lambda: "r" in events)
    assert events == ["r"]
    assert loop.remove_reader(a) is True


def test_add_reader_again_replaces_the_callback(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append("first"))
    loop.add_reader(a, lambda: (got.append("second"), a.recv(1)))
    b.send(b"x")
    _run_until(loop, lambda: bool(got))
    loop.remove_reader(a)
    assert got == ["second"]


class _UnrepresentableCallback:
    def __call__(self):
        pass

    def __repr__(self):
        raise ZeroDivisionError("no repr")


def test_debug_mode_replacing_or_removing_a_watcher_raises_its_repr_error(loop, pair):
    # The replaced or removed handle is cancelled, and in debug mode cancel() keeps the
    # handle's repr: its error reaches the caller (as on the stock loop), after the
    # replacement or removal took effect.
    a, _ = pair
    loop.set_debug(True)
    loop.add_reader(a, _UnrepresentableCallback())
    with pytest.raises(ZeroDivisionError, match="no repr"):
        loop.add_reader(a, print)
    assert loop._selector.get_key(a).data[0]._callback is print
    loop.add_reader(a, _UnrepresentableCallback())
    with pytest.raises(ZeroDivisionError, match="no repr"):
        loop.remove_reader(a)
    assert loop.remove_reader(a) is False


def test_reader_is_level_triggered(loop, pair):
    # A reader that takes one byte per call must be called again until it has drained.
    a, b = pair
    payload = b"abcdefgh"
    b.send(payload)
    received = []

    def read_one():
        received.append(a.recv(1))

    loop.add_reader(a, read_one)
    _run_until(loop, lambda: len(received) >= len(payload))
    assert b"".join(received) == payload
    # Drained: a few more full iterations must not call it again.
    calls_when_drained = len(received)
    _spin_iterations(loop, 5)
    assert len(received) == calls_when_drained
    loop.remove_reader(a)


def test_writer_is_level_triggered(loop, pair):
    a, _ = pair
    calls = []
    loop.add_writer(a, calls.append, 1)
    _run_until(loop, lambda: len(calls) >= 5)
    loop.remove_writer(a)
    assert len(calls) >= 5


def test_reader_sees_eof(loop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(10))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.close()
    _run_until(loop, lambda: bool(got))
    assert got == [b""]


def test_pipe_fds(loop):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        got = []

        def on_readable():
            got.append(os.read(r, 10))
            loop.remove_reader(r)

        loop.add_reader(r, on_readable)
        os.write(w, b"pipe")
        _run_until(loop, lambda: bool(got))
        assert got == [b"pipe"]
    finally:
        os.close(r)
        os.close(w)


def test_exception_in_reader_goes_to_handler_and_loop_continues(loop, pair):
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad_reader():
        a.recv(1)
        loop.remove_reader(a)
        raise OSError("reader failed")

    loop.add_reader(a, bad_reader)
    b.send(b"x")
    _run_until(loop, lambda: bool(contexts))
    assert isinstance(contexts[0]["exception"], OSError)
    assert "handle" in contexts[0]


def test_many_sockets_each_reported_once_per_readiness(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        seen = []
        for i, (a, b) in enumerate(pairs):

            def on_readable(i=i, a=a):
                seen.append(i)
                a.recv(1)
                loop.remove_reader(a)

            loop.add_reader(a, on_readable)
            b.send(b"x")
        _run_until(loop, lambda: len(seen) == len(pairs))
        assert sorted(seen) == list(range(len(pairs)))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_fd_closed_while_watched_can_be_removed_and_reused(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(a, lambda: None)
    a.close()  # closed behind the loop's back, as transports sometimes do
    b.close()
    assert loop.remove_reader(fd) is True
    # The OS hands the same number out again: it must be watchable afresh.
    _assert_a_fresh_pair_is_watchable(loop, b"z")


def test_fd_closed_while_watched_then_reused_without_remove(loop):
    # The number is reused while the old registration still exists in the loop's map.
    a, b = socket.socketpair()
    fd = a.fileno()
    stale = []
    loop.add_reader(fd, stale.append, "stale")
    a.close()
    b.close()
    _assert_a_fresh_pair_is_watchable(loop, b"y", before_watching=lambda: loop.remove_reader(fd))
    assert stale == []


def _spin_iterations(loop, n: int) -> None:
    def step(k):
        if k <= 1:
            loop.stop()
        else:
            loop.call_soon(step, k - 1)

    loop.call_soon(step, n)
    loop.run_forever()


def test_a_cancelled_watcher_handle_is_removed_when_its_fd_fires(loop, pair):
    # asyncio code may cancel the handle it finds in the selector key; the stock loop
    # then drops the watcher at the fd's next readiness instead of running it.
    a, b = pair
    calls = []
    handle = loop._add_reader(a.fileno(), calls.append, "ran")
    handle.cancel()
    b.send(b"x")  # never read: a level-triggered fd stays ready
    marker = []
    loop.call_later(0.01, marker.append, 1)
    _run_until(loop, lambda: marker)
    assert calls == []
    assert loop.remove_reader(a.fileno()) is False


def test_add_reader_os_errors_carry_errno(loop):
    import errno

    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        loop.add_reader(r, lambda: None)
    assert info.value.errno == errno.EBADF
    assert info.value.strerror and "os error" not in str(info.value)


def test_a_reader_keeps_one_context_for_its_whole_life(loop, pair):
    # As the stock loop's reader handle: a variable the callback sets is there on its
    # next call (also when the reader was added from a context with nothing set).
    a, b = pair
    var = contextvars.ContextVar("var")
    seen = []

    def on_readable():
        seen.append(var.get("unset"))
        var.set(len(seen))
        if len(seen) == 3:
            loop.remove_reader(a)
            loop.stop()

    b.send(b"x")
    contextvars.Context().run(loop.add_reader, a, on_readable)
    guard = loop.call_later(SAFETY, loop.stop)  # safety net only
    loop.run_forever()
    guard.cancel()
    assert seen == ["unset", 1, 2]
    assert var.get("unset") == "unset"


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_removing_a_watcher_of_a_socket_closed_since_finds_it_by_identity(loop, side):
    # As the selectors module: a closed socket's fileno() is -1, and the registration
    # made with that very object is the one removed.
    a, b = socket.socketpair()
    b.close()
    getattr(loop, f"add_{side}")(a, lambda: None)
    a.close()
    assert getattr(loop, f"remove_{side}")(a) is True
    # Gone now: a closed socket that matches no registration is a bad file object.
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        getattr(loop, f"remove_{side}")(a)


def test_a_file_object_freed_by_the_loop_may_call_the_loop(loop):
    # The loop drops the last reference to a registered file object when it removes a
    # cancelled watcher; the object's __del__ runs then and may schedule a callback.
    r, w = os.pipe()
    freed = loop.create_future()

    class FileNo:
        def __init__(self, fd):
            self.fd = fd

        def fileno(self):
            return self.fd

        def __del__(self):
            loop.call_soon(freed.set_result, "from __del__")

    try:
        loop.add_reader(FileNo(r), lambda: None)
        # The stock add_reader returns None: its handle is in the selector key.
        loop._selector.get_key(r).data[0].cancel()
        os.write(w, b"x")
        assert run(loop, freed) == "from __del__"
    finally:
        os.close(r)
        os.close(w)


# -- fds closed while watched (user error: the stock loop's answers) ----------------------


def test_removing_one_side_of_a_closed_fd_raises_and_forgets_the_fd(loop):
    # epoll forgot the closed fd, so narrowing its registration fails: the stock loop
    # raises and drops the whole key (the writer too). Left behind, the registration
    # kept the number from ever being polled again (a new socket under it hung).
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    loop.add_writer(fd, lambda: None)
    a.close()
    try:
        with pytest.raises(OSError) as err:
            loop.remove_reader(fd)
        assert err.value.errno == errno.EBADF
        assert loop.remove_writer(fd) is False
        _assert_a_fresh_pair_is_watchable(loop, b"n")
    finally:
        b.close()


def test_a_new_file_under_a_watched_number_is_refused_and_the_stale_watcher_dropped(loop):
    # A reader on `a`'s number, `a` closed without removing it, another socket put under
    # that number: widening the registration fails (epoll knows no such file), as on the
    # stock loop, and the stale reader is dropped rather than called for the new socket.
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    fd = a.fileno()
    stale = []
    loop.add_reader(fd, stale.append, "stale")
    a.close()
    os.dup2(c.fileno(), fd)
    try:
        with pytest.raises(FileNotFoundError):
            loop.add_writer(fd, lambda: None)
        got = []

        def on_readable():
            got.append(os.read(fd, 1))
            loop.remove_reader(fd)

        loop.add_reader(fd, on_readable)
        d.send(b"r")
        _run_until(loop, lambda: bool(got))
        assert got == [b"r"]
        assert stale == []
    finally:
        os.close(fd)
        for s in (b, c, d):
            s.close()


def test_every_ready_fd_is_served_in_one_iteration(loop):
    # The stock loop sizes epoll's result to the fds it watches; weaveloop used to take
    # at most 1024 events per poll.
    n = 1100
    pairs = [socket.socketpair() for _ in range(n)]
    calls = []
    try:
        for a, b in pairs:
            b.send(b"x")
            loop.add_reader(a, calls.append, None)
        loop.call_soon(loop.stop)  # one iteration
        loop.run_forever()
        assert len(calls) == n
    finally:
        for a, b in pairs:
            loop.remove_reader(a)
            a.close()
            b.close()


class _FilenoAs:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value


@pytest.mark.parametrize("convert", [str, float])
def test_fileno_is_read_through_int_as_the_selectors_module_does(loop, pair, convert):
    a, b = pair
    got = []
    loop.add_reader(_FilenoAs(convert(a.fileno())), lambda: got.append(a.recv(1)))
    b.send(b"f")
    _run_until(loop, lambda: bool(got))
    assert got == [b"f"]
    assert loop.remove_reader(_FilenoAs(convert(a.fileno()))) is True


@pytest.mark.parametrize("fd", [2**31, 2**70])
def test_an_fd_too_large_for_a_c_int(loop, fd):
    with pytest.raises(OverflowError):
        loop.add_reader(fd, lambda: None)
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is False


def test_the_selector_keys_hold_the_registered_object(loop, pair):
    # Private, but read by code that inspects transports: `loop._selector.get_key`.
    a, _ = pair
    loop.add_reader(a, lambda: None)
    fd = a.fileno()
    try:
        key = loop._selector.get_key(fd)
        assert key.fileobj is a and key.fd == fd
        assert a in loop._selector.get_map() and fd in loop._selector.get_map()
        assert loop._selector.get_map()[a].fileobj is a
    finally:
        loop.remove_reader(a)
    with pytest.raises(KeyError):
        loop._selector.get_key(fd)


def test_selector_lookups_of_what_cannot_be_registered(loop):
    # As the selectors module's: a closed file object never registered is a ValueError
    # (also out of get() and `in`); an fd beyond a C int is just not registered.
    import socket

    closed = socket.socket()
    closed.close()
    selector = loop._selector
    mapping = selector.get_map()
    for lookup in (selector.get_key, mapping.__getitem__, mapping.get, mapping.__contains__):
        with pytest.raises(ValueError):
            lookup(closed)
    with pytest.raises(KeyError):
        selector.get_key(2**40)
    assert mapping.get(2**40) is None


_FORK_WITH_A_STALE_WATCHER = """
import os, socket, sys
import weaveloop

loop = weaveloop.new_event_loop()
rd, wr = os.pipe()
go_r, go_w = os.pipe()
a, b = socket.socketpair()
loop.add_reader(a, lambda: None)
a.close()  # closed without remove_reader: a stale registration
got = []
loop.add_reader(rd, lambda: (got.append(os.read(rd, 10)), loop.stop()))
pid = os.fork()
if pid == 0:
    code = 1
    try:
        os.read(go_r, 1)  # the parent has stopped watching the pipe
        os.write(wr, b"ping")
        loop.call_later(30, loop.stop)  # safety net
        loop.run_forever()
        code = 0 if got == [b"ping"] else 1
    finally:
        os._exit(code)
# On an epoll shared with the child (a reset that gave up half-way), this removal would
# take the child's registration of the pipe away too.
loop.remove_reader(rd)
os.write(go_w, b"x")
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_stale_watcher_does_not_stop_the_reset_after_fork():
    # The child's loop gets a fresh poller even if a watched fd was closed without being
    # removed: the stale watcher is dropped, the reset completes, and the error is
    # reported (not swallowed). Before, the reset stopped at it and the child kept the
    # parent's epoll.
    out = run_python(_FORK_WITH_A_STALE_WATCHER, timeout=90)
    assert out.stdout.strip() == "child exit 0", out.stderr
    assert "OSError" in out.stderr


# Watchers left on fds closed without remove_reader, then a fork. The child's loop must
# not attach them to whatever file has their number by then: one the parent opened
# since, or one of the child's own fresh poller (its wake-up fd, its timer). On the
# stock loop the child's epoll set is the parent's, which forgot the closed files.
_FORK_AFTER_STALE_NUMBERS_ARE_REUSED = """
import os, socket, sys, threading, traceback
from _support import FACTORIES, wait_until_parked
loop = FACTORIES[sys.argv[1]]()
fired = []
stale = []
for _ in range(3):
    a, b = socket.socketpair()
    for s in (a, b):
        loop.add_reader(s.fileno(), fired.append, s.fileno())
        stale.append(s.fileno())
    a.close()
    b.close()
# In the parent, a pipe takes the lowest stale number, with data waiting.
r, w = os.pipe()
assert r in stale
os.write(w, b"x")
pid = os.fork()
if pid == 0:
    code = 1
    try:
        # Some iterations with data ready on the pipe (a watcher on it would run in the
        # first), ended by a callback chain, not by time.
        def chain(n):
            if n:
                loop.call_soon(chain, n - 1)
            else:
                loop.stop()
        loop.call_soon(chain, 5)
        loop.run_forever()
        assert fired == [], fired
        # Cross-thread wake-ups of a parked loop, before and after the stale watchers
        # are removed (removing them must not take the poller's own wake-up away).
        for clean_up in (False, True):
            if clean_up:
                for fd in stale:
                    loop.remove_reader(fd)
            woken = loop.create_future()
            me = threading.get_native_id()
            def post():
                wait_until_parked(me)
                loop.call_soon_threadsafe(woken.set_result, "woken")
            t = threading.Thread(target=post)
            t.start()
            safety = loop.call_later(30, woken.set_result, "timed out")
            assert loop.run_until_complete(woken) == "woken"
            safety.cancel()
            t.join()
        assert fired == [], fired
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


@needs_parked_detection
def test_a_fork_child_does_not_attach_stale_watchers_to_reused_numbers(loop_kind):
    assert_fork_script_passes(_FORK_AFTER_STALE_NUMBERS_ARE_REUSED, loop_kind)


def _own_fds() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return found


def test_the_loops_own_fds_cannot_be_watched():
    # The poller's wake-up and timer fds are in its epoll set already: watching one of
    # their numbers is refused (FileExistsError, as epoll says), instead of taking the
    # loop's own wake-ups over. (The stock loop's self-pipe is watched by design.)
    import threading

    import weaveloop

    before = _own_fds()
    loop = weaveloop.new_event_loop()
    try:
        own = [
            fd
            for fd, target in _own_fds().items()
            if fd not in before and target in ("anon_inode:[eventfd]", "anon_inode:[timerfd]")
        ]
        assert len(own) == 2
        for fd in own:
            with pytest.raises(FileExistsError):
                loop.add_reader(fd, lambda: None)
            assert not loop.remove_reader(fd)
        # The loop is still woken from another thread.
        fut = loop.create_future()
        threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, 1)).start()
        assert run(loop, fut) == 1
    finally:
        loop.close()
