"""The paired statistics of a rollout, one method per module on shared value types.

``delong``: DeLong's test for two correlated ROC curves (Sun & Xu's O(n log n) algorithm);
``bootstrap``: the paired bootstrap (customers resampled, both models scored on the same
resample); ``losses``: paired log-loss and Brier differences. Each returns a
:class:`~monitoring.rollout.stats.base.PairedDifference` (challenger minus champion).
"""

from monitoring.rollout.stats.base import PairedDifference, labels_needed
from monitoring.rollout.stats.bootstrap import paired_bootstrap_auc
from monitoring.rollout.stats.delong import delong_auc_difference, midrank_aucs
from monitoring.rollout.stats.losses import paired_loss_differences

__all__ = [
    "PairedDifference",
    "delong_auc_difference",
    "labels_needed",
    "midrank_aucs",
    "paired_bootstrap_auc",
    "paired_loss_differences",
]
