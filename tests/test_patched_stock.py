"""What tests and agents patch reaches weaveloop as it reaches the stock loop.

Test suites inject network errors by patching `socket.socket`'s methods
(`mock.patch.object(socket.socket, "recv", side_effect=ConnectionResetError)`), and
spy on or wrap the stock transport classes' methods. weaveloop's Rust paths stand in for
those methods only while nothing is patched in their place. Differential: each test runs
on both loops and checks the same outcome.
"""

from __future__ import annotations

import asyncio
import socket
from asyncio import selector_events
from unittest import mock

import pytest
import weaveloop
from _support import run


@pytest.fixture
def nonblocking_pair(pair):
    a, b = pair
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_sock_methods_call_a_patched_socket_method(loop, nonblocking_pair):
    a, b = nonblocking_pair
    b.send(b"real data")
    reset = ConnectionResetError(104, "simulated")
    with mock.patch.object(socket.socket, "recv", side_effect=reset):
        with pytest.raises(ConnectionResetError, match="simulated"):
            run(loop, loop.sock_recv(a, 100))
    with mock.patch.object(socket.socket, "recv_into", side_effect=reset):
        with pytest.raises(ConnectionResetError, match="simulated"):
            run(loop, loop.sock_recv_into(a, bytearray(100)))
    with mock.patch.object(socket.socket, "send", side_effect=BrokenPipeError(32, "simulated")):
        with pytest.raises(BrokenPipeError, match="simulated"):
            run(loop, loop.sock_sendall(a, b"x"))
    # Unpatched again: the data is still there.
    assert run(loop, loop.sock_recv(a, 100)) == b"real data"


@pytest.mark.parametrize("method", ["recv", "recv_into"])
def test_a_waiting_sock_read_calls_a_method_patched_meanwhile(loop, nonblocking_pair, method):
    # The wait's next attempt goes through the patch, as the stock one's does.
    a, b = nonblocking_pair

    async def main():
        if method == "recv":
            task = loop.create_task(loop.sock_recv(a, 100))
        else:
            task = loop.create_task(loop.sock_recv_into(a, bytearray(100)))
        while a.fileno() not in _watched_for_reading(loop):
            await asyncio.sleep(0)
        with mock.patch.object(
            socket.socket, method, side_effect=ConnectionResetError(104, "simulated")
        ):
            b.send(b"data")
            with pytest.raises(ConnectionResetError, match="simulated"):
                await task

    run(loop, main())


def _watched_for_reading(loop):
    return {fd for fd, key in loop._selector.get_map().items() if key.data[0] is not None}


PATCHED = [
    (selector_events._SelectorSocketTransport, "write"),
    (selector_events._SelectorSocketTransport, "close"),
    (selector_events._SelectorTransport, "pause_reading"),
    (selector_events._SelectorTransport, "resume_reading"),
    (selector_events._SelectorDatagramTransport, "sendto"),
    (selector_events._SelectorTransport, "abort"),
]


def test_patches_of_the_stock_transport_classes_are_called(loop):
    calls = []

    def spy(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        return mock.patch.object(cls, name, wrapper)

    async def main():
        a, b = socket.socketpair()
        with b:
            stream, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            stream.write(b"bytes")
            stream.write(bytearray(b"not bytes"))
            stream.pause_reading()
            stream.resume_reading()
            stream.close()
            dgram, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            dgram.sendto(b"x", dgram.get_extra_info("sockname"))
            dgram.abort()
            await asyncio.sleep(0)

    patches = [spy(cls, name) for cls, name in PATCHED]
    for p in patches:
        p.start()
    try:
        run(loop, main())
    finally:
        for p in patches:
            p.stop()
    assert calls == ["write", "write", "pause_reading", "resume_reading", "close"] + [
        "sendto",
        "abort",
    ]


def test_a_patch_made_after_transports_were_made_reaches_the_next_ones(loop):
    # (weaveloop keeps its look at the stock methods while their classes are unchanged.)
    writes = []
    original = selector_events._SelectorSocketTransport.write

    def spy(self, data):
        writes.append(bytes(data))
        return original(self, data)

    rust_writer = []

    async def stream_write(data):
        a, b = socket.socketpair()
        with b:
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            rust_writer.append(type(vars(transport).get("write")).__name__ == "SocketWriter")
            transport.write(data)
            transport.close()
            await asyncio.sleep(0)

    run(loop, stream_write(b"before"))
    with mock.patch.object(selector_events._SelectorSocketTransport, "write", spy):
        run(loop, stream_write(b"during"))
    run(loop, stream_write(b"after"))
    assert writes == [b"during"]
    # On weaveloop, the Rust write path stands aside only while the patch is there.
    expected = [True, False, True] if isinstance(loop, weaveloop.Loop) else [False] * 3
    assert rust_writer == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_reports_of_errors_in_protocol_callbacks_name_the_stock_methods(loop, host):
    # (Datagrams: over IPv4 weaveloop's reader is Rust, over IPv6 Python.)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.socket(family, socket.SOCK_DGRAM).close()
    except OSError:
        pytest.skip(f"no {family.name} here")
    messages = []
    loop.set_exception_handler(lambda lp, context: messages.append(context["message"]))

    class FailingLost(asyncio.Protocol):
        def connection_lost(self, exc):
            raise ValueError("boom")

    async def main():
        got = loop.create_future()

        class FailingReceived(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result(None)
                raise ValueError("boom")

        a, b = socket.socketpair()
        with b:
            stream, _ = await loop.create_connection(FailingLost, sock=a)
            stream.close()
            await asyncio.sleep(0)
        dgram, _ = await loop.create_datagram_endpoint(FailingReceived, local_addr=(host, 0))
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", dgram.get_extra_info("sockname"))
            await got
        dgram.close()
        await asyncio.sleep(0)

    run(loop, main())
    assert [m.split("(")[0] for m in messages] == [
        "Exception in callback _SelectorSocketTransport._call_connection_lost",
        "Exception in callback _SelectorDatagramTransport._read_ready",
    ]
