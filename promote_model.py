"""Promote a registered model version to an alias after the gate, or roll back.

    python promote_model.py [--config PATH] [--version N] [--alias production] [--dry-run]
    python promote_model.py --rollback [--alias production]

Promoting (or rolling back) `production` exports the version's verified bundle to
`export.artifacts_dir` (what `make serve` serves) with release.json, and writes the model
card; a refused candidate leaves both untouched. Every outcome is one line.

Exit codes:
  0  promoted, rolled back, already in place, or (--dry-run) the gate passed
  1  the gate refused the candidate (the numbers and reasons are printed)
  2  error: bad config, registry unreachable or failing, no such version, a bundle that
     is missing or fails verification, production without a finite val_auc, unwritable output
  3  another promotion or rollback of the same model was running; nothing was changed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from churn.bundle import BundleError
from churn.config import ConfigError, load_config
from churn.promotion import GateFailed, PromotionError, PromotionResult, promote, rollback
from churn.redact import redact
from churn.registry import PromotionLocked, RegistryError, bounded_http_retries

EXIT_OK = 0
EXIT_GATE_REFUSED = 1
EXIT_ERROR = 2
EXIT_LOCKED = 3


def _report(name: str, alias: str, result: PromotionResult, dry_run: bool) -> None:
    if result.decision is None:  # a rollback
        print(f"rolled back {name}@{alias}: v{result.previous} -> v{result.version}")
    else:
        print(f"gate passed: {result.decision.summary()}")
        if dry_run:
            print(f"dry run: {name}@{alias} not moved")
        elif not result.changed:
            print(f"{name}@{alias} already is v{result.version}")
        else:
            was = f" (was v{result.previous}, now archived)" if result.previous else ""
            print(f"promoted {name} v{result.version} to @{alias}{was}")
    if result.exported_to is not None:
        print(f"serving v{result.version}: bundle and release.json in {result.exported_to}/")
    if result.model_card is not None and not dry_run:
        print(f"model card written to {result.model_card}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--version", help="registered version to promote (default: newest)")
    parser.add_argument("--alias", default="production", help="alias to move (production, staging)")
    parser.add_argument(
        "--rollback", action="store_true", help="return the alias to its previous version"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run the gate and checks only; change nothing"
    )
    parser.add_argument(
        "--model-card",
        type=Path,
        help="where to write the model card (default: export.model_card from the config)",
    )
    args = parser.parse_args(argv)
    if args.rollback and (args.version or args.dry_run):
        parser.error("--rollback takes no --version or --dry-run")
    try:
        config = load_config(args.config)
        name = config.mlflow.model_name
        with bounded_http_retries():
            if args.rollback:
                result = rollback(config, alias=args.alias, model_card=args.model_card)
            else:
                result = promote(
                    config,
                    version=args.version,
                    alias=args.alias,
                    dry_run=args.dry_run,
                    model_card=args.model_card,
                )
        _report(name, args.alias, result, args.dry_run)
    except GateFailed as exc:
        print(f"gate failed: {exc.decision.summary()}: {exc}", file=sys.stderr)
        return EXIT_GATE_REFUSED
    except PromotionLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (ConfigError, RegistryError, PromotionError, BundleError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # never a traceback: one line, credentials redacted
        print(f"error: unexpected {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
