"""Errors that reach people: each names what is at fault (file, line, column, parameter).

One error model for every door into the system, after pygeoapi's: an error carries a safe
message (``str()``), the HTTP status and OGC API exception code the API will answer with, and
the exit code the command line ends with, so that the CLI maps errors in one place
(``cli.run``) and the API will map them the same way.  Subclasses set the class attributes.
Anything that is not an ``OpenCDMSError`` is unexpected: it is logged with its traceback and
reported without internals.
"""

from __future__ import annotations

from typing import ClassVar

# OGC API exception codes (OGC API - Common / Processes, as pygeoapi answers them).
INVALID_PARAMETER_VALUE = "InvalidParameterValue"
NOT_FOUND = "NotFound"
NO_APPLICABLE_CODE = "NoApplicableCode"


class OpenCDMSError(Exception):
    """Base of the errors the system reports to its users; ``str()`` is a safe user message."""

    http_status: ClassVar[int] = 400
    ogc_code: ClassVar[str] = INVALID_PARAMETER_VALUE
    exit_code: ClassVar[int] = 2  # the request was refused before anything was done


class NotFoundError(OpenCDMSError):
    """Something the user named does not exist (a station, a job, a ledger entry…)."""

    http_status = 404
    ogc_code = NOT_FOUND


class ConflictError(OpenCDMSError):
    """The request is valid, but the state of the data does not allow it now."""

    http_status = 409
    ogc_code = NO_APPLICABLE_CODE
    exit_code = 1


class ServiceError(OpenCDMSError):
    """A part of the system (datastore, bucket) cannot be reached or used."""

    http_status = 503
    ogc_code = NO_APPLICABLE_CODE
    exit_code = 1


class MappingError(OpenCDMSError):
    """An ingest mapping file is invalid; names the mapping file and the field."""

    def __init__(self, mapping_file: str, field: str, reason: str) -> None:
        self.mapping_file = mapping_file
        self.field = field
        self.reason = reason
        super().__init__(f"{mapping_file}: field '{field}': {reason}")


class IngestFileError(OpenCDMSError):
    """A whole file cannot be ingested (not CSV, empty, wrong encoding, missing column…)."""

    exit_code = 1

    def __init__(self, file: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.reason = reason
        self.line = line
        where = f"{file}, line {line}" if line is not None else file
        super().__init__(f"{where}: {reason}")


class UnknownReferenceError(NotFoundError):
    """A station, element or source named by the user does not exist."""


class ParameterError(OpenCDMSError, ValueError):
    """A parameter a person gave is invalid; ``parameter`` names it, ``reason`` says why.

    Also a ``ValueError``, so that a pydantic validator raising it reports a validation error
    (with this message) rather than an unexpected exception.
    """

    def __init__(self, parameter: str, reason: str) -> None:
        self.parameter = parameter
        self.reason = reason
        super().__init__(f"parameter '{parameter}': {reason}")
