"""The bundle the benchmark apps serve: BENCH_MODEL_PATH, else the repo's artifacts/."""

import os
from pathlib import Path

from churn.bundle import ModelBundle, load_bundle

DEFAULT_MODEL_PATH = Path("artifacts/model.pkl")


def bench_bundle() -> ModelBundle:
    """The verified bundle named by BENCH_MODEL_PATH (the runner sets it for every server)."""
    return load_bundle(Path(os.environ.get("BENCH_MODEL_PATH", str(DEFAULT_MODEL_PATH))))
