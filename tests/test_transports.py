"""Socket transports: what protocols receive, differential against the stock loop.

weaveloop's socket transport reads into one buffer per loop and copies each read out
(the stock one allocates a fresh 256 KiB bytes object per read); protocols must not be
able to tell: each read arrives as its own bytes object of at most ``max_size`` bytes,
and nothing a later read does changes what an earlier one delivered.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import ssl
import struct
import sys
import threading
import traceback
import warnings
import weakref

import pytest
import weaveloop
from _support import LoopThread, run


class _Collect(asyncio.Protocol):
    def __init__(self, max_size: int | None, done: asyncio.Future, expected: int) -> None:
        self.max_size = max_size
        self.done = done
        self.expected = expected
        self.chunks: list[bytes] = []

    def connection_made(self, transport) -> None:
        if self.max_size is not None:
            transport.max_size = self.max_size

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        if sum(map(len, self.chunks)) >= self.expected and not self.done.done():
            self.done.set_result(None)


@pytest.mark.parametrize("max_size", [None, 1000, 100_000])
def test_reads_arrive_as_separate_bytes_within_max_size(loop, max_size):
    # (On weaveloop, after a read of 64 KiB or more, a reader that finds that much
    # waiting receives it straight into the bytes object it hands over: the large
    # payloads go that way, cut at max_size.)
    payloads = [os.urandom(3_000_000), os.urandom(300_000), os.urandom(5_000)]
    total = sum(map(len, payloads))

    async def main():
        done = loop.create_future()
        protocols = []

        def factory():
            protocols.append(_Collect(max_size, done, total))
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for p in payloads:
            writer.write(p)
            await writer.drain()
        await done
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return protocols[0].chunks

    chunks = run(loop, main())
    assert all(type(c) is bytes for c in chunks)
    assert max(map(len, chunks)) <= (max_size or 256 * 1024)
    # Joined only now, after every read: an earlier chunk is not a view that a later
    # read overwrote.
    assert b"".join(chunks) == b"".join(payloads)


def test_connections_read_in_turn_keep_their_own_data(loop):
    # Several connections of one loop, read in the same iterations (one shared buffer
    # on weaveloop): each protocol gets exactly its peer's bytes.
    n, size = 8, 50_000
    payloads = [bytes([i]) * size for i in range(n)]

    async def main():
        done = [loop.create_future() for _ in range(n)]
        protocols = []

        def factory():
            protocols.append(_Collect(None, done[len(protocols)], size))
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        writers = []
        for _ in range(n):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            writers.append(w)
        for i, w in enumerate(writers):
            # Each connection's first byte tells which connection the server side is.
            w.write(payloads[i])
        await asyncio.gather(*(w.drain() for w in writers))
        await asyncio.gather(*done)
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()
        return [b"".join(p.chunks) for p in protocols]

    received = run(loop, main())
    assert sorted(received) == sorted(payloads)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future, expected: int) -> None:
        self.done = done
        self.expected = expected
        self.received: list[tuple[bytes, object]] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((data, addr))
        if len(self.received) == self.expected and not self.done.done():
            self.done.set_result(None)


@pytest.mark.parametrize("max_size", [None, 1000])
def test_datagrams_arrive_as_separate_bytes_with_their_sender(loop, max_size):
    # weaveloop's datagram transport also receives into the loop's buffer: each datagram
    # is its own bytes object, cut at max_size as recvfrom(max_size) cuts it, and a later
    # datagram changes nothing delivered earlier.
    datagrams = [os.urandom(n) for n in (1, 1500, 3000, 40_000, 7)]

    async def main():
        done = loop.create_future()
        server, protocol = await loop.create_datagram_endpoint(
            lambda: _Datagrams(done, len(datagrams)), local_addr=("127.0.0.1", 0)
        )
        if max_size is not None:
            server.max_size = max_size
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=server.get_extra_info("sockname")
        )
        if isinstance(loop, weaveloop.Loop):
            # (IPv4: the Rust reader is the one registered.)
            assert type(server._read_ready) is weaveloop._core.DatagramReader
        for d in datagrams:
            client.sendto(d)
        await done
        sender = client.get_extra_info("sockname")
        client.close()
        server.close()
        return protocol.received, sender

    received, sender = run(loop, main())
    assert all(type(data) is bytes for data, _ in received)
    assert [addr for _, addr in received] == [sender] * len(datagrams)
    limit = max_size or 256 * 1024
    assert [data for data, _ in received] == [d[:limit] for d in datagrams]


class _Rewriting(socket.socket):
    """A socket whose reads an instrumenting subclass rewrites."""

    def recv(self, n, *flags):
        return super().recv(n, *flags).upper()

    def recvfrom(self, n, *flags):
        data, addr = super().recvfrom(n, *flags)
        return data.upper(), addr


def _stream_read(loop, max_size: int | None, sock_class=socket.socket):
    """What the protocol of a stream transport on ``sock_class`` gets (chunks) and
    whether it saw EOF, for one b"hello" + close from the peer."""

    async def main():
        done = loop.create_future()
        chunks, eofs = [], []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                if max_size is not None:
                    transport.max_size = max_size

            def data_received(self, data):
                chunks.append(data)

            def eof_received(self):
                eofs.append(True)

            def connection_lost(self, exc):
                done.set_result(exc)

        a, b = socket.socketpair()
        mine = sock_class(fileno=a.detach())
        mine.setblocking(False)
        transport, _ = await loop.create_connection(P, sock=mine)
        b.sendall(b"hello")
        b.close()
        exc = await done
        return chunks, eofs, exc

    return run(loop, main())


def test_a_socket_subclass_reads_through_its_own_recv(loop):
    chunks, eofs, exc = _stream_read(loop, None, _Rewriting)
    assert b"".join(chunks) == b"HELLO" and eofs == [True] and exc is None


def test_max_size_zero_reads_as_eof(loop):
    # recv(0) returns b"": the stock transport takes it for EOF.
    chunks, eofs, exc = _stream_read(loop, 0)
    assert chunks == [] and eofs == [True] and exc is None


def test_a_max_size_beyond_the_default_reads_all_and_keeps_the_buffer_small(loop):
    chunks, eofs, exc = _stream_read(loop, 64 * 1024 * 1024)
    assert b"".join(chunks) == b"hello" and eofs == [True] and exc is None
    # (weaveloop: reads above 256 KiB do not grow the loop's receive buffer for good.)
    assert len(getattr(loop, "_recv_buffer", b"")) <= 256 * 1024


def test_a_datagram_socket_subclass_and_max_size_zero(loop):
    async def main():
        got = []
        arrived = [loop.create_future(), loop.create_future()]

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                arrived[len(got)].set_result(None)
                got.append(data)

        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        mine = _Rewriting(fileno=a.detach())
        mine.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(P, sock=mine)
        b.send(b"abc")
        await arrived[0]
        transport.max_size = 0
        b.send(b"def")
        await arrived[1]
        transport.close()
        b.close()
        return got

    # Through the subclass's recvfrom; then recvfrom(0): an empty datagram.
    assert run(loop, main()) == [b"ABC", b""]


# The read path of weaveloop's socket transport is Rust (``_core.SocketReader``); what
# follows pins its outcomes other than data to the stock transport's.


def _connected_pair(loop, protocol_factory):
    """A transport on one end of a TCP connection (so a peer can reset it) and the
    plain socket at the other end."""

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        peer = socket.create_connection(listener.getsockname())
        mine, _ = listener.accept()
        listener.close()
        mine.setblocking(False)
        transport, protocol = await loop.create_connection(protocol_factory, sock=mine)
        if isinstance(loop, weaveloop.Loop):
            # (What these tests are about: the Rust reader is the one registered.)
            assert type(transport._read_ready) is weaveloop._core.SocketReader
        return transport, protocol, peer

    return run(loop, main())


class _Lost(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.get_running_loop().create_future()
        self.chunks: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        if not self.arrived.done():
            self.arrived.set_result(None)

    def connection_lost(self, exc) -> None:
        self.lost.set_result(exc)


def test_a_reset_connection_is_lost_with_the_os_error(loop, caplog):
    # In debug mode the stock transport logs an OSError from a read (and does not call
    # the exception handler).
    loop.set_debug(True)
    transport, protocol, peer = _connected_pair(loop, _Lost)
    # SO_LINGER 0: closing sends a reset, and the next read fails with ECONNRESET.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        exc = run(loop, asyncio.wait_for(protocol.lost, 10))
    assert type(exc) is ConnectionResetError
    [record] = [r for r in caplog.records if r.exc_info and r.exc_info[1] is exc]
    assert record.getMessage().endswith(": Fatal read error on socket transport")
    assert exc.errno == 104 and exc.strerror == os.strerror(104)
    assert transport.is_closing()


def _reported(loop) -> list[dict]:
    """What the loop's exception handler will be given, from now on."""
    contexts: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    return contexts


def _lost_after_a_byte(loop, protocol_factory):
    """A connected transport whose peer sends one byte: the exception its connection is
    lost with, the transport, its protocol and what the exception handler was given."""
    contexts = _reported(loop)
    transport, protocol, peer = _connected_pair(loop, protocol_factory)
    peer.sendall(b"x")
    exc = run(loop, asyncio.wait_for(protocol.lost, 10))
    peer.close()
    return exc, transport, protocol, contexts


def test_a_raising_data_received_is_reported_and_closes_the_transport(loop):
    class Raising(_Lost):
        def data_received(self, data):
            raise ZeroDivisionError("protocol bug")

    exc, transport, protocol, contexts = _lost_after_a_byte(loop, Raising)
    assert type(exc) is ZeroDivisionError
    [context] = contexts
    assert context["message"] == "Fatal error: protocol.data_received() call failed."
    assert context["exception"] is exc and context["transport"] is transport
    assert context["protocol"] is protocol
    # Reported with the traceback of where it was raised.
    assert exc.__traceback__ is not None
    assert any(f.name == "data_received" for f in traceback.extract_tb(exc.__traceback__))


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_from_data_received_propagates(loop, exc_type):
    class Interrupted(_Lost):
        def data_received(self, data):
            raise exc_type()

    transport, protocol, peer = _connected_pair(loop, Interrupted)
    peer.sendall(b"x")
    with pytest.raises(exc_type):
        run(loop, asyncio.wait_for(protocol.lost, 10))
    # The loop is usable afterwards and the connection still open.
    assert not transport.is_closing()
    transport.close()
    peer.close()
    assert run(loop, asyncio.wait_for(protocol.lost, 10)) is None


def test_an_invalid_max_size_fails_as_on_the_stock_transport(loop):
    class Sized(_Lost):
        def connection_made(self, transport):
            transport.max_size = "large"

    exc, _, _, contexts = _lost_after_a_byte(loop, Sized)
    assert type(exc) is TypeError
    assert [c["message"] for c in contexts] == ["Fatal read error on socket transport"]


class _Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(64)
        self.received = bytearray()
        self.arrived = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.received += self.buf[:nbytes]
        if not self.arrived.done():
            self.arrived.set_result(None)


def test_set_protocol_switches_between_plain_and_buffered_reads(loop):
    transport, plain, peer = _connected_pair(loop, _Lost)

    async def send_and_wait(data, arrived):
        peer.sendall(data)
        await asyncio.wait_for(arrived, 10)

    async def main():
        await send_and_wait(b"one", plain.arrived)
        buffered = _Buffered()
        transport.set_protocol(buffered)
        await send_and_wait(b"two", buffered.arrived)
        back = _Lost()
        transport.set_protocol(back)
        await send_and_wait(b"three", back.arrived)
        transport.close()
        return plain.chunks, bytes(buffered.received), back.chunks

    assert run(loop, main()) == ([b"one"], b"two", [b"three"])
    peer.close()


def test_reading_resumes_after_pause(loop):
    transport, protocol, peer = _connected_pair(loop, _Lost)

    async def main():
        transport.pause_reading()
        peer.sendall(b"held")
        # Not read while paused: a zero-delay round of the loop leaves it in the socket.
        for _ in range(5):
            await asyncio.sleep(0)
        assert protocol.chunks == []
        transport.resume_reading()
        await asyncio.wait_for(protocol.arrived, 10)
        transport.close()
        return protocol.chunks

    assert run(loop, main()) == [b"held"]
    peer.close()


# Buffered protocols: weaveloop's reader receives into the protocol's buffer from Rust
# (the stock ``_read_ready__get_buffer``); buffers it cannot write into directly are
# handed to ``sock.recv_into`` as the stock transport does.


class _Into(asyncio.BufferedProtocol):
    """Hands out a buffer from ``make()`` per read; collects what each read put in it."""

    def __init__(self, make, expected: int) -> None:
        loop = asyncio.get_running_loop()
        self.make = make
        self.expected = expected
        self.received = bytearray()
        self.sizes: list[int] = []
        self.done = loop.create_future()
        self.lost = loop.create_future()
        self.eof = False

    def get_buffer(self, sizehint):
        self.buf = self.make()
        return self.buf

    def buffer_updated(self, nbytes):
        self.sizes.append(nbytes)
        self.received += memoryview(self.buf).cast("B")[:nbytes]
        if len(self.received) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize(
    "make",
    [
        lambda: bytearray(65536),
        lambda: memoryview(bytearray(100_000))[1000:70_000],
        lambda: array.array("i", bytes(4 * 5000)),
        lambda: memoryview(bytearray(4096)).cast("I"),
    ],
    ids=["bytearray", "memoryview-slice", "array-of-int", "memoryview-of-int"],
)
def test_a_buffered_protocol_receives_every_byte_into_its_buffers(loop, make):
    payload = os.urandom(1_000_000)
    transport, protocol, peer = _connected_pair(loop, lambda: _Into(make, len(payload)))

    def send():
        peer.sendall(payload)
        peer.shutdown(socket.SHUT_WR)

    async def main():
        await loop.run_in_executor(None, send)
        await asyncio.wait_for(protocol.done, 10)
        return await asyncio.wait_for(protocol.lost, 10)

    assert run(loop, main()) is None
    peer.close()
    assert bytes(protocol.received) == payload
    assert max(protocol.sizes) <= memoryview(make()).nbytes
    assert protocol.eof


def _refusal(buf) -> BaseException:
    """What the socket module's recv_into raises for ``buf`` (the oracle)."""
    a, b = socket.socketpair()
    try:
        b.send(b"x")
        with pytest.raises(BaseException) as info:
            a.recv_into(buf)
        return info.value
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "make",
    [lambda: bytes(100), lambda: memoryview(bytearray(100))[::2]],
    ids=["read-only", "not-contiguous"],
)
def test_a_buffer_the_socket_cannot_write_is_a_fatal_read_error(loop, make):
    expected = _refusal(make())
    exc, transport, protocol, contexts = _lost_after_a_byte(loop, lambda: _Into(make, 1))
    assert type(exc) is type(expected) and str(exc) == str(expected)
    [context] = contexts
    assert context["message"] == "Fatal read error on socket transport"
    assert context["exception"] is exc


class _BadBuffers(_Into):
    def __init__(self, fault: str) -> None:
        super().__init__(lambda: bytearray(0 if fault == "empty" else 16), 1)
        self.fault = fault

    def get_buffer(self, sizehint):
        if self.fault == "get_buffer":
            raise ValueError("no buffer today")
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        if self.fault == "buffer_updated":
            raise ValueError("cannot take it")
        super().buffer_updated(nbytes)


@pytest.mark.parametrize(
    ("fault", "error", "text", "message"),
    [
        (
            "empty",
            RuntimeError,
            "get_buffer() returned an empty buffer",
            "Fatal error: protocol.get_buffer() call failed.",
        ),
        (
            "get_buffer",
            ValueError,
            "no buffer today",
            "Fatal error: protocol.get_buffer() call failed.",
        ),
        (
            "buffer_updated",
            ValueError,
            "cannot take it",
            "Fatal error: protocol.buffer_updated() call failed.",
        ),
    ],
)
def test_a_failing_buffered_protocol_is_reported_as_on_the_stock_transport(
    loop, fault, error, text, message
):
    exc, transport, protocol, contexts = _lost_after_a_byte(loop, lambda: _BadBuffers(fault))
    assert type(exc) is error and str(exc) == text
    [context] = contexts
    assert context["message"] == message
    assert context["exception"] is exc and context["protocol"] is protocol


# The write path: ``_core.SocketWriter`` is a weaveloop socket transport's ``write``.


def test_the_rust_writer_is_the_transports_write(loop):
    transport, protocol, peer = _connected_pair(loop, _Lost)
    if isinstance(loop, weaveloop.Loop):
        assert type(transport.write) is weaveloop._core.SocketWriter
    transport.close()
    peer.close()
    run(loop, asyncio.wait_for(protocol.lost, 10))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        assert chunk, "the peer closed early"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _Flow(_Lost):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.resumed = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_writes_beyond_what_the_socket_takes_are_buffered_in_order(loop, kind):
    # The first write fills the socket and the rest is buffered (a partial send), the
    # second goes behind it; flow control pauses and resumes the protocol; the peer gets
    # every byte in order.
    transport, protocol, peer = _connected_pair(loop, _Flow)
    first, second = os.urandom(8 << 20), os.urandom(100_000)

    async def main():
        transport.write(kind(first))
        assert transport.get_write_buffer_size() > 0
        assert protocol.events == ["pause"]  # over the high-water mark at once
        transport.write(kind(second))
        assert protocol.events == ["pause"]
        reader = loop.run_in_executor(None, _read_exactly, peer, len(first) + len(second))
        await asyncio.wait_for(protocol.resumed, 10)
        return await asyncio.wait_for(reader, 10)

    assert run(loop, main()) == first + second
    assert protocol.events == ["pause", "resume"]
    assert transport.get_write_buffer_size() == 0
    transport.close()
    peer.close()


def test_writing_to_a_reset_connection_loses_it_with_the_os_error(loop, caplog):
    loop.set_debug(True)
    transport, protocol, peer = _connected_pair(loop, _Lost)
    transport.pause_reading()  # the reset is then met by a write, not by a read
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()

    async def main():
        # Until the reset has arrived a write may still be taken by the kernel.
        while not protocol.lost.done():
            transport.write(b"x" * 1000)
            await asyncio.sleep(0)
        return protocol.lost.result()

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        exc = run(loop, main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
    messages = [r.getMessage() for r in caplog.records if r.exc_info and r.exc_info[1] is exc]
    assert len(messages) == 1
    assert messages[0].endswith(": Fatal write error on socket transport")


def test_writes_after_the_connection_is_lost_are_counted_then_warned(loop, caplog):
    transport, protocol, peer = _connected_pair(loop, _Lost)
    transport.abort()
    peer.close()
    assert run(loop, asyncio.wait_for(protocol.lost, 10)) is None
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(7):
            transport.write(b"late")
    warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
    assert len(warned) == 3  # from the 5th lost write on, as the stock transport does


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda t: t.write("text"),
            TypeError,
            "data argument must be a bytes-like object, not 'str'",
        ),
        (
            lambda t: (t.write_eof(), t.write(b"x")),
            RuntimeError,
            "Cannot call write() after write_eof()",
        ),
    ],
    ids=["str", "after-write_eof"],
)
def test_write_refuses_as_the_stock_transport_does(loop, call, error, message):
    transport, protocol, peer = _connected_pair(loop, _Lost)
    with pytest.raises(error) as info:
        call(transport)
    assert str(info.value) == message
    transport.close()
    peer.close()
    run(loop, asyncio.wait_for(protocol.lost, 10))


class _Errors(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.error = loop.create_future()
        self.arrived = loop.create_future()
        self.handled = None

    def datagram_received(self, data, addr) -> None:
        if not self.arrived.done():
            self.arrived.set_result(data)

    def error_received(self, exc) -> None:
        self.handled = sys.exc_info()[1]
        if not self.error.done():
            self.error.set_result(exc)


def test_a_refused_datagram_is_an_error_received(loop):
    # A connected UDP socket whose peer port is closed: the ICMP "port unreachable" is
    # ConnectionRefusedError from the next receive, handed to error_received (inside
    # the except clause that caught it, as the stock transport calls it).
    async def main():
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
        closed.close()
        transport, protocol = await loop.create_datagram_endpoint(_Errors, remote_addr=address)
        transport.sendto(b"anyone?")
        exc = await asyncio.wait_for(protocol.error, 10)
        transport.close()
        return exc, protocol.handled

    exc, handled = run(loop, main())
    assert type(exc) is ConnectionRefusedError and exc.errno == errno.ECONNREFUSED
    assert handled is exc


def test_a_raising_datagram_received_goes_to_the_exception_handler(loop):
    class Raising(_Errors):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise ZeroDivisionError("protocol bug")

    contexts = _reported(loop)

    async def main():
        server, protocol = await loop.create_datagram_endpoint(Raising, local_addr=("127.0.0.1", 0))
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"boom")
        await asyncio.wait_for(protocol.arrived, 10)
        # The transport reads on: the next datagram arrives.
        protocol.arrived = loop.create_future()
        client.sendto(b"next")
        data = await asyncio.wait_for(protocol.arrived, 10)
        client.close()
        server.close()
        return data

    assert run(loop, main()) == b"next"
    [context] = contexts
    assert type(context["exception"]) is ZeroDivisionError
    # (weaveloop's IPv4 reader is Rust, named after the stock method it stands in for.)
    assert context["message"] == "Exception in callback _SelectorDatagramTransport._read_ready()"


def test_an_invalid_datagram_max_size_fails_as_on_the_stock_transport(loop):
    contexts = _reported(loop)

    async def main():
        server, protocol = await loop.create_datagram_endpoint(_Errors, local_addr=("127.0.0.1", 0))
        server.max_size = "large"
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"x")
        while not server.is_closing():
            await asyncio.sleep(0)
        client.close()

    run(loop, main())
    assert [c["message"] for c in contexts] == ["Fatal read error on datagram transport"]
    assert type(contexts[0]["exception"]) is TypeError


def test_an_unclosed_datagram_transport_is_freed_when_its_loop_closes(loop):
    # As the stock one, whose only holder is its reader's registration: close() lets go
    # of it, and its __del__ warns and closes the socket at once. weaveloop's Rust
    # reader and sendto, attributes of the transport, once held it in a cycle: the
    # socket stayed open until the cyclic GC, which warned of the socket too.
    async def main():
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        return transport.get_extra_info("socket").fileno(), weakref.ref(transport)

    fd, transport = run(loop, main())
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop.close()
            still_open = os.path.exists(f"/proc/self/fd/{fd}")
        warned = [str(w.message).split(" <")[0] for w in caught]
        del caught  # a record holds the transport (its `source`)
        freed = transport() is None
    finally:
        gc.enable()
    assert (freed, still_open) == (True, False)
    assert warned == ["unclosed transport"]


class _Forgetful(asyncio.DatagramProtocol):
    """Keeps no reference to its transport, only a weak one (to close it at the end)."""

    def __init__(self, got: asyncio.Future) -> None:
        self.got = got

    def connection_made(self, transport) -> None:
        self.transport = weakref.ref(transport)

    def datagram_received(self, data, addr) -> None:
        if not self.got.done():
            self.got.set_result(data)


def test_a_datagram_transport_nobody_holds_keeps_receiving(loop):
    # Its reader's registration holds it, as on the stock loop.
    async def main():
        got = loop.create_future()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Forgetful(got), local_addr=("127.0.0.1", 0)
        )
        del transport
        gc.collect()
        transport = protocol.transport()
        address = transport.get_extra_info("sockname")
        del transport
        gc.collect()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"still here", address)
            data = await got
        protocol.transport().close()
        return data

    assert run(loop, main()) == b"still here"


def test_a_kept_sendto_of_a_closed_transport_sends_nothing(loop):
    # The stock bound method keeps its transport, which counts a send after its
    # connection was lost and sends nothing; so does the Rust sendto. Neither raises.
    async def main():
        lost = loop.create_future()

        class Protocol(asyncio.DatagramProtocol):
            def connection_lost(self, exc):
                lost.set_result(exc)

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            transport, _ = await loop.create_datagram_endpoint(
                Protocol, remote_addr=peer.getsockname()
            )
            send = transport.sendto
            transport.sendto(b"first")
            transport.close()
            assert await lost is None
            del transport
            gc.collect()
            send(b"second")
            peer.setblocking(False)
            received = [peer.recv(100)]
            with contextlib.suppress(BlockingIOError):
                received.append(peer.recv(100))
        return received

    assert run(loop, main()) == [b"first"]


def test_a_kept_sendto_keeps_a_paused_transport(loop):
    # With its reading paused no registration holds the transport: the sendto an
    # application kept does, as the stock bound method does (a weakly held one was
    # tried: the transport was freed under it, its socket closed, the datagram lost).
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            got = loop.create_future()
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Forgetful(got), remote_addr=peer.getsockname()
            )
            del transport  # held from here on by the protocol weakly, and send
            await asyncio.sleep(0)  # one iteration: the reader is registered
            transport = protocol.transport()
            registered = loop._selector.get_key(transport.get_extra_info("socket").fileno()).data[0]
            assert registered._callback == transport._read_ready
            send = transport.sendto
            transport.pause_reading()
            del transport
            gc.collect()
            send(b"hello")
            data = await loop.sock_recv(peer, 100)
            alive = protocol.transport() is not None
            if alive:
                protocol.transport().close()
        return data, alive

    assert run(loop, main()) == (b"hello", True)


def test_a_write_after_a_drained_close_never_reaches_the_fds_next_owner(loop):
    # close() with data buffered: once the peer has read it all, the transport lets its
    # socket go (closed, _sock None) with its lost-connection count still 0. A later
    # write must not send on the fd it had: the number may be another socket's by then.
    # (The stock write then fails on the missing socket; so does weaveloop's.)
    transport, protocol, peer = _connected_pair(loop, _Lost)
    fd = transport.get_extra_info("socket").fileno()
    payload = b"x" * 8_000_000  # more than the kernel takes at once: some is buffered

    async def main():
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        got = await loop.run_in_executor(None, _read_exactly, peer, len(payload))
        await asyncio.wait_for(protocol.lost, 10)
        return got

    assert run(loop, main()) == payload
    # New sockets until one has the number (lower free numbers are taken first).
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        while not any(fd in (c.fileno(), d.fileno()) for c, d in pairs):
            assert len(pairs) < 1000, "the fd number was never given out again"
            pairs.append(socket.socketpair())
        with pytest.raises(AttributeError):
            transport.write(b"LEAKED")
        for s in (s for pair in pairs for s in pair):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(100)
    finally:
        for pair in pairs:
            for s in pair:
                s.close()
        peer.close()


# The datagram send path: ``_core.DatagramWriter`` is an IPv4 datagram transport's
# ``sendto``; what it does not do itself goes to the stock ``sendto``.


class _Inbox(asyncio.DatagramProtocol):
    """Collects datagrams; ``wait(n)`` waits until n have arrived in all."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, object]] = []
        self._want: tuple[int, asyncio.Future] | None = None
        self.errors: list[tuple[BaseException, BaseException | None]] = []
        self.error = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc) -> None:
        self.lost.set_result(exc)

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((data, addr))
        if self._want and len(self.received) >= self._want[0] and not self._want[1].done():
            self._want[1].set_result(None)

    def error_received(self, exc) -> None:
        self.errors.append((exc, sys.exc_info()[1]))
        if not self.error.done():
            self.error.set_result(exc)

    async def wait(self, n: int) -> list[tuple[bytes, object]]:
        if len(self.received) < n:
            self._want = (n, asyncio.get_running_loop().create_future())
            await asyncio.wait_for(self._want[1], 10)
        return self.received


async def _endpoints(loop):
    """An unconnected server and a client connected to it, both collecting."""
    server, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
    client, replies = await loop.create_datagram_endpoint(
        _Inbox, remote_addr=server.get_extra_info("sockname")
    )
    if isinstance(loop, weaveloop.Loop):
        for transport in (server, client):
            assert type(transport.sendto) is weaveloop._core.DatagramWriter
    return server, inbox, client, replies


def test_datagrams_sent_every_way_arrive_in_order(loop):
    # To the connected peer (bytes, bytearray, memoryview; an empty datagram is not
    # sent before Python 3.13), to a numeric address given positionally or by keyword,
    # to a name that is looked up, and from an unconnected socket: what arrives, and
    # from whom.
    async def main():
        server, inbox, client, replies = await _endpoints(loop)
        for data in (b"one", bytearray(b"two"), memoryview(b"three"), b"", b"four"):
            client.sendto(data)
        received = list(await inbox.wait(len(expected)))
        client_addr = received[0][1]
        port = client_addr[1]
        server.sendto(b"numeric", client_addr)
        server.sendto(b"keyword", addr=client_addr)
        server.sendto(b"looked up", ("localhost", port))
        server.sendto(bytearray(b"bytearray"), client_addr)
        got = list(await replies.wait(4))
        loose, loose_inbox = await loop.create_datagram_endpoint(
            _Inbox, local_addr=("127.0.0.1", 0)
        )
        loose.sendto(b"unconnected", server.get_extra_info("sockname"))
        late = (await inbox.wait(len(expected) + 1))[-1]
        for t in (server, client, loose):
            t.close()
        return received, got, late, client_addr, loose.get_extra_info("sockname")

    # (From Python 3.13 on, an empty datagram is sent too.)
    expected = [b"one", b"two", b"three", *([b""] if sys.version_info >= (3, 13) else []), b"four"]
    received, got, late, client_addr, loose_addr = run(loop, main())
    assert received == [(d, client_addr) for d in expected]
    assert [data for data, _ in got] == [b"numeric", b"keyword", b"looked up", b"bytearray"]
    assert late == (b"unconnected", loose_addr)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda t, peer: t.sendto("text"),
            TypeError,
            "data argument must be a bytes-like object, not 'str'",
        ),
        (
            lambda t, peer: t.sendto(b"x", ("127.0.0.1", 9)),
            ValueError,
            "Invalid address: must be None or {peer}",
        ),
    ],
    ids=["str", "other-address"],
)
def test_sendto_refuses_as_the_stock_transport_does(loop, call, error, message):
    async def main():
        server, inbox, client, replies = await _endpoints(loop)
        peer = client.get_extra_info("peername")
        try:
            with pytest.raises(error) as info:
                call(client, peer)
            return str(info.value), peer
        finally:
            server.close()
            client.close()

    text, peer = run(loop, main())
    assert text == message.format(peer=peer)


@pytest.mark.parametrize(
    ("address", "error", "message"),
    [
        (None, TypeError, "sendto(): AF_INET address must be tuple, not NoneType"),
        (["127.0.0.1", 9], TypeError, "sendto(): AF_INET address must be tuple, not list"),
        (("127.0.0.1", 70000), OverflowError, "sendto(): port must be 0-65535."),
    ],
    ids=["none", "list", "port-range"],
)
def test_an_address_the_socket_refuses_is_fatal_as_on_the_stock_transport(
    loop, address, error, message
):
    # The stock sendto passes the address to the socket and treats what it raises
    # (other than an OSError) as a fatal write error: reported, transport closed.
    contexts = _reported(loop)

    async def main():
        server, inbox, client, replies = await _endpoints(loop)
        server.sendto(b"x", address)
        await asyncio.wait_for(inbox.lost, 10)
        client.close()

    run(loop, main())
    [context] = contexts
    assert context["message"] == "Fatal write error on datagram transport"
    assert type(context["exception"]) is error
    assert str(context["exception"]) == message


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_a_datagram_the_os_refuses_is_an_error_received(loop, connected):
    # Too large for any datagram: EMSGSIZE from the send, handed to error_received
    # inside the except clause that caught it; the transport sends on afterwards.
    async def main():
        server, inbox, client, replies = await _endpoints(loop)
        if connected:
            sender, protocol, to = client, replies, ()
        else:
            sender, protocol, to = server, inbox, (client.get_extra_info("sockname"),)
        sender.sendto(b"x" * 70_000, *to)
        exc = await asyncio.wait_for(protocol.error, 10)
        sender.sendto(b"after", *to)
        (data, _), *_ = await (inbox if connected else replies).wait(1)
        server.close()
        client.close()
        return exc, protocol.errors, data

    exc, errors, data = run(loop, main())
    assert type(exc) is OSError and exc.errno == errno.EMSGSIZE
    assert errors == [(exc, exc)]
    assert data == b"after"


def test_sendto_goes_behind_datagrams_already_buffered(loop):
    # A datagram the socket would not take is buffered and the transport's writer
    # registered (the stock sendto's way); the next sendto must queue behind it, not
    # overtake it. The buffered state is made as the stock transport makes it.
    async def main():
        server, inbox, client, replies = await _endpoints(loop)
        # (From Python 3.13 on, each datagram sendto buffers also counts 8 header bytes.)
        header = 8 if sys.version_info >= (3, 13) else 0
        client._buffer.append((b"buffered", None))
        client._buffer_size += len(b"buffered") + header
        loop._add_writer(client.get_extra_info("socket").fileno(), client._sendto_ready)
        client.sendto(b"next")
        assert client.get_write_buffer_size() == len(b"buffered") + len(b"next") + 2 * header
        received = await inbox.wait(2)
        # (Python 3.13.0 counts the header bytes in, not out: 16 stay counted.)
        assert client.get_write_buffer_size() in (0, 2 * header)
        server.close()
        client.close()
        return [data for data, _ in received]

    assert run(loop, main()) == [b"buffered", b"next"]


def test_sendto_after_close_sends_nothing_as_the_stock_transport_does(loop, caplog):
    # Connected: late datagrams are counted, then warned about, as for a lost stream.
    # Unconnected: the stock sendto fails on the socket it has let go; so does this one,
    # without ever sending on the fd number it had.
    async def main():
        server, inbox, client, replies = await _endpoints(loop)
        client.close()
        server.close()
        await asyncio.wait_for(asyncio.gather(inbox.lost, replies.lost), 10)
        return server, client

    server, client = run(loop, main())
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(7):
            client.sendto(b"late")
    warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
    assert len(warned) == 3
    with pytest.raises(AttributeError):
        server.sendto(b"late", ("127.0.0.1", 9))


def test_a_datagram_socket_class_that_overrides_sendto_is_sent_through(loop):
    # The socket class's own send/sendto are called, as by the stock transport.
    class Shouting(socket.socket):
        def sendto(self, data, *args):
            return super().sendto(bytes(data).upper(), *args)

        def send(self, data, *args):
            return super().send(bytes(data).upper(), *args)

    async def main():
        server, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
        mine = Shouting(socket.AF_INET, socket.SOCK_DGRAM)
        mine.setblocking(False)
        mine.bind(("127.0.0.1", 0))
        loose, _ = await loop.create_datagram_endpoint(_Inbox, sock=mine)
        assert "sendto" not in vars(loose)
        loose.sendto(b"to", server.get_extra_info("sockname"))
        peer = Shouting(socket.AF_INET, socket.SOCK_DGRAM)
        peer.setblocking(False)
        peer.connect(server.get_extra_info("sockname"))
        connected, _ = await loop.create_datagram_endpoint(_Inbox, sock=peer)
        connected.sendto(b"connected")
        received = await inbox.wait(2)
        for t in (server, loose, connected):
            t.close()
        return sorted(data for data, _ in received)

    assert run(loop, main()) == [b"CONNECTED", b"TO"]


# TLS (``ssl=``): asyncio's TLS protocol over weaveloop's socket transport, so its Rust
# read path (a buffered protocol) and write path serve the encrypted bytes.

_TLS_PEM = os.path.join(os.path.dirname(weaveloop.__file__), "bench", "tls_bench.pem")


def _tls_contexts():
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(_TLS_PEM)
    return server_ctx, ssl.create_default_context(cafile=_TLS_PEM)


def test_tls_connections_run_over_the_loops_socket_transport(loop):
    server_ctx, client_ctx = _tls_contexts()
    payloads = [b"x", os.urandom(1000), os.urandom(3_000_000), b"last"]

    async def main():
        async def echo(reader, writer):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        raw = writer.transport._ssl_protocol._transport
        if isinstance(loop, weaveloop.Loop):
            assert type(raw._read_ready) is weaveloop._core.SocketReader
            assert not raw._read_ready.direct  # the TLS protocol is a buffered one
            assert type(raw.write) is weaveloop._core.SocketWriter
        back = []
        for p in payloads:
            writer.write(p)
            back.append(await reader.readexactly(len(p)))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return back

    assert run(loop, main()) == payloads


# A socket passed in with ``sock=`` stays its owner's, who may close it while the
# transport lives; its number may then be another file's. The transport must fail as
# the closed socket does (EBADF), never read or write that other file: the Rust paths,
# which use the number, check the socket object first.


@contextlib.contextmanager
def _number_reused(sock: socket.socket, kind: int):
    """Closes ``sock`` as its owner may, and gives its number to the first socket of a
    new connected pair (as a duplicate); yields the pair."""
    fd = sock.fileno()
    mine, theirs = socket.socketpair(socket.AF_UNIX, kind)  # first: neither takes fd
    sock.close()
    os.dup2(mine.fileno(), fd)
    try:
        yield mine, theirs
    finally:
        os.close(fd)
        mine.close()
        theirs.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    return ours, peer


def _assert_nothing_waits(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(100)


@pytest.mark.parametrize("kind", ["stream", "datagram"])
def test_a_send_after_the_owner_closed_the_socket_is_ebadf(loop, kind):
    # A stream transport's connection is lost with it; a datagram transport's protocol
    # gets it in error_received.
    async def main():
        if kind == "stream":
            ours, peer = _tcp_pair()
            transport, protocol = await loop.create_connection(_Lost, sock=ours)
            send, outcome = transport.write, protocol.lost
        else:
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind(("127.0.0.1", 0))
            ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            ours.connect(peer.getsockname())
            transport, protocol = await loop.create_datagram_endpoint(_Inbox, sock=ours)
            send, outcome = transport.sendto, protocol.error
        try:
            with _number_reused(ours, ours.type) as (_, theirs):
                send(b"not for the other socket")
                exc = await asyncio.wait_for(outcome, 10)
                _assert_nothing_waits(theirs)
        finally:
            transport.abort()
            peer.close()
        return exc

    exc = run(loop, main())
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF


@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
def test_a_read_after_the_owner_closed_the_socket_is_ebadf(loop, buffered):
    class Buffered(_Lost, asyncio.BufferedProtocol):
        def get_buffer(self, sizehint):
            self.buf = bytearray(100)
            return self.buf

        def buffer_updated(self, nbytes):
            self.chunks.append(bytes(self.buf[:nbytes]))

    async def main():
        ours, peer = _tcp_pair()
        transport, protocol = await loop.create_connection(
            Buffered if buffered else _Lost, sock=ours
        )
        transport.pause_reading()
        try:
            with _number_reused(ours, socket.SOCK_STREAM) as (mine, theirs):
                theirs.sendall(b"the other connection's")
                transport.resume_reading()  # watches the number again: it is readable
                exc = await asyncio.wait_for(protocol.lost, 10)
                mine.setblocking(False)
                left = mine.recv(100)
        finally:
            peer.close()
        return exc, protocol.chunks, left

    exc, received, left = run(loop, main())
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF
    assert received == []
    assert left == b"the other connection's"


@pytest.mark.parametrize("strict", [True, False])
def test_a_write_from_another_thread_is_refused_before_sending(strict):
    # Rule 5 (weaveloop only): a transport is not thread-safe. In strict mode (the
    # default) a write from a thread other than the loop's raises before anything is
    # sent, whatever its size (one that does not all go out at once would otherwise
    # fail after sending part of it, when it registers its writer). Opting out keeps the
    # stock behaviour: the write goes out.
    loop = weaveloop.new_event_loop(strict_threads=strict)
    lt = LoopThread(loop).start()
    ours, peer = _tcp_pair()
    try:
        connected = asyncio.run_coroutine_threadsafe(
            loop.create_connection(asyncio.Protocol, sock=ours), loop
        )
        transport, _ = connected.result(10)
        dgram_peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dgram_peer.bind(("127.0.0.1", 0))
        dgram = asyncio.run_coroutine_threadsafe(
            loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=dgram_peer.getsockname()
            ),
            loop,
        ).result(10)[0]
        outcomes = []
        for send in (lambda: transport.write(b"small"), lambda: dgram.sendto(b"datagram")):
            try:
                send()
                outcomes.append("sent")
            except RuntimeError as e:
                outcomes.append(str(e))
        if strict:
            message = (
                "Non-thread-safe operation invoked on an event loop other than the current one"
            )
            assert outcomes == [message, message]
            _assert_nothing_waits(peer)
            _assert_nothing_waits(dgram_peer)
        else:
            assert outcomes == ["sent", "sent"]
            peer.settimeout(10)
            dgram_peer.settimeout(10)
            assert peer.recv(100) == b"small"
            assert dgram_peer.recv(100) == b"datagram"
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(dgram.close)
    finally:
        lt.stop()
        loop.close()
        peer.close()


class _SendsItself(socket.socket):
    """A socket whose class overrides `send`: its transport writes through the class's
    `write`, not the Rust one."""

    def send(self, data, *args):
        return super().send(data, *args)


def _datagram_pair(family: int) -> tuple[socket.socket, socket.socket, object]:
    """(ours, peer, peer's address), `ours` connected to `peer`."""
    ours, peer = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_UNIX:
        peer.bind("")  # an abstract address
    else:
        peer.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    ours.connect(peer.getsockname())
    return ours, peer, peer.getsockname()


@pytest.mark.parametrize(
    "path", ["ipv6 datagram", "unix datagram", "stream socket overriding send"]
)
def test_every_send_path_refuses_another_thread_in_strict_mode(path):
    # The Rust writers check rule 5 themselves; the sends that go through the classes'
    # methods (not an IPv4 datagram socket, or a socket class of its own) check it too,
    # before anything is sent.
    if path == "ipv6 datagram" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    loop = weaveloop.new_event_loop()
    lt = LoopThread(loop).start()
    try:
        if path == "stream socket overriding send":
            plain, peer = _tcp_pair()
            ours = _SendsItself(fileno=plain.detach())
            made = loop.create_connection(asyncio.Protocol, sock=ours)
            transport = _on_loop(loop, made)[0]
            assert "write" not in transport.__dict__  # the class's write, not the Rust one

            def send():
                transport.write(b"stream")
        else:
            family = socket.AF_INET6 if path == "ipv6 datagram" else socket.AF_UNIX
            ours, peer, _ = _datagram_pair(family)
            made = loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=ours)
            transport = _on_loop(loop, made)[0]
            assert "sendto" not in transport.__dict__

            def send():
                transport.sendto(b"datagram")

        with pytest.raises(RuntimeError, match="^Non-thread-safe operation invoked on an"):
            send()
        _assert_nothing_waits(peer)
        # From the loop's thread it goes out.
        _on_loop(loop, _call(send))
        peer.settimeout(10)
        assert peer.recv(100) in (b"stream", b"datagram")
        loop.call_soon_threadsafe(transport.close)
    finally:
        lt.stop()
        loop.close()
        peer.close()


async def _call(f):
    f()


def _on_loop(loop, coro):
    """Runs `coro` on `loop`, which runs in another thread; its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(10)


class _Recording(socket.socket):
    """A socket whose class overrides the receive methods a Rust reader might use
    instead of the one the stock transport calls: records what is called."""

    def recv_into(self, buf, *args):
        self.calls.append("recv_into")
        return super().recv_into(buf, *args)

    def recvfrom_into(self, buf, *args):
        self.calls.append("recvfrom_into")
        return super().recvfrom_into(buf, *args)


def test_a_socket_class_overriding_recv_into_reads_a_buffered_protocol_through_it(loop):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(100)
            self.received = b""
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.received += self.buf[:nbytes]

        def eof_received(self):
            self.done.set_result(self.received)

    async def main():
        a, b = socket.socketpair()
        mine = _Recording(fileno=a.detach())
        mine.calls = []
        mine.setblocking(False)
        transport, protocol = await loop.create_connection(Buffered, sock=mine)
        b.sendall(b"hello")
        b.close()
        received = await asyncio.wait_for(protocol.done, 10)
        transport.close()
        return received, mine.calls

    received, calls = run(loop, main())
    assert received == b"hello"
    assert calls and set(calls) == {"recv_into"}


def test_a_datagram_socket_class_overriding_recvfrom_into_is_not_read_through_it(loop):
    # The stock datagram transport reads with recvfrom, so an override of recvfrom_into
    # is never called (weaveloop reads other than IPv4 datagrams into a buffer with
    # recvfrom_into only where the class has the socket module's own).
    async def main():
        arrived = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                arrived.set_result(data)

        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        mine = _Recording(fileno=a.detach())
        mine.calls = []
        mine.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(P, sock=mine)
        b.send(b"abc")
        data = await asyncio.wait_for(arrived, 10)
        transport.close()
        b.close()
        return data, mine.calls

    assert run(loop, main()) == (b"abc", [])


def _freed_without_the_cyclic_gc(loop, main) -> bool:
    """Runs ``main()`` (which returns a weak reference) with the cyclic GC off: whether
    what it refers to is gone by then."""
    gc.collect()
    gc.disable()
    try:
        return run(loop, main())() is None
    finally:
        gc.enable()


def test_a_closed_datagram_transport_is_freed_without_the_cyclic_gc(loop):
    # As the stock one is: once its connection is lost, nothing it holds holds it back.
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            _Inbox, local_addr=("127.0.0.1", 0)
        )
        transport.sendto(b"to myself", transport.get_extra_info("sockname"))
        await protocol.wait(1)
        transport.close()
        await asyncio.wait_for(protocol.lost, 10)
        return weakref.ref(transport)

    assert _freed_without_the_cyclic_gc(loop, main)


def _a_closed_socket_transport_is_freed_without_the_cyclic_gc(loop) -> bool:
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        transport, protocol = await loop.create_connection(_Lost, *server.sockets[0].getsockname())
        transport.write(b"through the writer")
        transport.close()
        await asyncio.wait_for(protocol.lost, 10)
        server.close()
        await server.wait_closed()
        return weakref.ref(transport)

    return _freed_without_the_cyclic_gc(loop, main)


def test_a_closed_socket_transport_is_freed_without_the_cyclic_gc_as_the_stock_one():
    # The Rust reader and writer hold their transport; once its connection is lost they
    # let it go. (Python 3.12+'s stock socket transport is freed at once; 3.11's keeps a
    # bound method of its own, a cycle only the cyclic GC breaks, on both loops.)
    freed = {}
    for kind, factory in (
        ("stock", asyncio.new_event_loop),
        ("weaveloop", weaveloop.new_event_loop),
    ):
        loop = factory()
        try:
            freed[kind] = _a_closed_socket_transport_is_freed_without_the_cyclic_gc(loop)
        finally:
            loop.close()
    assert freed == {"stock": sys.version_info >= (3, 12), "weaveloop": sys.version_info >= (3, 12)}


def test_a_protocol_set_in_get_buffer_gets_the_buffer_updated(loop):
    # As the stock transport, which looks at `self._protocol` again after the read: a
    # protocol that get_buffer() set is the one told what arrived.
    class Second(asyncio.BufferedProtocol):
        buf = bytearray(16)

        def __init__(self):
            self.updated = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.updated.set_result(bytes(self.buf[:nbytes]))

    second = Second()

    class First(_Lost, asyncio.BufferedProtocol):
        buf = bytearray(16)

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            self.transport.set_protocol(second)
            return self.buf

        def buffer_updated(self, nbytes):
            self.chunks.append(("first", nbytes))

    async def main():
        ours, peer = _tcp_pair()
        transport, first = await loop.create_connection(First, sock=ours)
        peer.sendall(b"abc")
        try:
            # Into the buffer First gave; reported to the protocol set meanwhile.
            return await asyncio.wait_for(second.updated, 10), bytes(First.buf[:3]), first.chunks
        finally:
            transport.close()
            peer.close()

    assert run(loop, main()) == (b"\0\0\0", b"abc", [])


@pytest.mark.parametrize("kind", ["tcp", "tls", "start_tls", "write pipe"])
def test_transport_calls_from_another_thread_are_refused_before_any_change(kind):
    # Rule 5 in strict mode: a transport's write/pause_reading... from a thread other
    # than the loop's raise before the transport has changed anything (close and abort
    # are handed to the loop's thread instead). (Checked
    # only where the stock code reaches the loop, the error came half-way: a TLS record
    # encrypted and then not sent, so the peer's next record failed to decrypt; a
    # transport marked closing that never closed.) The transport then works on.
    loop = weaveloop.new_event_loop()
    lt = LoopThread(loop).start()
    server_ctx, client_ctx = _tls_contexts()
    peer_got = []
    peer_done = threading.Event()

    async def connect():
        if kind == "write pipe":
            r, w = os.pipe()
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb"))
            return transport, r

        async def peer(reader, writer):
            while data := await reader.read(100):
                peer_got.append(data)
            peer_done.set()
            writer.close()

        tls = kind == "tls"
        server = await asyncio.start_server(peer, "127.0.0.1", 0, ssl=server_ctx if tls else None)
        port = server.sockets[0].getsockname()[1]
        ssl_arg = client_ctx if tls else None
        transport, _ = await loop.create_connection(
            asyncio.Protocol,
            "127.0.0.1",
            port,
            ssl=ssl_arg,
            server_hostname="localhost" if tls else None,
        )
        return transport, server

    async def connect_start_tls():
        ready = loop.create_future()

        async def peer(reader, writer):
            await writer.start_tls(server_ctx)
            ready.set_result(None)
            while data := await reader.read(100):
                peer_got.append(data)
            peer_done.set()
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        plain, protocol = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport = await loop.start_tls(plain, protocol, client_ctx, server_hostname="localhost")
        await ready
        return transport, server

    try:
        transport, other = _on_loop(loop, connect_start_tls() if kind == "start_tls" else connect())
        calls = {
            "write": lambda: transport.write(b"from elsewhere"),
            "writelines": lambda: transport.writelines([b"from elsewhere"]),
        }
        if kind != "write pipe":
            calls.update(
                pause_reading=transport.pause_reading,
                write_eof=transport.write_eof,
            )
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="^Non-thread-safe operation invoked"):
                call()
            assert not transport.is_closing(), name
            if kind != "write pipe":
                assert transport.is_reading(), name

        _on_loop(loop, _call(lambda: transport.write(b"from the loop")))
        # close() from this thread is not refused but handed to the loop's thread, after
        # the write.
        assert transport.close() is None
        if kind == "write pipe":
            with os.fdopen(other, "rb") as r:
                assert r.read() == b"from the loop"
        else:
            assert peer_done.wait(10)
            assert b"".join(peer_got) == b"from the loop"
            _on_loop(loop, _call(other.close))
    finally:
        lt.stop()
        loop.close()


class _ClosesWhenFreed:
    """Holds a transport, and closes (or aborts) it from its finalizer."""

    def __init__(self, transport, how):
        self.transport, self.how = transport, how
        self.cycle = self

    def __del__(self):
        getattr(self.transport, self.how)()


class _Garbage:
    def __init__(self):
        self.cycle = self


@pytest.mark.parametrize("how", ["stream writer", "close", "abort", "weakref.finalize"])
def test_a_finalizer_run_by_the_gc_in_another_thread_closes_its_transport(loop, how):
    # An unclosed StreamWriter left in a reference cycle: the collector may run its
    # __del__ (which closes the transport) in any thread; so may other finalizers.
    # Strict mode hands such a close to the loop's thread instead of refusing it, which
    # would leak the connection.
    failures = []

    async def main():
        peer_done = loop.create_future()

        async def peer(reader, writer):
            peer_done.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        # (The StreamWriter itself is kept alive but in the first case: its own __del__
        # would close the transport on this thread.)
        kept = [] if how == "stream writer" else [reader, writer]
        gc.disable()  # (so that only the collector thread's collection finds the cycle)
        try:
            if how == "stream writer":
                cycle = [writer]
                cycle.append(cycle)
            elif how == "weakref.finalize":
                cycle = _Garbage()
                weakref.finalize(cycle, writer.transport.close)
            else:
                cycle = _ClosesWhenFreed(writer.transport, how)
            del reader, writer, cycle
            collector = threading.Thread(target=gc.collect)
            collector.start()
            collector.join()
        finally:
            gc.enable()
        try:
            return await asyncio.wait_for(peer_done, 10)
        finally:
            kept.clear()
            server.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        hook, sys.unraisablehook = sys.unraisablehook, failures.append
        try:
            result = run(loop, main())
        finally:
            sys.unraisablehook = hook
    assert failures == []
    assert result == b""  # the peer's read ended: the connection was closed


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_server_closed_from_another_thread_closes_on_the_loop_s_thread(kind, tmp_path):
    # Strict mode hands a server's close() from another thread to the loop's thread
    # (the stock one, run there, would forget its sockets before the loop refuses to stop
    # watching the first one).
    loop = weaveloop.new_event_loop()
    lt = LoopThread(loop).start()

    async def serve():
        if kind == "unix":
            return await loop.create_unix_server(asyncio.Protocol, str(tmp_path / "s"))
        return await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)

    async def connect(address):
        if kind == "unix":
            transport, _ = await loop.create_unix_connection(asyncio.Protocol, address)
        else:
            transport, _ = await loop.create_connection(asyncio.Protocol, *address)
        transport.close()

    try:
        server = _on_loop(loop, serve())
        address = server.sockets[0].getsockname()
        _on_loop(loop, connect(address))  # accepting
        # Handed to the loop's thread (as a transport's close is), not refused.
        assert server.close() is None
        _on_loop(loop, server.wait_closed())
        assert not server.is_serving() and server.sockets == ()
    finally:
        lt.stop()
        loop.close()


def test_a_tls_transport_whose_connection_is_gone_may_be_closed_from_anywhere():
    # As on socket and pipe transports (whose lost connection lets go of the loop):
    # close() and abort() of a TLS transport whose connection is gone do nothing, from
    # any thread, rather than fail the strict thread check.
    loop = weaveloop.new_event_loop()
    lt = LoopThread(loop).start()
    server_ctx, client_ctx = _tls_contexts()

    async def connect_then_lose():
        async def peer(reader, writer):
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return writer.transport

    try:
        transport = _on_loop(loop, connect_then_lose())
        transport.close()
        transport.abort()
        assert transport.is_closing()
    finally:
        lt.stop()
        loop.close()


def test_a_tls_transport_class_put_in_the_module_keeps_its_methods(monkeypatch, loop):
    # The loop gives the stock TLS transport its thread-checked subclass, and only that
    # class: one a program put in asyncio.sslproto's place keeps its own methods.
    from asyncio import sslproto

    class Counting(sslproto._SSLProtocolTransport):
        writes = []

        def write(self, data):
            Counting.writes.append(data)
            super().write(data)

    monkeypatch.setattr(sslproto, "_SSLProtocolTransport", Counting)
    server_ctx, client_ctx = _tls_contexts()

    async def main():
        async def echo(reader, writer):
            writer.write(await reader.read(100))
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(b"hello")
        back = await reader.read(100)
        writer.close()
        await writer.wait_closed()
        server.close()
        return type(writer.transport), back

    cls, back = run(loop, main())
    assert cls is Counting and back == b"hello" and b"hello" in Counting.writes


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ is Python 3.12's")
def test_a_buffer_whose_export_closes_the_socket_is_not_read_into_from_another_file(loop):
    # A buffered protocol's buffer runs its class's __buffer__ when the transport
    # exports it (3.12+): here that closes the transport's socket and puts another
    # readable file under its number. The read fails on the closed socket (EBADF), as
    # the stock transport's does, and the other file's data stays unread.
    c, d = socket.socketpair()
    c.setblocking(False)
    d.send(b"not yours")
    taken = []

    class Sneaky:
        def __init__(self, transport) -> None:
            self.transport = transport

        def __len__(self) -> int:
            return 16

        def __buffer__(self, flags):
            sock = self.transport._sock
            if not taken:  # (weaveloop exports it again for the stock read)
                number = sock.fileno()
                sock.close()
                os.dup2(c.fileno(), number)
                taken.append(number)
            return memoryview(bytearray(16))

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.lost = asyncio.get_running_loop().create_future()
            self.updates = []

        def connection_made(self, transport) -> None:
            self.transport = transport

        def get_buffer(self, sizehint):
            return Sneaky(self.transport)

        def buffer_updated(self, nbytes) -> None:
            self.updates.append(nbytes)

        def connection_lost(self, exc) -> None:
            self.lost.set_result(exc)

    transport, protocol, peer = _connected_pair(loop, Buffered)
    try:
        peer.send(b"x")
        exc = run(loop, asyncio.wait_for(protocol.lost, 10))
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        assert protocol.updates == []
        assert c.recv(100) == b"not yours"
    finally:
        for number in taken:
            os.close(number)
        peer.close()
        c.close()
        d.close()
