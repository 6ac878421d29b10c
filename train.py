"""Train the churn model from config.yaml, log and register it in MLflow, export the bundle.

    python train.py [--config PATH]

Exit codes: 0 trained, 2 bad config or data (nothing is logged to MLflow).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from churn.config import ConfigError, load_config
from churn.data import DataValidationError
from churn.training import print_progress, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        result = train(config, config_path=args.config, progress=print_progress)
    except (ConfigError, DataValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    print(
        f"trained {result.model_name} v{result.model_version} (run {result.run_id}) in "
        f"{result.seconds:.1f}s: val AUC {m['val_auc']:.4f}, PR-AUC {m['val_pr_auc']:.4f}, "
        f"F1 {m['val_f1']:.4f}, Brier {m['val_brier']:.4f}; ONNX {result.onnx.reason}; "
        f"bundle {result.bundle_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
