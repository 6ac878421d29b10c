"""The metric names the API and the drift job emit, as the dashboards and alerts expect them.

Written once here; tests of the emitters and of the consumers (dashboard, rules) check against it.
"""

from __future__ import annotations

# Progressive delivery (#13, notes in ROLLOUT.md): predictions_total, prediction_latency_seconds,
# high_risk_predictions_total and prediction_decisions_total carry role="champion" | "challenger"
# (the model that answered).
API_HISTOGRAMS = frozenset(
    {
        "prediction_latency_seconds",  # role
        "prediction_probability",
        "http_request_duration_seconds",
        "shadow_latency_seconds",  # the challenger's scoring time in shadow
    }
)
API_METRICS = API_HISTOGRAMS | {
    "predictions_total",  # outcome="success" | "error", role
    "prediction_decisions_total",  # decision="churn" | "no_churn", role
    "high_risk_predictions_total",  # role
    "http_requests_total",
    "model_info",
    "prediction_log_dropped_total",
    "unknown_category_total",
    "model_reloads_total",
    "model_alias_mismatch",
    "shadow_predictions_total",  # outcome="success" | "error" | "dropped"
    "rollout_canary_share",  # the share this worker applies now
    "rollout_stage",  # stage=...: 1 for the stage this worker applies
    "rollout_rollbacks_total",  # reason="error_ratio" | "latency" | "high_risk"
    "challenger_refused_total",  # reason
}
# Pushed by `monitoring.drift_detector --pushgateway` (job drift_monitor).
DRIFT_METRICS = frozenset(
    {
        "drift_feature_p_value",
        "drift_feature_effect_size",
        "drift_feature_drifted",
        "drift_detected",
        "drift_prediction_drifted",
        "drift_prediction_p_value",
        "drift_last_run_timestamp_seconds",
        "live_auc",
        "live_precision",
        "live_recall",
        "live_labelled_samples",
        "drift_insufficient_data",
    }
)
# Pushed with them by the estimated-performance section (monitoring.performance).
PERFORMANCE_METRICS = frozenset(
    {
        "churn_estimated_metric",
        "churn_realised_metric",
        "churn_estimation_error",
        "churn_concept_shift",
        "churn_estimated_rows",
        "churn_gate_min_auc",
        "churn_segment_predicted_rate",
        "churn_segment_observed_rate",
        "churn_segment_miscalibrated",
    }
)
# Pushed by the rollout evaluation (monitoring/rollout, job rollout_evaluation).
ROLLOUT_METRICS = frozenset(
    {
        "rollout_auc_difference",
        "rollout_auc_difference_lower",
        "rollout_auc_difference_upper",
        "rollout_labelled_pairs",
        "rollout_decision",  # decision="promote" | "reject" | "undecided": 1 for the current one
        "rollout_tier_agreement",
        "rollout_evaluation_timestamp_seconds",
    }
)
CONTRACT_METRICS = API_METRICS | DRIFT_METRICS | PERFORMANCE_METRICS | ROLLOUT_METRICS
