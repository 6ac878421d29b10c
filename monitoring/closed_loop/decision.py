"""What a closed-loop cycle should do, decided from values only (no store is touched here).

First the drift verdict and the label count (:func:`decide`), then the loop's memory of
refused candidates (:func:`consult_memory`): a data window whose retrain the gate already
refused is not retrained again, and after refusals the loop waits longer and longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd

from monitoring.closed_loop.memory import Backoff, LoopMemory
from monitoring.closed_loop.results import Action, ClosedLoopError, Decision
from monitoring.drift.results import DriftRun
from monitoring.drift.sources import OUTCOME_COLUMN

ESTIMATED_AUC_TRIGGER = "estimated AUC below the gate"


def drift_reasons(run: DriftRun) -> list[str]:
    """Why to retrain: the features that drifted, 'prediction' when the scores moved, and the
    AUC estimated without labels falling below the promotion gate (monitoring.performance):
    a model that can no longer pass its own gate needs a retrain even before labels say so."""
    reasons = list(run.drifted_features)
    if run.prediction is not None and run.prediction.drifted:
        reasons.append("prediction")
    if run.performance is not None and run.performance.estimated_auc_below_gate:
        reasons.append(ESTIMATED_AUC_TRIGGER)
    return reasons


def decide(run: DriftRun, labelled: int, min_labelled: int) -> Decision:
    """Retrain only on confirmed drift (or an estimated AUC below the gate) with enough labels;
    otherwise say why not.

    A window where nothing could be judged is its own answer ("insufficient"), never
    "no drift": the loop is blind there, not reassured.
    """
    drifted = drift_reasons(run)
    if not drifted:
        action: Action = "insufficient" if run.nothing_judged else "none"
        return Decision(action, f"{run.summary_line()}; nothing to do", [], labelled)
    what = ", ".join(drifted)
    if labelled < min_labelled:
        return Decision(
            "wait",
            f"drift in {what}, but only {labelled:,} labelled rows (< {min_labelled:,}); "
            "waiting for more feedback before retraining",
            drifted,
            labelled,
        )
    return Decision(
        "retrain", f"drift in {what} and {labelled:,} labelled rows: retraining", drifted, labelled
    )


def consult_memory(
    decision: Decision, memory: LoopMemory, window: str, backoff: Backoff, now: datetime
) -> Decision:
    """Turn a "retrain" into "skip" (this window was refused) or "backoff" (too soon after
    the last refusal); any other decision passes unchanged."""
    if decision.action != "retrain":
        return decision
    refused = memory.refused.get(window)
    if refused is not None:
        return Decision(
            "skip",
            f"the gate refused v{refused.version}, trained on this same data window, at "
            f"{refused.at.isoformat(timespec='seconds')}; not retraining until new labels, "
            "new training data or a config change make a new window",
            decision.drifted,
            decision.labelled,
        )
    next_attempt = memory.next_attempt_at(backoff)
    if next_attempt is not None and now < next_attempt:
        return Decision(
            "backoff",
            f"{memory.refusals} refused retrain(s) in a row; backing off until "
            f"{next_attempt.isoformat(timespec='seconds')}",
            decision.drifted,
            decision.labelled,
        )
    return decision


def labelled_rows(current: pd.DataFrame, features: Sequence[str], target: str) -> pd.DataFrame:
    """Log rows with feedback as training rows: the features plus the outcome as `target`
    (the config's data.target_column)."""
    if current.empty or OUTCOME_COLUMN not in current:
        return pd.DataFrame(columns=[*features, target])
    rows = current[current[OUTCOME_COLUMN].notna()]
    missing = [f for f in features if f not in rows.columns]
    if missing:
        raise ClosedLoopError(f"prediction log rows lack feature column(s): {', '.join(missing)}")
    out = rows[list(features)].copy()
    out[target] = rows[OUTCOME_COLUMN].astype(int).to_numpy()
    return out.reset_index(drop=True)
