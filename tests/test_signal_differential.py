"""Random signal-handler programs must leave the stock loop's trace on weaveloop.

A seeded program adds and removes loop signal handlers (``add_signal_handler``,
replacing ones already there, ``remove_signal_handler`` with its answer logged) and
sends the process signals (``os.kill`` of its own pid, from the main thread: the kernel
delivers them at once), interleaved with a random number of loop iterations; handlers
log their call and may do more of the same. A tick logged every iteration pins the
iteration each handler ran in. Only signals whose default action is to do nothing are
used (SIGWINCH, SIGURG, SIGCONT), so a signal sent with no handler left is harmless —
and must then run nothing, on both loops.
"""

from __future__ import annotations

import os
import random
import signal

from _differential import Recording, assert_programs_agree, chunks, tracer

SEEDS = range(300)

SIGNALS = [signal.SIGWINCH, signal.SIGURG, signal.SIGCONT]
OPS = ["add", "remove", "kill", "kill_twice"]
WEIGHTS = [4, 2, 5, 1]


class Program:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.steps = [
            (rng.randint(0, 2), rng.choices(OPS, WEIGHTS)[0], rng.randrange(len(SIGNALS)))
            for _ in range(rng.randint(3, 20))
        ]
        self.reactions = [
            (rng.choice([None, None, *OPS]), rng.randrange(len(SIGNALS))) for _ in range(60)
        ]


class World(Recording):
    def __init__(self, loop, program: Program) -> None:
        super().__init__(loop)
        self.program = program
        self.reactions = iter(program.reactions)
        self.added = 0

    def handler(self, name: str, index: int) -> None:
        self.log.append(("handled", name, index))
        op, which = next(self.reactions, (None, 0))
        if op is not None:
            self.do(op, which, reacting=True)

    def do(self, op: str, which: int, reacting: bool = False) -> None:
        sig = SIGNALS[which]
        self.log.append(("op", op, which, reacting))
        try:
            if op == "add":
                self.added += 1
                self.loop.add_signal_handler(sig, self.handler, f"h{self.added}", which)
            elif op == "remove":
                self.log.append(("removed", self.loop.remove_signal_handler(sig)))
            else:
                for _ in range(2 if op == "kill_twice" else 1):
                    os.kill(os.getpid(), sig)
        except Exception as exc:  # noqa: BLE001 - what an operation raises is the trace
            self.log.append(("raised", type(exc).__name__, str(exc)))

    async def main(self) -> None:
        await self.play_ticking(self.program.steps, then=5)

    def release(self) -> None:
        for sig in SIGNALS:
            self.loop.remove_signal_handler(sig)


trace = tracer(World)


@chunks(2)
def test_random_signal_programs_leave_the_stock_loops_trace(chunk, monkeypatch):
    programs = ((f"seed {s}", Program(s)) for s in chunk.seeds(SEEDS, monkeypatch))
    assert_programs_agree(trace, programs)
    # Nothing of the programs is left installed.
    assert all(signal.getsignal(sig) == signal.SIG_DFL for sig in SIGNALS)


def test_the_signal_programs_exercise_every_event():
    """The generator is not vacuous: across the seeds, each kind of event happens."""
    seen: set[str] = set()
    for seed in SEEDS:
        for entry in trace("asyncio", Program(seed)):
            seen.add(entry[0] if entry[0] != "removed" else f"removed {entry[1]}")
    assert {"handled", "tick", "removed True", "removed False"} <= seen
