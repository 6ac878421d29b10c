"""Progressive delivery's evidence and decision: is the challenger at least as good as the
champion on the same live customers?

Modules, data flowing one way: ``stats/`` (DeLong, paired bootstrap, paired losses) and
``results`` (value types, exit codes) <- ``evidence`` (pure: the paired frame -> agreement,
differences, segments) and ``decision`` (pure: the rule) <- ``health`` (Prometheus, per role)
<- ``evaluate`` (the I/O: registry, paired log) <- ``report`` / ``push`` <- ``cli``
(``rollout.py``, the operator's commands, which also drive churn.challenger).
"""
