"""Promote a registered model version to an alias after the gate, or roll back.

    python promote_model.py [--config PATH] [--version N] [--alias production] [--dry-run]
    python promote_model.py --rollback [--alias production]

Exit codes: 0 done, 1 gate failed (the numbers are printed), 2 bad config or registry error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from churn.config import ConfigError, load_config
from churn.promotion import GateFailed, promote, rollback, write_model_card
from churn.registry import RegistryError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--version", help="registered version to promote (default: newest)")
    parser.add_argument("--alias", default="production", help="alias to move (production, staging)")
    parser.add_argument(
        "--rollback", action="store_true", help="return the alias to its previous version"
    )
    parser.add_argument("--dry-run", action="store_true", help="run the gate only; move nothing")
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
        if args.rollback:
            result = rollback(config, alias=args.alias)
            print(f"rolled back {name}@{args.alias}: v{result.previous} -> v{result.version}")
        else:
            result = promote(config, version=args.version, alias=args.alias, dry_run=args.dry_run)
            assert result.decision is not None
            print(f"gate passed: {result.decision.summary()}")
            if args.dry_run:
                print(f"dry run: {name}@{args.alias} not moved")
                return 0
            if not result.changed:
                print(f"{name}@{args.alias} already is v{result.version}")
            else:
                was = f" (was v{result.previous}, now archived)" if result.previous else ""
                print(f"promoted {name} v{result.version} to @{args.alias}{was}")
        if args.alias == "production" and (result.changed or args.model_card):
            card = write_model_card(
                config, result.version, args.alias, args.model_card or config.export.model_card
            )
            print(f"model card written to {card}")
    except GateFailed as exc:
        print(f"gate failed: {exc.decision.summary()}: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
