"""Async generators: the loop's firstiter/finalizer hooks and shutdown_asyncgens.

Differential: every test runs on weaveloop and on the stock loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import warnings

from _support import run


def test_hooks_installed_while_running_and_restored_after(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    hooks = run(loop, main())
    assert hooks.firstiter is not None
    assert hooks.finalizer is not None
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_finalises_open_generators(loop):
    finalized = []

    async def agen(name):
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            finalized.append(name)

    gens = []

    async def main():
        for name in ("a", "b", "c"):
            g = agen(name)
            await g.__anext__()
            gens.append(g)

    run(loop, main())
    assert finalized == []
    run(loop, loop.shutdown_asyncgens())
    assert sorted(finalized) == ["a", "b", "c"]


def test_shutdown_asyncgens_reports_errors_to_the_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("while closing")

    holder = []

    async def main():
        g = agen()
        await g.__anext__()
        holder.append(g)

    run(loop, main())
    run(loop, loop.shutdown_asyncgens())
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx["message"].startswith("an error occurred during closing of asynchronous generator")
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["asyncgen"] is holder[0]


def test_garbage_collected_generator_is_finalised_on_the_loop(loop):
    async def main():
        done = loop.create_future()

        async def agen():
            try:
                yield 1
                yield 2
            finally:
                done.set_result(asyncio.get_running_loop())

        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        return await done

    assert run(loop, main()) is loop


def test_first_iteration_after_shutdown_warns(loop):
    async def agen():
        yield 1

    run(loop, loop.shutdown_asyncgens())

    async def main():
        g = agen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await g.__anext__()
        await g.aclose()
        return caught

    caught = run(loop, main())
    assert any(
        issubclass(w.category, ResourceWarning) and "shutdown_asyncgens" in str(w.message)
        for w in caught
    )


def test_shutdown_asyncgens_without_generators_is_a_no_op(loop):
    assert run(loop, loop.shutdown_asyncgens()) is None


def test_generator_collected_between_the_last_run_and_close_is_dropped_quietly(loop, caplog):
    # The classic run_until_complete() then close(), without shutdown_asyncgens(): the
    # generator's finaliser fires while the loop is stopped. As with the stock loop,
    # close() does not finalise it and logs nothing.
    finalised = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalised.append(True)

    async def start():
        g = agen()
        await g.__anext__()
        return g

    g = run(loop, start())
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        del g
        gc.collect()
        loop.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert finalised == []
