"""Quality control: checks that flag values (never change or delete them), manual decisions.

One module per family of checks — :mod:`.range`, :mod:`.step`, :mod:`.persistence`,
:mod:`.consistency`, :mod:`.spatial` — over the values read from the Parquet archive
(:mod:`.frame`); rules in versioned tables (:mod:`.rules`, :mod:`.thresholds`); flags in
layers and their sparse write-back (:mod:`.flags`); a person's decisions (:mod:`.manual`);
the run itself (:mod:`.run`).  The design of flags, derived status and the sparse write-back
is in :mod:`.flags`; why the checks run on sorted numpy columns is in :mod:`.frame`.

Entry points: :func:`run_qc` (what ``opencdms qc`` calls), :func:`decide` (a person's
decision), :func:`derive_and_store_thresholds` (station/month range, step and persistence
thresholds from each station's own record), :func:`add_thresholds` and
:func:`add_relations` (rules, versioned).
"""

from opencdms_kernel.qc import tables  # noqa: F401  (registers the QC tables in the datastore metadata)
from opencdms_kernel.qc.flags import attach_quality_view
from opencdms_kernel.qc.manual import DecisionResult, SourceChange, decide, source_changes
from opencdms_kernel.qc.model import (
    ALL_TESTS,
    Decision,
    FinalFlag,
    ObservationKey,
    ObservationNotFoundError,
    QcParameterError,
    QcRunResult,
    QcStatus,
    QcTest,
    Severity,
    SkippedCheck,
    TestCounts,
    UnknownQcReferenceError,
)
from opencdms_kernel.qc.rules import Relation, Threshold, add_relations, add_thresholds, current_thresholds
from opencdms_kernel.qc.run import STAGES, run_qc
from opencdms_kernel.qc.thresholds import (
    DEFAULT_METHODS,
    DEFAULT_PERSISTENCE_METHODS,
    DEFAULT_STEP_METHODS,
    DerivationMethod,
    DerivedThresholds,
    PersistenceMethod,
    StepMethod,
    derive_and_store_range_thresholds,
    derive_and_store_thresholds,
    derive_persistence_thresholds,
    derive_range_thresholds,
    derive_step_thresholds,
)

__all__ = [
    "ALL_TESTS",
    "DEFAULT_METHODS",
    "DEFAULT_PERSISTENCE_METHODS",
    "DEFAULT_STEP_METHODS",
    "Decision",
    "DecisionResult",
    "DerivationMethod",
    "DerivedThresholds",
    "FinalFlag",
    "ObservationKey",
    "ObservationNotFoundError",
    "PersistenceMethod",
    "QcParameterError",
    "QcRunResult",
    "QcStatus",
    "QcTest",
    "Relation",
    "STAGES",
    "Severity",
    "SkippedCheck",
    "SourceChange",
    "StepMethod",
    "TestCounts",
    "Threshold",
    "UnknownQcReferenceError",
    "add_relations",
    "add_thresholds",
    "attach_quality_view",
    "current_thresholds",
    "decide",
    "derive_and_store_range_thresholds",
    "derive_and_store_thresholds",
    "derive_persistence_thresholds",
    "derive_range_thresholds",
    "derive_step_thresholds",
    "run_qc",
    "source_changes",
]
