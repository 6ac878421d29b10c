"""Random hex ids (request and prediction ids) from the OS CSPRNG, drawn in bulk.

``os.urandom`` releases the GIL on every call. On a busy server each release let the
inference or prediction-log thread take the GIL, and the event loop then waited (up to the
switch interval) to get it back, twice per request. Drawing 64 KiB at a time makes that one
release per thousands of ids; the ids stay unpredictable.
"""

from __future__ import annotations

import os

from churn.prediction_log.ids import BATCH_RANDOM_CHARS, new_batch_id

CHUNK_BYTES = 65_536


class RandomHex:
    """Hex strings cut from a pool of OS random bytes; one pool per event loop (not locked)."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self._pool = ""
        self._used = 0
        self._pid = 0

    def take(self, chars: int) -> str:
        """`chars` hex characters (4 random bits each) never handed out before."""
        end = self._used + chars
        if end > len(self._pool) or self._pid != os.getpid():  # a forked child refills
            self._pool = os.urandom(max(self.chunk_bytes, chars // 2 + 1)).hex()
            self._pid = os.getpid()
            self._used, end = 0, chars
        value = self._pool[self._used : end]
        self._used = end
        return value

    def ids(self, n: int, chars: int = 32) -> list[str]:
        """n ids of `chars` hex characters (default 128 bits, like a UUID4's randomness)."""
        raw = self.take(n * chars)
        return [raw[i : i + chars] for i in range(0, n * chars, chars)]

    def batch_id(self) -> str:
        """A prediction batch id, in the format churn.prediction_log.ids owns, from this
        pool's random digits."""
        return new_batch_id(self.take(BATCH_RANDOM_CHARS))
