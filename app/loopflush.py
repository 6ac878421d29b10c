"""End-of-iteration flushing: what requests leave behind is done once per event-loop iteration.

Access lines, metric increments and the batcher's hand-over to the inference thread are cheap
to collect and costly to apply one by one (a write system call, a locked mmap write, a thread
wake-up each). Each component collects its work and defers one flush here; the flusher runs
every deferred flush once at the end of the current loop iteration (one ``call_soon`` for all
of them), and at once when no loop is running (tests, other threads).

At shutdown nothing may stay due: uvicorn logs its last lines ("Application shutdown
complete", "Finished server process") on the loop after the lifespan has ended, then
re-raises the SIGTERM it caught, and the process dies within that loop iteration (atexit
does not run). So the lifespan ends with ``flush_all_and_stop_deferring``: everything due is
run, and from then on that loop's flushes run at once. ``flush_at_exit`` also runs what is
due at interpreter exit and at a multiprocessing worker's exit (``os._exit``, no atexit).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing.util
from collections.abc import Callable

Flush = Callable[[], None]


class IterationFlusher:
    """Runs each deferred flush once at the end of the current event-loop iteration."""

    def __init__(self) -> None:
        self._due: list[Flush] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._immediate_loop: asyncio.AbstractEventLoop | None = None  # shutting down

    def defer(self, flush: Flush) -> None:
        """Run `flush` at the end of this loop iteration (once, however often deferred);
        at once when the caller is not on a running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            flush()
            return
        if loop is self._immediate_loop:
            self.run()
            flush()
            return
        if loop is not self._loop:
            self._loop = loop
            self.run()  # due on a loop that ended before it ran them
        due = self._due
        if not due:
            loop.call_soon(self.run)
        if flush not in due:
            due.append(flush)

    def run(self) -> None:
        """Run every flush that is due, in the order first deferred; one that fails does not
        keep the others from running (its error is raised after them)."""
        due, self._due = self._due, []
        error: Exception | None = None
        for flush in due:
            try:
                flush()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def stop_deferring(self) -> None:
        """Run what is due; from now on flushes deferred on the running loop run at once
        (its last iteration may be cut short). Other loops are not affected."""
        with contextlib.suppress(RuntimeError):
            self._immediate_loop = asyncio.get_running_loop()
        self.run()


flusher = IterationFlusher()
defer = flusher.defer
flush_all = flusher.run
flush_all_and_stop_deferring = flusher.stop_deferring

_exit_hooks_registered = False


def flush_at_exit() -> None:
    """Make `flush_all` run when this process ends, also as a multiprocessing worker."""
    global _exit_hooks_registered
    if _exit_hooks_registered:
        return
    _exit_hooks_registered = True
    atexit.register(flush_all)
    multiprocessing.util.Finalize(None, flush_all, exitpriority=0)
