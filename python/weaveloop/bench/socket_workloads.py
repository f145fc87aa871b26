"""The socket group: echo round trips over loopback, the workloads DESIGN.md lists.

Every workload runs its server and its clients on the loop under test, in one process:
each client sends a message, waits for all of it to come back, and sends the next.
Throughput is the round trips completed in a fixed window (the window's length, not
the clients' teardown, divides). Sizes (full / ``--quick``):

======================  ==========================================================
workload                what
======================  ==========================================================
tcp_proto_{1,10,100}k   ``create_server`` / ``create_connection`` protocols
tcp_streams_{1,10,100}k ``start_server`` / ``open_connection`` streams
tcp_sock_{1,10,100}k    ``sock_accept`` / ``sock_connect``, ``sock_recv``/``sock_sendall``
tls_streams_{1,100}k    the streams echo over TLS (``ssl=``: asyncio's TLS protocol)
udp_echo_1k             ``create_datagram_endpoint`` on both sides, 1 KiB datagrams
======================  ==========================================================

TLS uses ``tls_bench.pem`` next to this file: a self-signed P-256 certificate for
``localhost`` and ``127.0.0.1`` with its key, made for this benchmark only; clients
verify it.

20 clients each, for 1 s (``--quick``: 0.2 s).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from time import perf_counter

from .loop_workloads import loop_group
from .registry import Workload, throughput

_CLIENTS = 20
_READ = 256 * 1024


class _Tally:
    """Round trips completed, and whether the measuring window has closed."""

    def __init__(self) -> None:
        self.count = 0
        self.stop = False


async def _measure(tally: _Tally, duration: float) -> float:
    """Round trips per second over a window of ``duration``; closes the window."""
    start = tally.count
    t0 = perf_counter()
    await asyncio.sleep(duration)
    done = tally.count - start
    elapsed = perf_counter() - t0
    tally.stop = True
    return done / elapsed


async def _measure_then_close(tally: _Tally, duration: float, clients: list, server) -> dict:
    """The window's rate, once the clients (awaitables) have finished and the server
    has closed."""
    rate = await _measure(tally, duration)
    await asyncio.gather(*clients)
    server.close()
    await server.wait_closed()
    return {"throughput": rate}


class _EchoServer(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _EchoClient(asyncio.Protocol):
    """Sends the message, counts it back, sends it again until the window closes."""

    def __init__(self, message: bytes, tally: _Tally, done: asyncio.Future) -> None:
        self.message = message
        self.tally = tally
        self.done = done
        self.pending = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.pending = len(self.message)
        self.transport.write(self.message)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending > 0:
            return
        self.tally.count += 1
        if self.tally.stop:
            self.transport.close()
        else:
            self._send()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def tcp_proto(duration: float, size: int) -> dict:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tally, message = _Tally(), b"x" * size
    closed = [loop.create_future() for _ in range(_CLIENTS)]
    for done in closed:
        client = _EchoClient(message, tally, done)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)
    return await _measure_then_close(tally, duration, closed, server)


async def tcp_streams(duration: float, size: int) -> dict:
    return await _streams(duration, size, None, None)


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for loopback TLS with the benchmark's certificate."""
    pem = str(Path(__file__).with_name("tls_bench.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)
    return server, ssl.create_default_context(cafile=pem)


async def tls_streams(duration: float, size: int) -> dict:
    return await _streams(duration, size, *_tls_contexts())


async def _streams(
    duration: float, size: int, server_ssl: ssl.SSLContext | None, client_ssl: ssl.SSLContext | None
) -> dict:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(_READ):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ssl)
    port = server.sockets[0].getsockname()[1]
    tally, message = _Tally(), b"x" * size

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl)
        while not tally.stop:
            writer.write(message)
            await writer.drain()
            await reader.readexactly(size)
            tally.count += 1
        writer.close()
        await writer.wait_closed()

    clients = [asyncio.ensure_future(client()) for _ in range(_CLIENTS)]
    return await _measure_then_close(tally, duration, clients, server)


async def tcp_sock(duration: float, size: int) -> dict:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    tally, message = _Tally(), b"x" * size

    async def echo(conn: socket.socket) -> None:
        with conn:
            while data := await loop.sock_recv(conn, _READ):
                await loop.sock_sendall(conn, data)

    async def accept() -> list:
        served = []
        for _ in range(_CLIENTS):
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            served.append(asyncio.ensure_future(echo(conn)))
        return served

    async def client() -> None:
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            while not tally.stop:
                await loop.sock_sendall(sock, message)
                pending = size
                while pending > 0:
                    pending -= len(await loop.sock_recv(sock, _READ))
                tally.count += 1

    acceptor = asyncio.ensure_future(accept())
    clients = [asyncio.ensure_future(client()) for _ in range(_CLIENTS)]
    rate = await _measure(tally, duration)
    await asyncio.gather(*clients)
    await asyncio.gather(*await acceptor)
    listener.close()
    return {"throughput": rate}


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data, addr)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, message: bytes, tally: _Tally) -> None:
        self.message = message
        self.tally = tally

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.sendto(self.message)

    def datagram_received(self, data: bytes, addr) -> None:
        self.tally.count += 1
        if not self.tally.stop:
            self.transport.sendto(self.message)


async def udp_echo(duration: float, size: int) -> dict:
    """A lost datagram only idles its client: the window still closes on time, and
    clients are closed without waiting for what is in flight."""
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    addr = server.get_extra_info("sockname")
    tally, message = _Tally(), b"x" * size
    clients = []
    for _ in range(_CLIENTS):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpClient(message, tally), remote_addr=addr
        )
        clients.append(transport)
    rate = await _measure(tally, duration)
    for transport in clients:
        transport.close()
    server.close()
    return {"throughput": rate}


_FULL, _QUICK = {"duration": 1.0}, {"duration": 0.2}


def _echo(name: str, func, size: int, doc: str) -> Workload:
    return Workload(
        name,
        f"{doc}, {size // 1024} KiB round trips, {_CLIENTS} clients",
        (throughput("round trips/s"),),
        func,
        {**_FULL, "size": size},
        {**_QUICK, "size": size},
    )


WORKLOADS = (
    tuple(
        _echo(f"tcp_{api}_{kib}k", func, kib * 1024, doc)
        for api, func, doc in (
            ("proto", tcp_proto, "TCP echo, protocols"),
            ("streams", tcp_streams, "TCP echo, streams"),
            ("sock", tcp_sock, "TCP echo, sock_* methods"),
        )
        for kib in (1, 10, 100)
    )
    + tuple(
        _echo(f"tls_streams_{kib}k", tls_streams, kib * 1024, "TLS echo, streams")
        for kib in (1, 100)
    )
    + (_echo("udp_echo_1k", udp_echo, 1024, "UDP echo, datagram endpoints"),)
)

GROUP = loop_group(
    "sockets", "Sockets: loopback echo (stock transports, Rust read/write paths)", WORKLOADS
)
