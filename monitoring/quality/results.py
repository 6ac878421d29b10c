"""The result of a live-quality computation, as an immutable value (no computation here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LiveQuality:
    """Rolling quality of the production model over the labelled rows of one window.

    A metric that is undefined (too few labels, one class only, nothing predicted positive)
    is None, never NaN, so nothing meaningless reaches Prometheus or the alert rules.
    ``threshold`` is the decision threshold the precision and recall were taken at: the
    served bundle's own, so live figures speak of the decisions the API actually made.
    """

    labelled_samples: int
    positives: int
    threshold: float
    auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out
