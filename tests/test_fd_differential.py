"""Random file-descriptor watching must leave the stock loop's trace on weaveloop.

A seeded program works on three pipes and a Unix socket pair: ``add_reader`` and
``add_writer`` (new and replacing), ``remove_reader``/``remove_writer`` (their return
values logged), bytes written into a pipe or read out of it, a pipe filled until its
writing end is no longer writable, an fd closed while watched (and watched after it is
closed), interleaved with a random number of loop iterations. The watchers' callbacks
read what is there, log it and react with more of the same. A callback re-queued every
iteration logs a tick, so the trace shows in which iteration each callback ran, not
only the order: the stock loop's (asyncio's) is the one right answer.
"""

from __future__ import annotations

import os
import random
import socket

from _differential import Recording, assert_programs_agree, chunks, tracer

SEEDS = range(500)

OPS = [
    "add_reader",
    "add_writer",
    "remove_reader",
    "remove_writer",
    "put",
    "take",
    "fill",
    "close",
]
WEIGHTS = [6, 4, 3, 3, 6, 3, 1, 1]
#: Channels: pipes 0-2 (a reading and a writing end) and a socket pair (both ends both).
CHANNELS = 4


class Program:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.steps = [
            (rng.randint(0, 2), rng.choices(OPS, WEIGHTS)[0], rng.randrange(CHANNELS))
            for _ in range(rng.randint(4, 30))
        ]
        self.reactions = [
            (rng.choice([None, None, *OPS]), rng.randrange(CHANNELS)) for _ in range(80)
        ]
        self.takes = [rng.choice([1, 3, 100]) for _ in range(200)]


class World(Recording):
    def __init__(self, loop, program: Program) -> None:
        super().__init__(loop)
        self.program = program
        self.reactions = iter(program.reactions)
        self.takes = iter(program.takes)
        self.files: list[int] = []
        # channel -> (fd watched for reading, fd watched for writing)
        self.ends: list[tuple[int, int]] = []
        for _ in range(3):
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self.ends.append((r, w))
            self.files += [r, w]
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.sockets = (a, b)
        self.ends.append((a.fileno(), b.fileno()))
        self.closed: set[int] = set()

    def on_readable(self, channel: int) -> None:
        fd = self.ends[channel][0]
        try:
            data = os.read(fd, next(self.takes, 100))
        except OSError as exc:
            data = type(exc).__name__.encode()
        self.log.append(("readable", channel, data[:20], len(data)))
        if data == b"":  # EOF: a watcher left on it would fire every iteration
            self.loop.remove_reader(fd)
        self.react()

    def on_writable(self, channel: int) -> None:
        self.log.append(("writable", channel))
        # One write of a few bytes, then the watcher goes: a pipe is nearly always
        # writable, and the trace would be nothing but this callback.
        self.write(channel, b"w%d;" % self.ticks)
        self.loop.remove_writer(self.ends[channel][1])
        self.react()

    def write(self, channel: int, data: bytes) -> None:
        try:
            written = os.write(self.ends[channel][1], data)
        except OSError as exc:
            self.log.append(("write failed", channel, type(exc).__name__))
        else:
            self.log.append(("wrote", channel, written))

    def react(self) -> None:
        op, channel = next(self.reactions, (None, 0))
        if op is not None:
            self.do(op, channel, reacting=True)

    def do(self, op: str, channel: int, reacting: bool = False) -> None:
        loop = self.loop
        reader, writer = self.ends[channel]
        self.log.append(("op", op, channel, reacting))
        try:
            if op == "add_reader":
                loop.add_reader(reader, self.on_readable, channel)
            elif op == "add_writer":
                loop.add_writer(writer, self.on_writable, channel)
            elif op == "remove_reader":
                self.log.append(("removed", loop.remove_reader(reader)))
            elif op == "remove_writer":
                self.log.append(("removed", loop.remove_writer(writer)))
            elif op == "put":
                self.write(channel, b"p%d;" % self.ticks)
            elif op == "take":
                data = os.read(reader, 7)
                self.log.append(("took", channel, data))
            elif op == "fill":
                total = 0
                while True:
                    try:
                        total += os.write(writer, b"f" * 65536)
                    except BlockingIOError:
                        break
                self.log.append(("filled", channel, total > 0))
            elif op == "close":
                # Closed while (perhaps) watched; later steps may watch it closed.
                fd = writer if channel % 2 else reader
                if fd not in self.closed:
                    self.closed.add(fd)
                    owner = [sock for sock in self.sockets if sock.fileno() == fd]
                    if owner:
                        owner[0].close()
                    else:
                        os.close(fd)
        except OSError as exc:
            self.log.append(("raised", type(exc).__name__, exc.errno))
        except Exception as exc:  # noqa: BLE001 - what an operation raises is the trace
            self.log.append(("raised", type(exc).__name__, str(exc)))

    async def main(self) -> None:
        await self.play_ticking(self.program.steps, then=6)

    def release(self) -> None:
        for reader, writer in self.ends:
            for fd in (reader, writer):
                if fd not in self.closed:
                    self.loop.remove_reader(fd)
                    self.loop.remove_writer(fd)
        for fd in self.files:
            if fd not in self.closed:
                os.close(fd)
        for sock in self.sockets:
            sock.close()


trace = tracer(World)


@chunks(4)
def test_random_fd_watching_leaves_the_stock_loops_trace(chunk, monkeypatch):
    programs = ((f"seed {s}", Program(s)) for s in chunk.seeds(SEEDS, monkeypatch))
    assert_programs_agree(trace, programs)


def test_the_programs_exercise_every_event():
    """The generator is not vacuous: across the seeds, each kind of event happens."""
    seen: set[str] = set()
    for seed in SEEDS:
        for entry in trace("asyncio", Program(seed)):
            seen.add(entry[0])
            if entry[0] == "raised":
                seen.add(f"raised {entry[1]}")
    expected = {"tick", "readable", "writable", "wrote", "took", "filled", "removed"}
    expected |= {"raised BlockingIOError", "write failed"}
    assert expected <= seen, f"never seen: {sorted(expected - seen)}"
