"""Ingest of CSV files (long and wide layouts) into the observation store.

See :mod:`opencdms_kernel.ingest.pipeline` for the flow and :mod:`.mapping` for mapping files.
"""

from opencdms_kernel.ingest.mapping import DEFAULT_LONG_MAPPING, Mapping, load_mapping
from opencdms_kernel.ingest.pipeline import (
    IngestRequest,
    IngestResult,
    IngestStatus,
    ingest,
    ingest_many,
    mark_interrupted_loads,
)
from opencdms_kernel.ingest.revert import RevertError, RevertResult, revert_load

__all__ = [
    "DEFAULT_LONG_MAPPING",
    "IngestRequest",
    "IngestResult",
    "IngestStatus",
    "Mapping",
    "RevertError",
    "RevertResult",
    "ingest",
    "ingest_many",
    "load_mapping",
    "mark_interrupted_loads",
    "revert_load",
]
