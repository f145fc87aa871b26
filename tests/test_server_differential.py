"""Random client traffic against a server must leave the stock loop's trace on weaveloop.

A server from ``create_unix_server`` (started at once or later with
``start_serving``) takes connections from plain sockets that a seeded program opens,
writes to, half-closes and closes, interleaved with a random number of loop iterations,
and reads back from; the server's protocols react to their callbacks (answering,
closing, aborting), and the program may close the server and check ``is_serving()`` and
its sockets. Unix sockets hand connects, bytes and closes to the other end at once, so
the iteration in which the stock loop accepts each connection and runs each callback is
fixed: the trace (with a tick logged every iteration) must match. (Over loopback TCP
an end's reset or close could reach the other a little later under load: a trace that
depends on the machine, seen twice in CI-like runs.)
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tempfile

from _differential import Recording, assert_programs_agree, chunks, spin, tracer

SEEDS = range(300)

OPS = ["connect", "send", "shutdown", "close", "recv", "close_server", "probe"]
WEIGHTS = [5, 8, 1, 3, 3, 1, 2]
REACTIONS = [None, None, "answer", "answer", "close", "abort", "pause", "resume"]


class Program:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.start_serving = rng.random() < 0.8
        self.steps = [
            (rng.randint(0, 2), rng.choices(OPS, WEIGHTS)[0], rng.randrange(6))
            for _ in range(rng.randint(4, 30))
        ]
        self.reactions = [rng.choice(REACTIONS) for _ in range(100)]


class Served(asyncio.Protocol):
    def __init__(self, world: World) -> None:
        self.world = world
        self.name = "?"

    def connection_made(self, transport) -> None:
        self.transport = transport
        # Accepted in the order the clients connected (the listen queue is FIFO).
        self.name = f"c{len(self.world.served)}"
        # Kept, every one: a transport the program let go of would be closed by the
        # cyclic GC (its __del__), at no set time.
        self.world.served.append(self)
        self.world.log.append(("made", self.name))

    def data_received(self, data: bytes) -> None:
        self.world.log.append(("data", self.name, data))
        self.react()

    def eof_received(self):
        self.world.log.append(("eof", self.name))
        self.react()

    def connection_lost(self, exc) -> None:
        self.world.log.append(("lost", self.name, type(exc).__name__ if exc else None))

    def react(self) -> None:
        reaction = next(self.world.reactions, None)
        transport = self.transport
        if reaction is None or transport.is_closing():
            return
        self.world.log.append(("react", self.name, reaction))
        if reaction == "answer":
            transport.write(b"to %s;" % self.name.encode())
        elif reaction == "close":
            transport.close()
        elif reaction == "abort":
            transport.abort()
        elif reaction == "pause":
            transport.pause_reading()
        else:
            transport.resume_reading()


class World(Recording):
    def __init__(self, loop, program: Program) -> None:
        super().__init__(loop)
        self.program = program
        self.reactions = iter(program.reactions)
        self.clients: list[socket.socket] = []
        self.directory = tempfile.TemporaryDirectory()
        self.served: list[Served] = []

    def do(self, op: str, which: int) -> None:
        self.log.append(("op", op, which))
        client = self.clients[which % len(self.clients)] if self.clients else None
        try:
            if op == "connect":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.clients.append(sock)
                sock.connect(self.address)
                sock.setblocking(False)
            elif op == "close_server":
                self.server.close()
            elif op == "probe":
                sockets = self.server.sockets
                self.log.append(("serving", self.server.is_serving(), len(sockets)))
            elif client is None or client.fileno() == -1:
                return
            elif op == "send":
                client.send(b"from c%d;" % self.clients.index(client))
            elif op == "shutdown":
                client.shutdown(socket.SHUT_WR)
            elif op == "close":
                client.close()
            elif op == "recv":
                self.log.append(("recv", client.recv(100)))
        except OSError as exc:
            self.log.append(("raised", type(exc).__name__, exc.errno))

    async def main(self) -> None:
        loop = self.loop
        self.address = os.path.join(self.directory.name, "server")
        self.server = await loop.create_unix_server(
            lambda: Served(self), self.address, start_serving=self.program.start_serving
        )
        self.start_ticks()
        if not self.program.start_serving:
            await asyncio.sleep(0)
            self.log.append(("start_serving",))
            await self.server.start_serving()
        await self.play(self.program.steps)
        await spin(6)
        self.stop_ticks()
        # Settle: server closed, connections aborted, clients closed.
        self.server.close()
        for served in self.served:
            served.transport.abort()
        for sock in self.clients:
            sock.close()
        await asyncio.wait_for(self.server.wait_closed(), 10)
        await spin(3)

    def release(self) -> None:
        self.directory.cleanup()


trace = tracer(World)


@chunks(3)
def test_random_client_traffic_leaves_the_stock_loops_trace(chunk, monkeypatch):
    programs = ((f"seed {s}", Program(s)) for s in chunk.seeds(SEEDS, monkeypatch))
    assert_programs_agree(trace, programs)


def test_the_traffic_exercises_every_event():
    """The generator is not vacuous: across the seeds, each kind of event happens."""
    seen: set[str] = set()
    for seed in SEEDS:
        for entry in trace("asyncio", Program(seed)):
            seen.add(entry[0])
            if entry[0] in ("lost", "react"):
                seen.add(f"{entry[0]} {entry[2]}")
            if entry[0] == "raised":
                seen.add(f"raised {entry[1]}")
    expected = {"made", "data", "eof", "recv", "serving", "start_serving", "tick"}
    expected |= {"lost None", "react answer", "react pause"}
    expected.add("raised BlockingIOError")
    assert expected <= seen, f"never seen: {sorted(expected - seen)}"
    # A connect after the server closed fails: refused, or (Python 3.13, which removes
    # the socket file at close) finding no socket file.
    assert seen & {"raised ConnectionRefusedError", "raised FileNotFoundError"}
