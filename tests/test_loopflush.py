"""The end-of-iteration flusher: once per iteration, at once off the loop and at shutdown."""

from __future__ import annotations

import asyncio

import pytest

from app.loopflush import IterationFlusher


def test_flushes_run_once_at_the_end_of_the_iteration() -> None:
    flusher = IterationFlusher()
    calls: list[str] = []

    def a() -> None:
        calls.append("a")

    def b() -> None:
        calls.append("b")

    async def main() -> list[str]:
        for _ in range(10):
            flusher.defer(a)
            flusher.defer(b)
        seen = list(calls)
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(main()) == []  # nothing ran inside the iteration
    assert calls == ["a", "b"]  # then each once, in the order first deferred


def test_off_the_loop_a_flush_runs_at_once() -> None:
    flusher = IterationFlusher()
    calls: list[int] = []
    flusher.defer(lambda: calls.append(1))
    assert calls == [1]


def test_after_stop_deferring_that_loop_flushes_at_once_and_others_batch() -> None:
    """Uvicorn logs its last lines after the lifespan, and its process may die within that
    iteration: from stop_deferring on, that loop's flushes run immediately."""
    flusher = IterationFlusher()
    calls: list[str] = []

    async def shutting_down() -> None:
        flusher.defer(lambda: calls.append("pending"))
        flusher.stop_deferring()
        assert calls == ["pending"]
        flusher.defer(lambda: calls.append("last line"))
        assert calls == ["pending", "last line"]

    asyncio.run(shutting_down())

    async def another_loop() -> bool:
        flusher.defer(lambda: calls.append("later"))
        return "later" in calls

    assert asyncio.run(another_loop()) is False  # a new loop batches again
    assert calls[-1] == "later"


def test_one_failing_flush_does_not_stop_the_others() -> None:
    flusher = IterationFlusher()
    calls: list[str] = []

    def broken() -> None:
        raise OSError("stdout closed")

    async def main() -> None:
        flusher.defer(broken)
        flusher.defer(lambda: calls.append("metrics"))

    asyncio.run(main())  # the error goes to the loop's exception handler
    assert calls == ["metrics"]

    async def again() -> None:
        flusher.defer(lambda: calls.append("again"))
        await asyncio.sleep(0)

    asyncio.run(again())  # the flusher is not stuck
    assert calls == ["metrics", "again"]
    with pytest.raises(OSError, match="stdout closed"):
        flusher.defer(broken)  # off the loop the error reaches the caller
