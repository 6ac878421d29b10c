"""The closed loop: drift confirmed + enough labelled traffic -> retrain, gate, promote.

One cycle per run, meant for a schedule (the compose drift-monitor service, the drift-check
workflow, ``make closed-loop``). Modules, data flowing one way:

``results`` (value types, exit codes) <- ``memory`` (refused windows and backoff, as registry
tags) <- ``decision`` (pure: drift + labels + memory -> what to do) <- ``cycle`` (the I/O:
registry, prediction log, retraining set, train, gate, promote) <- ``cli``.

The API follows ``@production`` (MODEL_WATCH_INTERVAL), so a promotion needs no restart.
The names below are re-exported for callers and tests (``closed_loop.main`` and friends).
"""

from monitoring.closed_loop.cli import build_parser, main, push_metrics
from monitoring.closed_loop.cycle import run_cycle, write_retraining_set
from monitoring.closed_loop.decision import consult_memory, decide, labelled_rows
from monitoring.closed_loop.memory import Backoff, LoopMemory, RegistryMemory, window_digest
from monitoring.closed_loop.results import (
    EXIT_ERROR,
    EXIT_GATE_REFUSED,
    EXIT_INSUFFICIENT,
    EXIT_OK,
    ClosedLoopError,
    CycleResult,
    Decision,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_GATE_REFUSED",
    "EXIT_INSUFFICIENT",
    "EXIT_OK",
    "Backoff",
    "ClosedLoopError",
    "CycleResult",
    "Decision",
    "LoopMemory",
    "RegistryMemory",
    "build_parser",
    "consult_memory",
    "decide",
    "labelled_rows",
    "main",
    "push_metrics",
    "run_cycle",
    "window_digest",
    "write_retraining_set",
]
