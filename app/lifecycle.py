"""One worker's model lifecycle: load in the background, follow reloads, tell what is live.

Start-up never waits on the registry: the lifespan starts `ModelLifecycle.run` as a task, and
``/health`` answers at once. The task

- loads the model until it is ready, retrying with exponential backoff (up to
  MODEL_RETRY_MAX_INTERVAL) whether or not the watcher is on, so a registry that comes back
  or a bundle copied to MODEL_PATH later is picked up without a restart;
- follows the shared reload generation (app.workers): ``POST /admin/reload`` on one worker
  bumps it and every other worker reloads within MODEL_SYNC_INTERVAL (a follower that finds
  the registry unreachable keeps its model and tries that generation again with backoff);
- publishes what this worker serves, for ``GET /model`` and the reload answer;
- checks that the served version is still the target of its alias (release.json or
  MODEL_URI), warning loudly and setting ``model_alias_mismatch`` when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from app.model import ServedModel, load_model
from app.service import ModelService, ReloadError, ReloadResult
from app.settings import Settings
from app.source import (
    REGISTRY_UNREACHABLE,
    RegistryProblem,
    alias_target,
    describe,
    probe_registry,
    tracking_uri,
)
from app.workers import StateDir, WorkerRecord, state_root

logger = logging.getLogger("app.lifecycle")

FIRST_RETRY = 0.5  # seconds before the second attempt; doubled after each failure


def load_checked(settings: Settings) -> ServedModel:
    """`load_model`, after asking the registry for the alias (MODEL_URI), so an unreachable
    registry and a missing alias fail fast with their own reasons. Blocking."""
    probe_registry(settings)
    return load_model(settings)


@dataclass(frozen=True)
class ReloadReport:
    """The answer to a reload asked of every worker."""

    result: ReloadResult
    generation: int
    workers: list[WorkerRecord]
    not_swapped: list[dict[str, Any]]  # pid and why, for workers that did not follow in time


@dataclass(frozen=True)
class AliasCheck:
    """The last comparison of the served version with its alias's target."""

    status: str  # "match", "mismatch", "error" or "not checked"
    alias_target: str | None = None
    reason: str | None = None


class ModelLifecycle:
    """The background loader and reload follower of one worker process."""

    def __init__(self, service: ModelService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        root = state_root(settings.model_state_dir)
        stale_after = max(5.0, 5 * settings.model_sync_interval)
        self.state = StateDir(root, stale_after) if root is not None else None
        self.pid = os.getpid()
        self.generation = 0  # the newest reload generation applied (or tried) here
        self.status = "loading"
        self.alias_check = AliasCheck("not checked")
        self._lock = asyncio.Lock()  # one load at a time between the loop and /admin/reload
        self._frozen = False
        self._attempted = False
        self._checks: set[asyncio.Task[object]] = set()
        # A reload asked of every worker that failed here for a registry outage: when to
        # try it again, and the next wait.
        self._follow_at = 0.0
        self._follow_delay = FIRST_RETRY

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Forever (cancelled at shutdown): load until ready, then follow reloads."""
        delay = FIRST_RETRY
        # after a failed first_load, the first retry waits too
        next_attempt = time.monotonic() + delay if self._attempted else 0.0
        while True:
            try:
                if self.service.model is None and time.monotonic() >= next_attempt:
                    if await self._attempt():
                        delay = FIRST_RETRY
                    else:
                        next_attempt = time.monotonic() + delay
                        logger.warning(
                            "no model yet (%s); next attempt in %.1f s",
                            self.service.last_error,
                            delay,
                        )
                        delay = min(2 * delay, self.settings.model_retry_max_interval)
                elif self.service.model is not None:
                    await self._follow()
                    # a canary rolled back by a sibling worker's guardrail
                    await self.service.rollout.follow_siblings()
                await self.publish()
            except Exception as exc:  # never let the loop die: it is what makes a worker ready
                logger.error("model lifecycle step failed: %s", describe(exc))
            pause = self.settings.model_sync_interval
            if self.service.model is None:
                pause = min(pause, max(0.05, next_attempt - time.monotonic()))
            await asyncio.sleep(pause)

    async def _attempt(self) -> bool:
        """One load while no model is served, for the current generation."""
        wanted = await self._wanted_generation()
        async with self._lock:
            return self.service.model is not None or await self._apply(wanted)

    async def _follow(self) -> None:
        """Reload when another worker asked for a newer generation."""
        wanted = await self._wanted_generation()
        async with self._lock:
            if wanted > self.generation and time.monotonic() >= self._follow_at:
                await self._apply(wanted)

    async def first_load(self) -> bool:
        """One attempt now (before serving); False when it failed (`run` retries)."""
        wanted = await self._wanted_generation()
        async with self._lock:
            loaded = await self._apply(wanted)
        await self.publish()
        return loaded

    async def _wanted_generation(self) -> int:
        if self.state is None:
            return self.generation
        try:
            return await asyncio.to_thread(self.state.generation)
        except OSError as exc:
            logger.warning("cannot read the shared reload generation: %s", exc)
            return self.generation

    async def _apply(self, generation: int) -> bool:
        """Load for `generation` (caller holds the lock); False when the load failed."""
        self._attempted = True
        self.status = "loading"
        try:
            await self.service.load()
        except ReloadError as exc:
            self.status = "failed" if self.service.model is None else "serving (reload failed)"
            if exc.reason == REGISTRY_UNREACHABLE and self.service.model is not None:
                # An outage, not a bad version: the previous model keeps serving and
                # `_follow` tries this generation again once the wait is over.
                self._follow_at = time.monotonic() + self._follow_delay
                self._follow_delay = min(
                    2 * self._follow_delay, self.settings.model_retry_max_interval
                )
                return False
            # Not retried for this generation; the previous model (if any) keeps serving.
            self.generation = generation
            return False
        self.generation = generation
        self._follow_at, self._follow_delay = 0.0, FIRST_RETRY
        self._loaded()
        return True

    def _loaded(self) -> None:
        self.status = "serving"
        if not self._frozen:
            # Once, after the first model is in: the loaded libraries and model are many
            # long-lived objects that every full collection would walk (~100 ms pauses).
            # Not on every swap: frozen objects are never collected, so freezing again would
            # keep each replaced model's cyclic garbage forever.
            gc.freeze()
            self._frozen = True
        loop = asyncio.get_running_loop()
        checks: list[Coroutine[Any, Any, object]] = [self.check_alias()]
        model = self.service.model
        if self.service.rollout.enabled and model is not None:
            # Every load re-reads @challenger and its record: a reload asked of every worker
            # (a webhook for a challenger move or a rollout record change) reaches the
            # rollout at once, not at the next watcher tick.
            checks.append(self.service.rollout.sync(model))
        for check in checks:
            task = loop.create_task(check)
            self._checks.add(task)  # a reference until done (the loop keeps only weak ones)
            task.add_done_callback(self._checks.discard)

    # ------------------------------------------------------------------ what this worker serves

    def record(self) -> WorkerRecord:
        model = self.service.model
        release = self.service.release
        return WorkerRecord(
            pid=self.pid,
            status=self.status,
            generation=self.generation,
            heartbeat=time.time(),
            model_version=model.version if model else None,
            model_alias=release.alias if release and model else None,
            run_id=model.run_id if model else None,
            loaded_at=self.service.loaded_at if model else None,
            reason=self.service.last_error,
        )

    async def publish(self) -> None:
        if self.state is None:
            return
        try:
            await asyncio.to_thread(self.state.write, self.record())
        except OSError as exc:
            logger.warning("cannot publish this worker's state: %s", exc)

    async def workers(self) -> list[WorkerRecord]:
        """What every live worker serves (this one alone without a shared state dir)."""
        if self.state is None:
            return [self.record()]
        try:
            records = await asyncio.to_thread(self.state.live)
        except OSError as exc:
            logger.warning("cannot read the workers' state: %s", exc)
            records = []
        others = [r for r in records if r.pid != self.pid]
        return sorted([self.record(), *others], key=lambda r: r.pid)

    async def stop(self) -> None:
        if self.state is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.state.remove, self.pid)

    # ------------------------------------------------------------------ reload on every worker

    async def reload_here(self) -> ReloadResult:
        """Reload this worker only (the watcher: every worker watches the source itself)."""
        async with self._lock:
            result = await self._load_here()
            self._loaded()
        await self.publish()
        return result

    async def _load_here(self) -> ReloadResult:
        """Load on this worker (caller holds the lock); a refusal sets the status and raises."""
        try:
            return await self.service.load()
        except ReloadError:
            self.status = "serving (reload failed)" if self.service.model else "failed"
            raise

    async def reload_everywhere(self) -> ReloadReport:
        """Reload here; if that worked, ask every worker to follow and wait (bounded) until
        they have. ReloadError (nothing asked of the others) when the load here fails."""
        async with self._lock:
            result = await self._load_here()
            if self.state is not None:
                generation = await asyncio.to_thread(self.state.bump)
            else:
                generation = self.generation + 1
            self.generation = generation
            self._loaded()
        await self.publish()
        deadline = time.monotonic() + self.settings.reload_wait_timeout
        while True:
            workers = await self.workers()
            behind = [w for w in workers if w.generation < generation or w.status != "serving"]
            if not behind or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        not_swapped = [
            {
                "pid": w.pid,
                "model_version": w.model_version,
                "reason": w.reason
                if w.generation >= generation and w.reason
                else "did not follow the reload in time",
            }
            for w in behind
        ]
        if not_swapped:
            logger.error(
                "reload generation %d: %d worker(s) did not swap",
                generation,
                len(not_swapped),
                extra={"not_swapped": not_swapped},
            )
        return ReloadReport(result, generation, workers, not_swapped)

    # ------------------------------------------------------------------ alias check

    async def check_alias(self) -> AliasCheck:
        """Compare the served version with its alias's current target in the registry."""
        model, release = self.service.model, self.service.release
        tracking = tracking_uri(self.settings)
        if model is None or release is None or release.alias is None or tracking is None:
            return self.alias_check
        try:
            target = await asyncio.to_thread(
                alias_target, tracking, release.model_name, release.alias
            )
        except RegistryProblem as exc:
            # Fail closed: an unanswered check is "error", never "match".
            self.alias_check = AliasCheck("error", reason=str(exc))
            logger.warning(
                "cannot check alias '%s': %s (%s)",
                release.alias,
                exc,
                describe(exc),
            )
            return self.alias_check
        mismatch = target != model.version
        self.service.metrics.set_alias_mismatch(release.alias, mismatch)
        if mismatch:
            self.alias_check = AliasCheck("mismatch", alias_target=target)
            logger.error(
                "SERVING A VERSION THAT IS NOT THE ALIAS TARGET: %s@%s %s, "
                "this worker serves version %s",
                release.model_name,
                release.alias,
                f"is version {target}" if target else "no longer exists",
                model.version,
            )
        else:
            self.alias_check = AliasCheck("match", alias_target=target)
        return self.alias_check
