"""The drift job, one module per concern; data flows one way through them:

``results`` (immutable result types, exit codes) <- ``stats`` (one test per module on a shared
base) <- ``detection`` (tests -> correction -> reports built once) <- ``sources`` (reference
and current data, read through ``churn.data`` and the prediction log) <- ``cli``.
``report`` (terminal, JSON, HTML) and ``push`` (Pushgateway) read only ``results``.

This package imports nothing itself, so importing ``monitoring.drift.results`` (as the
renderer does) loads no statistics; ``monitoring.drift_detector`` re-exports the public API.
"""
