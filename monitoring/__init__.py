"""Production monitoring, one package per job:

* ``drift`` — data and prediction drift of a window against the model's training profile
  (``python -m monitoring.drift_detector``, its historical entry point, or ``-m monitoring.drift``);
* ``quality`` — live AUC, precision and recall on the predictions that received feedback;
* ``closed_loop`` — drift + labels -> retrain, gate, promote, with a memory of refusals.

Imports flow one way (closed_loop -> drift -> quality -> churn), never back; result types
sit at the bottom of each package so rendering and pushing import nothing else
(tests/test_monitoring_imports.py checks the graph). The Prometheus, alert and Grafana
configuration beside these packages is plain YAML/JSON.
"""
