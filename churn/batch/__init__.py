"""Nightly scoring of the whole customer base on Apache Spark (``score_batch.py``).

The pieces, each usable and testable on its own:

* :mod:`churn.batch.validation` - per-row checks against the bundle's feature schema (pandas,
  no Spark): a bad row gets a status and a reason instead of failing the job;
* :mod:`churn.batch.scoring` - what runs on the executors: the broadcast bundle bytes are
  verified again with :func:`churn.bundle.load_bundle`, the backend is chosen with
  :func:`churn.inference.choose_predictor` (the API's choice) and kept per Python worker;
* :mod:`churn.batch.summary` - what each scoring task learns while it scores (counts per
  status, tier and reason; exact category counts, moments and a bounded uniform sample of
  the valid rows), merged on the driver: the job reads the table once and caches nothing;
* :mod:`churn.batch.drift` - those statistics as a profile, handed to the monitoring drift
  detector;
* :mod:`churn.batch.output` - the date partition replaced by renames, never half-written;
* :mod:`churn.batch.job` - the job that ties them together.
"""
