"""Random scheduling programs run on weaveloop and on the stock loop must leave the same trace.

A seeded generator builds a program: callbacks queued with ``call_soon``,
``call_soon_threadsafe`` (from the loop's own thread) and ``call_at`` with deadlines
already past, handles cancelled, ``loop.stop()`` mid-batch, callbacks that raise,
futures resolved, cancelled and given done callbacks, tasks that sleep, await futures
and each other, gather, get cancelled, and context variables set in callbacks, tasks
and a context shared between handles. Each callback's body is more of the same, a few
levels deep. The interpreter runs the program on a fresh loop and records every
callback run (with the context variable it sees), every exception-handler call,
every ``stop`` seen by the driver and the final state of every task and future.

Nothing here depends on time passing: every timer's deadline is in the past, and each
one is distinct, so the order of the stock loop (asyncio's documented behaviour) is the
only right answer, and the two traces must be equal step for step.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random

import pytest
from _differential import Recording, assert_programs_agree, chunks, pick, spin
from _differential import trace as differential_trace

#: How many programs each test case draws; every seed is a different program.
SEEDS = range(3000)

#: Iterations the driver yields for: more than any chain a program can build.
DRAIN_STEPS = 40

VAR = contextvars.ContextVar("VAR", default="-")


class Generator:
    """Builds one program from a seed: nested lists of action tuples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tags = 0
        self.budget = 120

    def tag(self) -> str:
        self.tags += 1
        return f"t{self.tags}"

    def program(self) -> list[tuple]:
        return self.body(0, 12, least=6)

    def body(self, depth: int, width: int, least: int = 0) -> list[tuple]:
        actions = []
        for _ in range(self.rng.randint(least, width)):
            if self.budget <= 0:
                break
            self.budget -= 1
            actions.append(self.action(depth))
        return actions

    def action(self, depth: int) -> tuple:
        rng = self.rng
        nested = depth < 4
        kind = rng.choices(
            [
                "soon",
                "soon_ts",
                "soon_shared",
                "past_timer",
                "cancel",
                "stop",
                "raise",
                "set_var",
                "future",
                "resolve",
                "done_cb",
                "task",
                "cancel_task",
            ],
            weights=[8, 3, 2, 4, 3, 1, 1, 2, 2, 3, 2, 3, 2],
        )[0]
        if kind in ("soon", "soon_ts", "soon_shared", "past_timer"):
            body = self.body(depth + 1, 3) if nested else []
            extra = rng.randint(0, 10_000) if kind == "past_timer" else None
            return (kind, self.tag(), body, extra)
        if kind == "done_cb":
            body = self.body(depth + 1, 2) if nested else []
            return (kind, self.tag(), body, rng.randint(0, 1 << 16))
        if kind == "task":
            return (kind, self.tag(), self.steps(depth + 1))
        if kind == "resolve":
            return (kind, rng.randint(0, 1 << 16), rng.choice(["result", "exception", "cancel"]))
        if kind in ("cancel", "cancel_task"):
            return (kind, rng.randint(0, 1 << 16))
        return (kind, self.tag())

    def steps(self, depth: int) -> list[tuple]:
        rng = self.rng
        steps = []
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice(["sleep0", "await_future", "await_task", "gather", "do", "log"])
            if kind == "do":
                steps.append((kind, self.body(depth + 1, 2) if depth < 4 else []))
            elif kind in ("await_future", "await_task"):
                steps.append((kind, rng.randint(0, 1 << 16)))
            elif kind == "gather":
                steps.append((kind, [rng.randint(0, 1 << 16) for _ in range(rng.randint(1, 3))]))
            else:
                steps.append((kind, self.tag()))
        if rng.random() < 0.2:
            steps.append(("raise", self.tag()))
        return steps


def outcome(fut: asyncio.Future) -> str:
    if not fut.done():
        return "pending"
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception()
    if exc is not None:
        return f"{type(exc).__name__}{exc.args!r}"
    return f"result {fut.result()!r}"


class Interpreter(Recording):
    """Runs a program on one loop and records what happened, in order."""

    error_args = True

    def __init__(self, loop: asyncio.AbstractEventLoop, program: list[tuple]) -> None:
        super().__init__(loop)
        self.program = program
        self.handles: list[asyncio.Handle] = []
        self.futures: list[asyncio.Future] = []
        self.tasks: list[asyncio.Task] = []
        self.shared = contextvars.copy_context()
        # Deadlines well in the past, distinct per timer, so their order is defined.
        self.past = loop.time() - 1000.0

    def callback(self, tag: str, body: list[tuple]) -> None:
        self.log.append(("run", tag, VAR.get()))
        self.execute(body)

    def execute(self, body: list[tuple]) -> None:
        for action in body:
            self.do(action)

    def do(self, action: tuple) -> None:
        loop, kind = self.loop, action[0]
        if kind == "soon":
            self.handles.append(loop.call_soon(self.callback, action[1], action[2]))
        elif kind == "soon_ts":
            self.handles.append(loop.call_soon_threadsafe(self.callback, action[1], action[2]))
        elif kind == "soon_shared":
            handle = loop.call_soon(self.callback, action[1], action[2], context=self.shared)
            self.handles.append(handle)
        elif kind == "past_timer":
            when = self.past + action[3] * 1e-3
            self.handles.append(loop.call_at(when, self.callback, action[1], action[2]))
        elif kind == "cancel":
            handle = pick(self.handles, action[1])
            if handle is not None:
                handle.cancel()
                self.log.append(("cancelled", self.handles.index(handle), handle.cancelled()))
        elif kind == "stop":
            loop.stop()
        elif kind == "raise":
            raise ValueError(action[1])
        elif kind == "set_var":
            VAR.set(action[1])
        elif kind == "future":
            self.futures.append(loop.create_future())
        elif kind == "resolve":
            fut = pick(self.futures, action[1])
            if fut is not None and not fut.done():
                how = action[2]
                if how == "result":
                    fut.set_result(len(self.log))
                elif how == "exception":
                    fut.set_exception(KeyError(len(self.log)))
                else:
                    fut.cancel()
        elif kind == "done_cb":
            fut = pick(self.futures + self.tasks, action[3])
            if fut is not None:
                tag, body = action[1], action[2]

                def done(f, tag=tag, body=body):
                    self.log.append(("done", tag, outcome(f), VAR.get()))
                    self.execute(body)

                fut.add_done_callback(done)
        elif kind == "task":
            coro = self.coroutine(action[1], action[2], len(self.tasks))
            self.tasks.append(loop.create_task(coro))
        elif kind == "cancel_task":
            task = pick(self.tasks, action[1])
            if task is not None:
                self.log.append(("cancel_task", self.tasks.index(task), task.cancel()))
        else:  # pragma: no cover - the generator makes only the kinds above
            raise AssertionError(kind)

    async def coroutine(self, name: str, steps: list[tuple], me: int):
        self.log.append(("task", name, VAR.get()))
        for step in steps:
            kind = step[0]
            try:
                if kind == "sleep0":
                    await asyncio.sleep(0)
                elif kind == "await_future" and self.futures:
                    value = await pick(self.futures, step[1])
                    self.log.append(("awaited", name, value))
                elif kind == "await_task" and me > 0:
                    # Only a task made before this one: never itself.
                    value = await self.tasks[step[1] % me]
                    self.log.append(("awaited", name, value))
                elif kind == "gather" and self.futures:
                    waits = [pick(self.futures, i) for i in step[1]]
                    values = await asyncio.gather(*waits, return_exceptions=True)
                    self.log.append(("gathered", name, [repr(v) for v in values]))
                elif kind == "do":
                    self.execute(step[1])
                elif kind == "log":
                    self.log.append(("step", name, step[1], VAR.get()))
                elif kind == "raise":
                    raise LookupError(step[1])
            except (KeyError, ValueError) as exc:
                self.log.append(("caught", name, type(exc).__name__))
            except asyncio.CancelledError:
                self.log.append(("cancelled_in", name, kind))
                raise
        return name

    def run(self) -> list[tuple]:
        loop = self.loop

        loop.call_soon(self.callback, "root", self.program)
        self.drive(loop.create_task(spin(DRAIN_STEPS)))
        self.log.append(("tasks", [outcome(t) for t in self.tasks]))
        self.log.append(("futures", [outcome(f) for f in self.futures]))
        self.log.append(("handles", [h.cancelled() for h in self.handles]))
        # Leave nothing pending behind: cancel what waits on futures never resolved.
        for task in self.tasks:
            task.cancel()
        for fut in self.futures:
            fut.cancel()
        if self.tasks:
            self.drive(asyncio.gather(*self.tasks, return_exceptions=True))
        # A copy: reports of what is destroyed later (a task made during the clean-up
        # above, still pending) land when the cyclic GC gets to it, at no set time.
        return list(self.log)

    def drive(self, fut) -> None:
        """run_until_complete(fut), again each time a program's ``stop`` ends it early."""
        for _ in range(100):
            try:
                self.loop.run_until_complete(fut)
                return
            except RuntimeError as exc:
                self.log.append(("driver", str(exc)))
        raise AssertionError("the driver never finished")  # pragma: no cover


def trace(kind: str, program: list[tuple], default_handler: bool = False) -> list[tuple]:
    make = lambda loop: Interpreter(loop, program)  # noqa: E731
    if default_handler:
        # The default handler logs each error: the messages (the handle's repr...) too.
        return differential_trace(kind, make, log_messages=True, default_handler=True)
    return differential_trace(kind, make)


#: A task cancelled before its first step never starts its coroutine (both loops).
never_started = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")


@never_started
@chunks(6)
def test_random_programs_leave_the_stock_loops_trace(chunk, monkeypatch):
    seeds = chunk.seeds(SEEDS, monkeypatch)
    programs = ((f"seed {s}", Generator(s).program()) for s in seeds)
    assert_programs_agree(trace, programs)


@never_started
def test_random_programs_log_the_stock_loops_error_reports():
    """With the default exception handler, its log messages (the handle's repr, the
    exception) are part of the trace."""
    programs = [(f"seed {s}", Generator(s).program()) for s in SEEDS[:1000]]
    traced = functools.partial(trace, default_handler=True)
    assert_programs_agree(traced, programs)
    # Not vacuous: the handler's log messages are in the traces.
    logged = sum(entry[0] == "logger" for _, p in programs[:200] for entry in traced("asyncio", p))
    assert logged >= 50


@never_started
def test_the_programs_exercise_every_action():
    """The generator is not vacuous: across the seeds, each kind of step happens."""
    seen: set[str] = set()
    lengths = []
    for seed in SEEDS:
        log = trace("asyncio", Generator(seed).program())
        lengths.append(len(log))
        seen.update(entry[0] for entry in log)
    expected = {
        "run",
        "cancelled",
        "handler",
        "done",
        "task",
        "awaited",
        "gathered",
        "step",
        "caught",
        "cancelled_in",
        "cancel_task",
        "driver",
    }
    assert expected <= seen, f"never seen: {sorted(expected - seen)}"
    assert sorted(lengths)[len(lengths) // 2] >= 15
    assert max(lengths) >= 60
