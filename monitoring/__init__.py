"""Production monitoring: data and prediction drift, live model quality, Prometheus metrics."""
