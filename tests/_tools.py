"""Helpers for tests that need a real external tool or service.

Locally a missing tool skips the test with a hint; under CI=true it fails, because CI must
install everything the suite needs (.ci/run does) and a skipped test proves nothing.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Return the path of an executable, or skip/fail when it is not installed."""
    path = shutil.which(name)
    if path is None:
        missing(f"'{name}' is not installed")
        raise AssertionError("unreachable")
    return path


def free_port() -> int:
    """A free TCP port on loopback (racy by nature, good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
