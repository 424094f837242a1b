"""Values of quality control: tests, statuses, flags, decisions, keys, results and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Mapping

from opencdms_kernel.errors import NotFoundError, ParameterError, UnknownReferenceError
# A value's status and final flag are the system's words, not only QC's: defined once in the
# vocabulary, re-exported here (``X as X``) where QC code has always found them.
from opencdms_kernel.vocabulary import FinalFlag as FinalFlag
from opencdms_kernel.vocabulary import QcStatus as QcStatus


class QcTest(StrEnum):
    """The automatic checks; each writes its own entry of ``result_quality`` under its name."""

    RANGE = "range"
    STEP = "step"
    PERSISTENCE = "persistence"
    CONSISTENCY = "consistency"
    SPATIAL = "spatial"


ALL_TESTS: tuple[QcTest, ...] = tuple(QcTest)
# Tests whose rules live in qc_threshold (consistency's live in qc_relation).
THRESHOLD_TESTS: tuple[QcTest, ...] = (QcTest.RANGE, QcTest.STEP, QcTest.PERSISTENCE, QcTest.SPATIAL)


class Severity(StrEnum):
    """What a rule's finding means: doubtful, or wrong.  Also the ``result`` of a test's entry
    in ``result_quality``, and so the :class:`QcStatus` it gives the value (:attr:`status`)."""

    SUSPECT = "suspect"
    FAILED = "failed"

    @property
    def status(self) -> QcStatus:
        """The value's status when this is its worst automatic finding."""
        return QcStatus(self.value)


class Decision(StrEnum):
    """A person's decision on one value (``manual`` entry of ``result_quality``)."""

    ACCEPT = "accept"
    REJECT = "reject"
    CORRECT = "correct"


# --------------------------------------------------------------------------- errors


class QcParameterError(ParameterError):
    """A QC request has a bad parameter: the kernel's :class:`ParameterError` (message
    ``parameter 'x': reason``; refused with HTTP 400 and exit code 2), raised by QC so that a
    caller may tell QC's refusals apart."""


class UnknownQcReferenceError(UnknownReferenceError):
    """Stations or elements named in a QC request do not exist; names the parameter."""

    def __init__(self, parameter: str, kind: str, values: tuple[str, ...]) -> None:
        self.parameter = parameter
        self.values = values
        listed = ", ".join(repr(value) for value in values)
        super().__init__(f"{parameter}: unknown {kind}{'s' if len(values) > 1 else ''} {listed}")


class ObservationNotFoundError(NotFoundError):
    """No current observation has the key given."""


# --------------------------------------------------------------------------- keys and results


@dataclass(frozen=True)
class ObservationKey:
    """The natural key of one observation, in the terms people use.

    ``source``: the source's name; None when only one source has a value for the rest of the key.
    ``phenomenon_time`` must carry a time zone (the datastore keeps UTC).
    """

    station: str  # WIGOS id
    element: str  # element code
    phenomenon_time: datetime
    duration_seconds: int = 86400
    level: float = 0.0
    source: str | None = None


@dataclass(frozen=True)
class TestCounts:
    """What one test did in one run, over the observations in scope.

    ``tested``: values a rule of the test applied to; ``skipped``: values it could not check
    (e.g. too few neighbours), with the reasons in :attr:`QcRunResult.skipped`;
    ``thresholds``: for tests governed by thresholds, the values in scope per level of the
    threshold that judged them (``station``, ``network``, ``global``).
    """

    tested: int = 0
    suspect: int = 0
    failed: int = 0
    skipped: int = 0
    thresholds: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedCheck:
    """A test that could not check some values of one series, and why."""

    test: QcTest
    station: str
    element: str
    values: int
    reason: str


@dataclass(frozen=True)
class QcRunResult:
    """What one QC run checked, found and wrote.

    ``status_counts``: the automatic status of the values checked (passed, suspect, failed);
    ``written``: observations whose entries or status changed; ``stale``: results not written
    because the observation changed after the snapshot that was checked (the next run checks it).
    """

    run_id: int
    tests: tuple[QcTest, ...]
    checked: int
    counts: Mapping[QcTest, TestCounts]
    status_counts: Mapping[QcStatus, int]
    written: int
    stale: int
    skipped: tuple[SkippedCheck, ...]
    data_as_of: datetime
    seconds: float
    stage_seconds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def summary_rows(self) -> list[tuple[str, int, int, int, int]]:
        """(test, tested, suspect, failed, skipped) per test, for tables in the CLI and apps."""
        return [
            (test.value, c.tested, c.suspect, c.failed, c.skipped)
            for test, c in ((test, self.counts[test]) for test in self.tests)
        ]

    def skipped_lines(self) -> list[str]:
        """One line per series a test skipped, with the reason."""
        return [f"{s.test.value}: {s.station} {s.element}: {s.values} values skipped: {s.reason}"
                for s in self.skipped]
