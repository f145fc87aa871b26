"""The loop's socket methods ``sock_recv``, ``sock_recv_into`` and ``sock_sendall``.

Differential: every test runs on weaveloop and on the stock loop. On weaveloop a plain
non-blocking ``socket.socket`` takes the Rust path (``_core.SockWait``: the first
attempt, and the wait for readiness); other sockets, sizes, buffers and data take the
stock method. Each wait here is made certain: the operation starts before its peer
acts, and the test sees its reader or writer registered before letting the peer act.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import sys
import weakref

import pytest
from _support import SAFETY, run


def _watched(loop, sock) -> int:
    """The selector events registered for ``sock`` (0: none)."""
    try:
        return loop._selector.get_key(sock).events
    except KeyError:
        return 0


async def _started(loop, coro) -> asyncio.Task:
    """``coro`` as a task that has run up to its first wait."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    assert not task.done(), "the operation did not wait"
    return task


def test_recv_of_waiting_data_and_of_data_still_to_come(loop, pair):
    a, b = pair

    async def main():
        b.send(b"ready")
        now = await loop.sock_recv(a, 100)
        task = await _started(loop, loop.sock_recv(a, 100))
        assert _watched(loop, a) == 1  # EVENT_READ
        b.send(b"later")
        later = await task
        return now, later, _watched(loop, a)

    assert run(loop, main()) == (b"ready", b"later", 0)


def test_recv_at_eof_and_of_more_than_is_waiting(loop, pair):
    a, b = pair

    async def main():
        task = await _started(loop, loop.sock_recv(a, 3))
        b.send(b"abcdef")
        first = await task
        rest = await loop.sock_recv(a, 100)
        b.shutdown(socket.SHUT_WR)
        return first, rest, await loop.sock_recv(a, 100)

    assert run(loop, main()) == (b"abc", b"def", b"")


@pytest.mark.parametrize("n", [0, 300 * 1024, True], ids=["zero", "over-256k", "bool"])
def test_recv_sizes_the_rust_path_leaves_to_the_stock_method(loop, pair, n):
    a, b = pair
    payload = b"x" * 1000

    async def main():
        task = await _started(loop, loop.sock_recv(a, n)) if n else None
        b.send(payload)
        if task is None:
            return await loop.sock_recv(a, n)
        return await task

    assert run(loop, main()) == (b"" if n == 0 else payload[: int(n)])


@pytest.mark.parametrize(
    "n, exc", [(-1, ValueError), (1.5, TypeError), ("7", TypeError)], ids=["neg", "float", "str"]
)
def test_bad_recv_sizes_raise_what_socket_recv_raises(loop, pair, n, exc):
    a, _ = pair
    with pytest.raises(exc) as caught:
        run(loop, loop.sock_recv(a, n))
    with pytest.raises(exc) as direct:
        a.recv(n)
    assert str(caught.value) == str(direct.value)


def test_recv_into_buffers(loop, pair):
    a, b = pair

    async def main():
        whole = bytearray(8)
        b.send(b"01234567")
        n1 = await loop.sock_recv_into(a, whole)
        part = bytearray(8)
        task = await _started(loop, loop.sock_recv_into(a, memoryview(part)[2:5]))
        assert _watched(loop, a) == 1
        b.send(b"abcdef")
        n2 = await task
        return n1, bytes(whole), n2, bytes(part)

    assert run(loop, main()) == (8, b"01234567", 3, b"\0\0abc\0\0\0")


def test_recv_into_an_empty_buffer_and_at_eof(loop, pair):
    a, b = pair

    async def main():
        empty = await loop.sock_recv_into(a, bytearray())
        b.shutdown(socket.SHUT_WR)
        return empty, await loop.sock_recv_into(a, bytearray(4))

    assert run(loop, main()) == (0, 0)


def test_recv_into_a_read_only_buffer_raises_what_socket_recv_into_raises(loop, pair):
    a, b = pair
    b.send(b"x")
    with pytest.raises(TypeError) as caught:
        run(loop, loop.sock_recv_into(a, b"read-only"))
    with pytest.raises(TypeError) as direct:
        a.recv_into(b"read-only")
    assert str(caught.value) == str(direct.value)


def _fill(sock) -> int:
    """Sends until ``sock`` takes no more; how much went."""
    sent = 0
    chunk = b"f" * 65536
    while True:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            return sent


async def _drain(loop, sock, n: int, size: int = 65536) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = await loop.sock_recv(sock, size)
        assert data, "EOF before everything arrived"
        got += data
    return bytes(got)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_sendall_of_more_than_the_socket_takes(loop, pair, kind):
    a, b = pair
    data = bytes(range(256)) * 8192  # 2 MiB

    async def main():
        sending = await _started(loop, loop.sock_sendall(a, kind(data)))
        assert _watched(loop, a) == 2  # EVENT_WRITE
        got = await _drain(loop, b, len(data))
        assert await sending is None
        return got, _watched(loop, a)

    got, watched = run(loop, main())
    assert got == data and watched == 0


def test_large_reads_of_a_long_stream(loop, pair):
    # Reads of up to 256 KiB, large and small, while a long sendall waits and resumes:
    # on weaveloop they pass between the Rust path and the stock method (see the last
    # test), and the stream arrives whole and in order.
    a, b = pair
    data = bytes(range(251)) * 40_000  # about 10 MB, no period of a power of two

    async def main():
        sending = asyncio.ensure_future(loop.sock_sendall(a, data))
        got = await _drain(loop, b, len(data), 256 * 1024)
        await sending
        return got

    assert run(loop, main()) == data


def test_sendall_that_waits_then_goes_out_at_once(loop, pair):
    a, b = pair

    async def main():
        filled = _fill(a)
        sending = await _started(loop, loop.sock_sendall(a, b"tail"))
        got = await _drain(loop, b, filled + 4)
        await sending
        return got[-4:], await loop.sock_sendall(a, b"now")

    assert run(loop, main()) == (b"tail", None)
    assert b.recv(10) == b"now"


def test_sendall_to_a_closed_peer_fails_as_the_socket_does(loop, pair):
    a, b = pair

    async def main():
        _fill(a)
        sending = await _started(loop, loop.sock_sendall(a, b"x" * 100))
        b.close()
        await sending

    with pytest.raises(OSError) as caught:
        run(loop, main())
    assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)
    with pytest.raises(OSError) as again:
        run(loop, loop.sock_sendall(a, b"y"))
    assert again.value.errno == errno.EPIPE


def test_a_failed_recv_wait_sets_the_socket_error(loop):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setblocking(False)
    try:

        async def main():
            await loop.sock_connect(client, listener.getsockname())
            server, _ = listener.accept()
            task = await _started(loop, loop.sock_recv(client, 100))
            # A reset: the waiting recv fails with the socket's error.
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            server.close()
            return await task

        with pytest.raises(ConnectionResetError):
            run(loop, main())
    finally:
        client.close()
        listener.close()


def _waiting_op(loop, sock, op: str):
    """The coroutine of ``op`` on ``sock``, which will have to wait: nothing is waiting
    to be read, and for "sendall" the socket is filled first."""
    if op == "sendall":
        _fill(sock)
        return loop.sock_sendall(sock, b"z" * 10)
    if op == "recv_into":
        return loop.sock_recv_into(sock, bytearray(10))
    return loop.sock_recv(sock, 10)


@pytest.mark.parametrize("op", ["recv", "recv_into", "sendall"])
def test_a_cancelled_wait_removes_its_watcher(loop, pair, op):
    a, b = pair

    async def main():
        task = await _started(loop, _waiting_op(loop, a, op))
        waiting = _watched(loop, a)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the future's done callbacks run
        return waiting, _watched(loop, a)

    waiting, after = run(loop, main())
    assert waiting in (1, 2) and after == 0


def test_a_watcher_that_replaced_the_wait_is_left_alone(loop, pair):
    a, b = pair
    calls = []

    async def main():
        task = await _started(loop, loop.sock_recv(a, 10))
        loop.add_reader(a, calls.append, "mine")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        still = _watched(loop, a)
        b.send(b"!")
        while not calls:
            await asyncio.sleep(0)
        return still

    assert run(loop, main()) == 1
    assert calls[0] == "mine"
    assert loop.remove_reader(a) is True


def test_a_transport_owning_the_fd_is_refused_when_waiting(loop):
    a, b = socket.socketpair()

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(a, 10)
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(a.fileno(), print)
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.remove_writer(a)
        finally:
            transport.close()
            await asyncio.sleep(0)

    try:
        run(loop, main())
    finally:
        b.close()


class _CountingSocket(socket.socket):
    calls = 0

    def recv(self, n, *flags):
        type(self).calls += 1
        return super().recv(n, *flags)


def test_a_socket_class_that_overrides_recv_is_read_through_it(loop):
    raw_a, b = socket.socketpair()
    a = _CountingSocket(fileno=raw_a.detach())
    a.setblocking(False)
    try:

        async def main():
            task = await _started(loop, loop.sock_recv(a, 10))
            b.send(b"sub")
            return await task

        assert run(loop, main()) == b"sub"
        assert _CountingSocket.calls >= 2  # the first attempt and the one that read
    finally:
        a.close()
        b.close()


def test_debug_mode_refuses_a_blocking_socket(loop, pair):
    a, _ = pair
    a.setblocking(True)
    loop.set_debug(True)
    for call in (
        lambda: loop.sock_recv(a, 1),
        lambda: loop.sock_recv_into(a, bytearray(1)),
        lambda: loop.sock_sendall(a, b"x"),
    ):
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            run(loop, call())


def test_an_ssl_socket_is_refused(loop):
    ssl = pytest.importorskip("ssl")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    sock = context.wrap_socket(socket.socket(), do_handshake_on_connect=False)
    with sock:
        with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
            run(loop, loop.sock_recv(sock, 1))


def test_a_socket_closed_before_the_call_fails_as_the_socket_does(loop, pair):
    a, _ = pair
    a.close()
    for call in (
        lambda: loop.sock_recv(a, 1),
        lambda: loop.sock_recv_into(a, bytearray(1)),
        lambda: loop.sock_sendall(a, b"x"),
    ):
        with pytest.raises(OSError) as caught:
            run(loop, call())
        assert caught.value.errno == errno.EBADF
        assert str(caught.value) == "[Errno 9] Bad file descriptor"


def test_a_finished_wait_leaves_no_cycle_behind(loop, pair):
    a, b = pair
    refs = []

    async def main():
        task = await _started(loop, loop.sock_recv(a, 10))
        refs.append(weakref.ref(task))
        b.send(b"ok")
        return await task

    gc.disable()
    try:
        assert run(loop, main()) == b"ok"
        run(loop, asyncio.sleep(0))
        assert refs[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("op", ["recv", "recv_into", "sendall"])
def test_the_wait_for_a_plain_socket_is_rusts(wloop, pair, op):
    # weaveloop only: which path ran is not behaviour the stock loop has. Without this,
    # a plain socket quietly falling back to the stock method would pass everything.
    a, b = pair
    names = {
        "recv": "BaseSelectorEventLoop._sock_recv",
        "recv_into": "BaseSelectorEventLoop._sock_recv_into",
        "sendall": "BaseSelectorEventLoop._sock_sendall",
    }

    async def main():
        task = await _started(wloop, _waiting_op(wloop, a, op))
        reader, writer = wloop._selector.get_key(a).data
        callback = (writer if op == "sendall" else reader)._callback
        task.cancel()
        return type(callback).__name__, callback.__qualname__

    assert run(wloop, main()) == ("SockWait", names[op])


def test_a_finished_wait_leaves_nothing_that_reports_for_a_later_file(loop, pair):
    # On weaveloop a finished wait's one-shot registration stays in the epoll set,
    # disabled (the next wait re-arms it with one call). Here its file outlives the
    # number (a duplicate keeps it open) and the number goes to a new file, watched with
    # add_reader: the old file's readiness must not reach the new file's reader.
    a, b = pair
    number = a.fileno()
    kept = os.dup(number)
    c, d = socket.socketpair()
    c.setblocking(False)
    marker_r, marker_w = os.pipe()
    calls = []

    def on_readable():
        try:
            calls.append(os.read(number, 100))
        except BlockingIOError:
            calls.append("spurious")

    try:

        async def main():
            task = await _started(loop, loop.sock_recv(a, 10))
            b.send(b"first")
            assert await task == b"first"
            await asyncio.sleep(0)
            os.dup2(c.fileno(), number)  # the old file lives on as `kept` only
            loop.add_reader(number, on_readable)
            polled = loop.create_future()
            loop.add_reader(marker_r, lambda: polled.done() or polled.set_result(None))
            b.send(b"old")  # the old file is readable...
            os.write(marker_w, b"!")  # ...before the poll that reports the marker
            await polled
            await asyncio.sleep(0)
            assert calls == []
            d.send(b"new")
            while not calls:
                await asyncio.sleep(0)
            loop.remove_reader(number)
            loop.remove_reader(marker_r)
            return calls

        assert run(loop, main()) == [b"new"]
    finally:
        for fd in (kept, marker_r, marker_w):
            os.close(fd)
        c.close()
        d.close()


def test_large_reads_hand_sock_recv_to_the_stock_method_until_smaller_ones(wloop, pair):
    # weaveloop only: a Rust read of 64 KiB or more sends the loop's sock_recv to the
    # stock method (whose allocation per read glibc's heap keeps warm), and 16 smaller
    # reads in a row give it back. Which path waits shows in the watcher's callback.
    a, b = pair

    def waiting_callback() -> str:
        return type(wloop._selector.get_key(a).data[0]._callback).__name__

    async def read_one(tag: bytes) -> str:
        task = await _started(wloop, wloop.sock_recv(a, 10))
        which = waiting_callback()
        b.send(tag)
        assert await task == tag
        return which

    async def main():
        b.send(b"x" * 70_000)
        assert len(await wloop.sock_recv(a, 100_000)) == 70_000
        paths = [await read_one(b"%d" % i) for i in range(16)]
        b.send(b"y" * 70_000)  # a large read of the stock method keeps it so
        assert len(await wloop.sock_recv(a, 100_000)) == 70_000
        paths += [await read_one(b"%d" % i) for i in range(17)]
        return paths

    assert run(wloop, main()) == ["method"] * 32 + ["SockWait"]


def test_a_file_back_under_the_number_of_its_finished_wait_is_watched_again(loop, pair):
    # On weaveloop a finished wait's registration stays in the epoll set (dormant); a
    # duplicate keeps its file open while another file takes the number and is watched
    # and unwatched; then the first file comes back under the number. The stock loop
    # removed its registration at once; weaveloop's registering the file again must not
    # fail on the dormant one (EEXIST) and must report its readiness.
    a, b = pair
    number = a.fileno()
    kept = os.dup(number)
    c, d = socket.socketpair()
    try:

        async def main():
            task = await _started(loop, loop.sock_recv(a, 10))
            b.send(b"1")
            assert await task == b"1"
            os.dup2(c.fileno(), number)  # the socket object `a` now names c's file
            loop.add_reader(number, print)
            loop.remove_reader(number)
            os.dup2(kept, number)  # and its own again
            task = await _started(loop, loop.sock_recv(a, 10))
            b.send(b"2")
            return await task

        assert run(loop, main()) == b"2"
    finally:
        os.close(kept)
        c.close()
        d.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ is Python 3.12's")
def test_a_buffer_whose_export_closes_the_socket_fails_as_the_socket_does(loop, pair):
    # Getting a buffer runs its class's __buffer__: here it closes the socket and puts
    # another readable file under its number. The read must not reach that file.
    a, b = pair
    number = a.fileno()
    c, d = socket.socketpair()
    d.send(b"not yours")

    exports = 0

    class Sneaky:
        def __buffer__(self, flags):
            nonlocal exports
            exports += 1
            a.close()
            os.dup2(c.fileno(), number)
            return memoryview(bytearray(16))

    try:
        with pytest.raises(OSError) as caught:
            run(loop, loop.sock_recv_into(a, Sneaky()))
        assert caught.value.errno == errno.EBADF
        assert exports == 1  # as the stock method gets it: once
    finally:
        os.close(number)
        c.close()
        d.close()


@pytest.mark.parametrize("first", ["sock_recv", "add_reader"])
def test_a_new_socket_under_the_number_of_one_closed_while_watched_is_watched(wloop, first):
    # A socket closed while still watched (a sock_recv wait left pending, or a reader
    # never removed), and a new socket under its number watched the other way: the new
    # socket's watcher works. (The stock loop makes no epoll call for the unchanged
    # mask, so nothing watches the new socket: its reader never fires, its read hangs.)
    a, b = socket.socketpair()
    a.setblocking(False)
    number = a.fileno()

    async def main():
        left = None
        if first == "sock_recv":
            left = await _started(wloop, wloop.sock_recv(a, 10))
        else:
            wloop.add_reader(a, lambda: None)
        a.close()
        b.close()
        c, d = socket.socketpair()
        with c, d:
            c.setblocking(False)
            assert c.fileno() == number, "the lowest free number is the closed socket's"
            if first == "sock_recv":
                got = wloop.create_future()
                wloop.add_reader(c, lambda: got.done() or got.set_result(c.recv(10)))
            else:
                got = await _started(wloop, wloop.sock_recv(c, 10))
            d.send(b"x")
            result = await asyncio.wait_for(got, SAFETY)
            wloop.remove_reader(number)
        if left is not None:
            left.cancel()
        return result

    assert run(wloop, main()) == b"x"
