"""Benchmarks of the churn service against its peers: ``python -m bench.run`` (``make bench``).

Not part of ``make test``: nothing here asserts speed. ``tests/test_bench.py`` runs a tiny smoke
configuration so the code keeps working.
"""
