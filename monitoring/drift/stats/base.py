"""What every drift test shares: its result type and the interface the detector calls.

A test compares a reference summary with a current one and returns an immutable
:class:`TestResult`; it also says which effect-size threshold applies to it and which notes
its result deserves. The detector (``monitoring.drift.detection``) treats every test alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from monitoring.drift.results import EffectThresholds

SummaryT = TypeVar("SummaryT")


@dataclass(frozen=True)
class TestResult:
    """A test statistic, its p-value, the effect size the threshold speaks of, and PSI."""

    __test__ = False  # not a pytest test class, despite the name

    statistic: float
    p_value: float
    effect_size: float
    psi: float


class DriftTest(ABC, Generic[SummaryT]):
    """One two-sample test of one feature kind (stateless; call :meth:`run`)."""

    __test__ = False

    kind: ClassVar[str]
    test_used: ClassVar[str]
    effect_size_name: ClassVar[str]

    @abstractmethod
    def threshold(self, limits: EffectThresholds) -> float:
        """The minimum effect size for this test to count as drift."""

    @abstractmethod
    def run(self, reference: SummaryT, current: SummaryT) -> TestResult:
        """Compare two non-empty summaries."""

    def notes(self, result: TestResult) -> tuple[str, ...]:
        """Remarks a reader of the report needs about this result (none by default)."""
        return ()
