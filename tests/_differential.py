"""What the differential tests share: a seeded program is run on the stock loop and on
weaveloop, each run records a trace, and the two traces must be equal step for step.

``Recording`` is the base of each test's world: it keeps the trace, puts the exception
handler's calls in it and, on request, a tick per loop iteration (a callback that
re-queues itself), so a trace pins the iteration each event happened in. ``trace``
runs one world on a fresh loop of a kind (optionally with asyncio's log messages in
the trace) and ``assert_same`` compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import re
import socket
from collections.abc import Callable, Iterable, Sequence

import pytest
from _support import FACTORIES, SAFETY


class Recording:
    """A program's world on one loop; subclasses give ``main()`` (a coroutine)."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.log: list[tuple] = []
        self.ticks = 0
        self.ticking = False
        loop.set_exception_handler(self.on_error)
        # In debug mode a slow callback is logged: never, here (the machine's load).
        loop.slow_callback_duration = 3600.0

    #: Whether a handler call's entry carries the exception's args too.
    error_args = False

    def on_error(self, loop, context: dict) -> None:
        # The message's first words say what failed; the rest names objects by address.
        exc = context.get("exception")
        head = " ".join(context["message"].split(" ")[:3])
        entry = ("handler", head, type(exc).__name__)
        self.log.append((*entry, exc and exc.args) if self.error_args else entry)

    def start_ticks(self) -> None:
        self.ticking = True
        self.loop.call_soon(self.tick)

    def stop_ticks(self) -> None:
        self.ticking = False

    def tick(self) -> None:
        self.ticks += 1
        self.log.append(("tick", self.ticks))
        if self.ticking:
            self.loop.call_soon(self.tick)

    async def main(self) -> None:
        raise NotImplementedError

    async def play(self, steps: Iterable[tuple]) -> None:
        """Runs a program's ``(iterations, *args)`` steps: lets the loop run that many
        iterations, then calls ``self.do(*args)``."""
        for iterations, *args in steps:
            await spin(iterations)
            self.do(*args)

    async def play_ticking(self, steps: Iterable[tuple], then: int) -> None:
        """`play` with a tick logged every iteration, and ``then`` iterations after."""
        self.start_ticks()
        await self.play(steps)
        await spin(then)
        self.stop_ticks()

    def do(self, *args, reacting: bool = False) -> None:
        raise NotImplementedError

    def react(self, name: str) -> None:
        """End ``name``'s next seeded reaction (from ``self.reactions[name]``), if any."""
        op = next(self.reactions[name], None)
        if op is not None:
            self.do(name, op, reacting=True)

    async def settle(self, transports: dict, lost: dict) -> None:
        """Closes each transport still open (reading again first) and waits for every
        ``connection_lost`` (futures in ``lost``). Two ends that both stopped reading
        with data unsent never finish closing: after 1000 iterations, they are aborted.
        """
        for name, transport in transports.items():
            if not transport.is_closing():
                self.log.append((name, "settle close"))
                try:
                    transport.resume_reading()
                    transport.close()
                except Exception as exc:  # noqa: BLE001 - (asyncio's TLS transport, once
                    # its TLS layer was shut down, raises RuntimeError): part of the trace
                    self.log.append((name, "settle raised", type(exc).__name__, str(exc)))
        for _ in range(1000):
            if all(future.done() for future in lost.values()):
                break
            await asyncio.sleep(0)
        for name, future in lost.items():
            if not future.done():
                self.log.append((name, "settle abort"))
                transports[name].abort()
        await asyncio.wait_for(asyncio.gather(*lost.values()), SAFETY)

    def run(self) -> list[tuple]:
        """Runs the program; the trace returned is a copy taken when it ended."""
        self.loop.run_until_complete(self.main())
        return list(self.log)

    def release(self) -> None:
        """Frees what the program holds outside the loop (called before it closes)."""


def pick(items: list, index: int):
    """A program's reference (any int) to one of ``items``, or None if there are none."""
    return items[index % len(items)] if items else None


def tracer(world: Callable[..., Recording], *, log_messages: bool = False):
    """A test's ``trace(kind, program)``: the trace of ``world(loop, program)``."""

    def trace_program(kind: str, program) -> list[tuple]:
        return trace(kind, lambda loop: world(loop, program), log_messages=log_messages)

    return trace_program


def without(options: list, weights: list, left_out: str) -> tuple[list, list]:
    """Seeded choices with one option left out: the options and their weights."""
    kept = [i for i, option in enumerate(options) if option != left_out]
    return [options[i] for i in kept], [weights[i] for i in kept]


async def spin(iterations: int) -> None:
    """Lets the loop run ``iterations`` iterations."""
    for _ in range(iterations):
        await asyncio.sleep(0)


class End:
    """A protocol end named ``name`` in a world with ``transports`` and ``lost``
    (a future per end): logs its life and flow-control calls."""

    def __init__(self, world, name: str) -> None:
        self.world = world
        self.name = name

    def connection_made(self, transport) -> None:
        self.world.transports[self.name] = transport
        self.world.log.append((self.name, "made"))

    def connection_lost(self, exc) -> None:
        self.world.log.append((self.name, "lost", type(exc).__name__ if exc else None))
        self.world.lost[self.name].set_result(None)

    def pause_writing(self) -> None:
        self.world.log.append((self.name, "pause_writing"))

    def resume_writing(self) -> None:
        self.world.log.append((self.name, "resume_writing"))


def stream_pair(family: str) -> tuple[socket.socket, socket.socket]:
    """Two connected stream sockets: a Unix socket pair or a loopback TCP connection."""
    if family == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    # Without Nagle on both ends (asyncio sets it only on a socket whose proto is TCP's,
    # which an accepted one's is not): a small write behind unacknowledged data would
    # wait for the peer's delayed ACK (~40 ms), and the trace would depend on the clock.
    for sock in (a, b):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


#: What differs between two runs of the same program in a log message: addresses, task
#: numbers (one counter for the process), timer deadlines (on the real clock).
_RUN_SPECIFIC = [
    (re.compile(r"0x[0-9a-f]+"), "0x?"),
    (re.compile(r"Task-\d+"), "Task-?"),
    (re.compile(r"when=[0-9.e+-]+"), "when=?"),
]


class _LogRecorder(logging.Handler):
    def __init__(self, log: list[tuple]) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Task was destroyed but it is pending!"):
            # Reported when the cyclic GC frees the task: at no set time, and perhaps
            # a task of an earlier program.
            return
        for pattern, stand_in in _RUN_SPECIFIC:
            message = pattern.sub(stand_in, message)
        self.log.append(("logger", record.levelname, message))


@contextlib.contextmanager
def _asyncio_log_into(log: list[tuple]):
    """What asyncio's logger says (a write to a lost connection...) goes in the trace:
    warnings and errors, whatever level the test run logs at (debug lines name fds and
    poll timings, which differ from run to run)."""
    logger = logging.getLogger("asyncio")
    recorder = _LogRecorder(log)
    logger.addHandler(recorder)
    propagate, logger.propagate = logger.propagate, False
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate
        logger.removeHandler(recorder)


def trace(
    kind: str,
    make: Callable[..., Recording],
    *,
    log_messages: bool = False,
    default_handler: bool = False,
) -> list:
    """The trace of ``make(loop).run()`` on a fresh loop of ``kind``. With
    ``default_handler``, errors go to the loop's default exception handler, which logs
    them: put ``log_messages`` on too, to see them in the trace.

    The cyclic GC does not run during the program, only between programs: a collection
    comes at an allocation count, which differs between the loops, and one in the middle
    of a program finalizes what programs left unclosed (transports and sockets, each
    closed with a ResourceWarning) at a point of that program's trace. That moved the
    stock loop's trace of the server differential (a client's send failing with EPIPE
    one step early) after weaveloop's transport methods began allocating a little more
    per call."""
    gc_was_on = gc.isenabled()
    gc.disable()
    loop = FACTORIES[kind]()
    world = make(loop)
    if default_handler:
        loop.set_exception_handler(None)
    capture = _asyncio_log_into(world.log) if log_messages else contextlib.nullcontext()
    try:
        with capture:
            return world.run()
    finally:
        try:
            world.release()
            loop.close()
        finally:
            if gc_was_on:
                gc.enable()


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A share of a test's seeds: every ``of``-th from ``index``. The debug chunk takes
    every tenth seed and runs it with asyncio's debug mode on (both loops)."""

    index: int
    of: int
    debug: bool = False

    def seeds(self, seeds: Sequence[int], monkeypatch) -> list[int]:
        if self.debug:
            monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
            return list(seeds[::10])
        return [seed for seed in seeds if seed % self.of == self.index]


def chunks(n: int):
    """Parametrizes a test over ``chunk``: its seeds in ``n`` shares, then in debug mode."""
    shares = [Chunk(i, n) for i in range(n)] + [Chunk(0, 1, debug=True)]
    ids = [str(i) for i in range(n)] + ["debug"]
    return pytest.mark.parametrize("chunk", shares, ids=ids)


def assert_programs_agree(trace: Callable[[str, object], list], programs: Iterable) -> None:
    """Each ``(where, program)`` leaves the same trace on weaveloop as on the stock loop."""
    for where, program in programs:
        assert_same(trace("asyncio", program), trace("weaveloop", program), where)


def assert_same(expected: list, got: list, where: str) -> None:
    """The stock loop's trace is ``expected``; weaveloop's must equal it."""
    if got == expected:
        return
    for i, (x, y) in enumerate(zip(expected, got, strict=False)):
        if x != y:
            raise AssertionError(f"{where}: step {i}: stock {x!r} != weaveloop {y!r}")
    raise AssertionError(f"{where}: lengths differ: stock {len(expected)}, weaveloop {len(got)}")
