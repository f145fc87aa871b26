"""Random timer programs on a virtual clock must leave the stock loop's trace on weaveloop.

The loop's ``time`` is replaced on the instance by a virtual clock (as virtual-clock test
helpers do) that moves only when a tick callback, re-queued every iteration, advances it
by a seeded step. Timers, sleeps and timeouts then fire in iterations fixed by the clock,
not by how fast the machine is. A seeded program schedules ``call_later`` and
``call_at`` timers (their callbacks schedule more), cancels them, reads ``when()``, and
runs tasks that ``asyncio.sleep``, ``wait_for`` futures with timeouts, use
``asyncio.timeout()`` (and reschedule it), ``asyncio.wait`` with a timeout, and resolve
futures. The trace (each event with the iteration it happened in) must match the stock
loop's.
"""

from __future__ import annotations

import asyncio
import random

from _differential import Recording, assert_programs_agree, chunks, pick, tracer

SEEDS = range(1000)

#: Delays, each drawn with a random jitter added: two timers due at exactly the same
#: time fire in an order asyncio leaves undefined, so a program never makes any.
DELAYS = [0.0, 0.0007, 0.0013, 0.0029, 0.0041, 0.0093, 0.0177, 0.0311, -0.002]
STEPS = [0.0, 0.0005, 0.001, 0.0031, 0.0102]


class Program:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.clock_steps = [rng.choice(STEPS) for _ in range(400)]
        self.actions = [self.action(rng, 0) for _ in range(rng.randint(3, 12))]

    def action(self, rng: random.Random, depth: int) -> tuple:
        kind = rng.choices(
            ["later", "at", "cancel", "when", "task", "resolve"], [6, 3, 3, 2, 4, 2]
        )[0]
        if kind in ("later", "at"):
            body = [self.action(rng, depth + 1) for _ in range(rng.randint(0, 2))]
            return (kind, self.delay(rng), body if depth < 3 else [])
        if kind == "task":
            steps = [
                (
                    rng.choice(["sleep", "wait_for", "timeout", "reschedule", "wait", "log"]),
                    self.delay(rng),
                    # The inner wait: a sleep under a timeout, or when a future resolves
                    self.delay(rng),
                    # (a future that never resolves, a third of the time).
                    rng.random() < 0.33,
                )
                for _ in range(rng.randint(1, 4))
            ]
            return (kind, steps)
        return (kind, rng.randrange(1 << 16))

    @staticmethod
    def delay(rng: random.Random) -> float:
        return rng.choice(DELAYS) + rng.random() * 1e-4


class Clock:
    def __init__(self, steps: list[float]) -> None:
        self.now = 5000.0
        self.steps = iter(steps)

    def time(self) -> float:
        return self.now

    def advance(self) -> None:
        self.now += next(self.steps, 0.01)


class World(Recording):
    def __init__(self, loop, program: Program) -> None:
        super().__init__(loop)
        self.program = program
        self.clock = Clock(program.clock_steps)
        loop.time = self.clock.time
        self.handles: list[asyncio.TimerHandle] = []
        self.futures: list[asyncio.Future] = []
        self.tasks: list[asyncio.Task] = []
        self.names = 0

    def tick(self) -> None:
        self.clock.advance()
        super().tick()

    def name(self) -> str:
        self.names += 1
        return f"n{self.names}"

    def fired(self, name: str, body: list) -> None:
        self.log.append(("fired", name))
        for action in body:
            self.do(action)

    def do(self, action: tuple) -> None:
        loop, kind = self.loop, action[0]
        if kind == "later":
            name = self.name()
            self.handles.append(loop.call_later(action[1], self.fired, name, action[2]))
            self.log.append(("later", name))
        elif kind == "at":
            name = self.name()
            when = self.clock.now + action[1]
            self.handles.append(loop.call_at(when, self.fired, name, action[2]))
            self.log.append(("at", name))
        elif kind == "cancel":
            handle = pick(self.handles, action[1])
            if handle is not None:
                handle.cancel()
                self.log.append(("cancel", self.handles.index(handle)))
        elif kind == "when":
            handle = pick(self.handles, action[1])
            if handle is not None:
                self.log.append(("when", handle.when() - 5000.0, handle.cancelled()))
        elif kind == "task":
            name = self.name()
            self.tasks.append(loop.create_task(self.task(name, action[1])))
        elif kind == "resolve":
            future = pick(self.futures, action[1])
            if future is not None and not future.done():
                future.set_result(self.ticks)

    async def task(self, name: str, steps: list) -> None:
        self.log.append(("task", name))
        for kind, delay, inner, never in steps:
            try:
                if kind == "sleep":
                    await asyncio.sleep(delay)
                elif kind == "wait_for":
                    await asyncio.wait_for(self.future(inner, never), delay)
                elif kind in ("timeout", "reschedule"):
                    async with asyncio.timeout(delay) as scope:
                        if kind == "reschedule":
                            scope.reschedule(self.clock.now + delay * 2)
                        await asyncio.sleep(inner)
                elif kind == "wait":
                    done, _ = await asyncio.wait([self.future(inner, never)], timeout=delay)
                    self.log.append(("waited", name, len(done)))
                self.log.append(("step", name, kind))
            except TimeoutError:
                self.log.append(("timed out", name, kind))

    def future(self, delay: float, never: bool) -> asyncio.Future:
        """A future a timer resolves after ``delay`` (``never``: none does)."""
        future = self.loop.create_future()
        self.futures.append(future)
        if not never:
            self.handles.append(self.loop.call_later(delay, self.settle_future, future))
        return future

    def settle_future(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_result(None)
            self.log.append(("resolved", self.futures.index(future)))

    async def main(self) -> None:
        self.start_ticks()
        for action in self.program.actions:
            self.do(action)
        # 0.25 s of virtual time: every deadline a program can make has passed.
        while self.clock.now < 5000.25:
            await asyncio.sleep(0)
        self.stop_ticks()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


trace = tracer(World)


@chunks(2)
def test_random_timer_programs_leave_the_stock_loops_trace(chunk, monkeypatch):
    programs = ((f"seed {s}", Program(s)) for s in chunk.seeds(SEEDS, monkeypatch))
    assert_programs_agree(trace, programs)


def test_the_timer_programs_exercise_every_event():
    """The generator is not vacuous: across the seeds, each kind of event happens."""
    seen: set[str] = set()
    for seed in SEEDS:
        for entry in trace("asyncio", Program(seed)):
            seen.add(entry[0] if entry[0] not in ("step", "timed out") else entry[0] + entry[2])
    expected = {"fired", "later", "at", "cancel", "when", "task", "resolved", "waited"}
    expected |= {f"step{kind}" for kind in ("sleep", "wait_for", "timeout", "wait")}
    expected |= {f"timed out{kind}" for kind in ("wait_for", "timeout", "reschedule")}
    assert expected <= seen, f"never seen: {sorted(expected - seen)}"
