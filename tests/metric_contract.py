"""The metric names the API and the drift job emit, as the dashboards and alerts expect them.

Written once here; tests of the emitters and of the consumers (dashboard, rules) check against it.
"""

from __future__ import annotations

API_HISTOGRAMS = frozenset(
    {
        "prediction_latency_seconds",  # role="champion" | "challenger"
        "prediction_probability",
        "http_request_duration_seconds",
        "shadow_latency_seconds",
    }
)
API_METRICS = API_HISTOGRAMS | {
    # role="champion" | "challenger" (the model that answered) on the next three and latency
    "predictions_total",  # outcome="success" | "error"
    "prediction_decisions_total",  # decision="churn" | "no_churn"
    "high_risk_predictions_total",
    "http_requests_total",
    "model_info",
    "prediction_log_dropped_total",
    "unknown_category_total",
    "model_reloads_total",
    "model_alias_mismatch",
    # progressive delivery (app/rollout.py)
    "shadow_predictions_total",  # outcome="success" | "error" | "dropped"
    "rollout_canary_share",
    "rollout_stage",  # stage
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
CONTRACT_METRICS = API_METRICS | DRIFT_METRICS | PERFORMANCE_METRICS
