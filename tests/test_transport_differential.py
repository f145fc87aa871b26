"""Random conversations over a socket pair must leave the stock loop's trace on weaveloop.

Both ends of a Unix stream socket pair become transports on one loop (one through
``create_unix_connection(sock=)``, one through ``connect_accepted_socket``). A seeded
program then drives them: writes and ``writelines``, ``write_eof``, ``close``,
``abort``, ``pause_reading``/``resume_reading``, buffer-size and ``is_closing`` probes,
interleaved with a random number of loop iterations; the protocols react to their own
callbacks too (writing back, closing, pausing) and choose whether to stay open after
an EOF. The trace records every protocol callback with its data, every exception an
operation raises, every exception-handler call and the final states.

The pair is a Unix socket pair or a loopback TCP connection. Both hand small writes to
the peer at once, so where the stock loop reads, what it reads and in which iteration
is fixed, and weaveloop must do the same, step for step. Over Unix sockets a program
also floods (a 400 kB write, with and without lowered write-buffer limits), to bring
in partial sends, buffered writes and pause/resume_writing; the kernel's answer to a
flood over TCP depends on when the peer's window opens, so TCP programs do not flood.
The third family is TLS (asyncio's TLS protocol, ``ssl=``) over a Unix socket pair,
floods included: the handshake and the records it sends are the same on both loops.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import ssl

import pytest
import weaveloop
from _differential import (
    End,
    Recording,
    assert_programs_agree,
    chunks,
    spin,
    stream_pair,
    tracer,
    without,
)

SEEDS = range(600)

OPS = [
    "write",
    "writelines",
    "write_eof",
    "close",
    "abort",
    "pause",
    "resume",
    "probe",
    "flood",
    "limits",
]
WEIGHTS = [12, 3, 1, 1, 1, 2, 3, 3, 1, 1]


class Program:
    """The seeded choices of one conversation."""

    def __init__(self, seed: int, family: str = "unix", buffered: bool = False) -> None:
        self.family = family
        self.protocol = BufferedSide if buffered else Side
        rng = random.Random(seed)
        # A buffered protocol's buffers, in turn: a byte, a few, a flood's share.
        sizes = [1, 7, 4096, 100_000, 100_000, 300_000]
        self.buffer_sizes = {side: [rng.choice(sizes) for _ in range(200)] for side in "AB"}
        self.keep_open_after_eof = {side: rng.random() < 0.5 for side in "AB"}
        # Over TCP, how much of a flood the kernel takes in one send depends on when the
        # peer's window opens: not a fixed answer, so floods go over Unix sockets only.
        floods = family != "tcp"
        ops, weights = (OPS, WEIGHTS) if floods else without(OPS, WEIGHTS, "flood")
        self.steps = [
            (rng.randint(0, 3), rng.choice("AB"), rng.choices(ops, weights)[0])
            for _ in range(rng.randint(3, 25))
        ]
        # What each side does when a callback of its protocol runs, drawn in turn.
        self.reactions = {
            side: [rng.choice([None, None, *ops]) for _ in range(40)] for side in "AB"
        }


class Side(End, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        # A flood's filler is logged by length.
        filler = re.sub(rb"x+", lambda m: b"<%d>" % len(m.group()), data)
        self.world.log.append((self.name, "data", filler))
        self.world.react(self.name)

    def eof_received(self):
        self.world.log.append((self.name, "eof"))
        self.world.react(self.name)
        return self.world.program.keep_open_after_eof[self.name]


class BufferedSide(Side, asyncio.BufferedProtocol):
    """The same end as a buffered protocol, handing out buffers of seeded sizes."""

    def __init__(self, world: World, name: str) -> None:
        super().__init__(world, name)
        self.sizes = iter(world.program.buffer_sizes[name])
        self.buffer = bytearray()

    def get_buffer(self, sizehint: int):
        self.world.log.append((self.name, "get_buffer", sizehint))
        self.buffer = bytearray(next(self.sizes, 65536))
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.buffer[:nbytes]))


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pem = os.path.join(os.path.dirname(weaveloop.__file__), "bench", "tls_bench.pem")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)
    return server, ssl.create_default_context(cafile=pem)


class World(Recording):
    def __init__(self, loop: asyncio.AbstractEventLoop, program: Program) -> None:
        super().__init__(loop)
        self.program = program
        self.transports: dict[str, asyncio.Transport] = {}
        self.lost = {side: loop.create_future() for side in "AB"}
        self.reactions = {side: iter(program.reactions[side]) for side in "AB"}
        self.writes = 0

    def do(self, side: str, op: str, reacting: bool = False) -> None:
        transport = self.transports[side]
        self.log.append((side, "op", op, reacting))
        try:
            if op == "write":
                self.writes += 1
                transport.write(b"%s%d;" % (side.encode(), self.writes))
            elif op == "writelines":
                self.writes += 1
                transport.writelines([b"%s%d" % (side.encode(), self.writes), b"+", b";"])
            elif op == "write_eof":
                transport.write_eof()
            elif op == "close":
                transport.close()
            elif op == "abort":
                transport.abort()
            elif op == "pause":
                transport.pause_reading()
            elif op == "resume":
                transport.resume_reading()
            elif op == "flood":
                # More than the kernel takes at once: the rest waits in the transport.
                self.writes += 1
                transport.write(b"%s%d:" % (side.encode(), self.writes) + b"x" * 400_000)
            elif op == "limits":
                transport.set_write_buffer_limits(high=64 * 1024)
                self.log.append((side, "limits", transport.get_write_buffer_limits()))
            elif op == "probe":
                self.log.append(
                    (
                        side,
                        "state",
                        transport.is_closing(),
                        transport.is_reading(),
                        transport.get_write_buffer_size(),
                        transport.can_write_eof(),
                    )
                )
        except Exception as exc:  # noqa: BLE001 - what an operation raises is the trace
            self.log.append((side, "raised", type(exc).__name__, str(exc)))

    async def main(self) -> None:
        loop = self.loop
        family = self.program.family
        a, b = stream_pair("tcp" if family == "tcp" else "unix")
        protocol = self.program.protocol
        if family == "tls":
            server, client = tls_contexts()
            await asyncio.gather(
                loop.create_unix_connection(
                    lambda: protocol(self, "A"), sock=a, ssl=client, server_hostname="localhost"
                ),
                loop.connect_accepted_socket(lambda: protocol(self, "B"), sock=b, ssl=server),
            )
        else:
            if family == "unix":
                await loop.create_unix_connection(lambda: protocol(self, "A"), sock=a)
            else:
                await loop.create_connection(lambda: protocol(self, "A"), sock=a)
            await loop.connect_accepted_socket(lambda: protocol(self, "B"), sock=b)
        await self.play(self.program.steps)
        await spin(4)
        await self.settle(self.transports, self.lost)


trace = tracer(World, log_messages=True)


buffered = pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
family = pytest.mark.parametrize("family", ["unix", "tcp", "tls"])


@chunks(2)
@buffered
@family
def test_random_conversations_leave_the_stock_loops_trace(family, buffered, chunk, monkeypatch):
    label = f"{family} {'buffered ' if buffered else ''}seed"
    seeds = chunk.seeds(SEEDS, monkeypatch)
    programs = ((f"{label} {s}", Program(s, family, buffered)) for s in seeds)
    assert_programs_agree(trace, programs)


@buffered
@family
def test_the_conversations_exercise_every_callback(family, buffered):
    """The generator is not vacuous: across the seeds, each kind of event happens."""
    seen: set[tuple] = set()
    for seed in SEEDS:
        for entry in trace("asyncio", Program(seed, family, buffered)):
            seen.add(entry[1] if entry[0] in "AB" else entry[0])
            if entry[1] == "raised":
                seen.add("raised " + entry[2])
            if entry[1] == "lost":
                seen.add(f"lost {entry[2]}")
    expected = {"made", "data", "eof", "lost", "op", "state", "limits", "logger", "lost None"}
    expected |= {"lost BrokenPipeError", "lost ConnectionResetError"}
    if family == "tls":
        # (asyncio's TLS transport cannot write_eof; a TLS error ends some connections.)
        expected |= {"raised NotImplementedError", "lost SSLError"}
    else:
        expected.add("raised RuntimeError")
    if family == "unix":
        expected |= {"pause_writing", "resume_writing"}
    if buffered:
        expected.add("get_buffer")
    assert expected <= seen, f"never seen: {sorted(expected - seen)}"
