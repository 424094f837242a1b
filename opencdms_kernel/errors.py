"""Errors that reach people: each names what is at fault (file, line, column, parameter)."""

from __future__ import annotations


class OpenCDMSError(Exception):
    """Base of the errors the system reports to its users; ``str()`` is a safe user message."""


class MappingError(OpenCDMSError):
    """An ingest mapping file is invalid; names the mapping file and the field."""

    def __init__(self, mapping_file: str, field: str, reason: str) -> None:
        self.mapping_file = mapping_file
        self.field = field
        self.reason = reason
        super().__init__(f"{mapping_file}: field '{field}': {reason}")


class IngestFileError(OpenCDMSError):
    """A whole file cannot be ingested (not CSV, empty, wrong encoding, missing column…)."""

    def __init__(self, file: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.reason = reason
        self.line = line
        where = f"{file}, line {line}" if line is not None else file
        super().__init__(f"{where}: {reason}")


class UnknownReferenceError(OpenCDMSError):
    """A station, element or source named by the user does not exist."""
