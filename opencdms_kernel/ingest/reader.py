"""Reading a CSV file into one long table of text values, with the file's line numbers.

Nothing is interpreted here beyond the CSV structure: values stay text so that validation can
name the line and column of every value it refuses.  Whole-file problems (not text, empty,
wrong encoding, a missing or unmapped column) raise :class:`IngestFileError`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from opencdms_kernel.errors import IngestFileError
from opencdms_kernel.ingest.mapping import Layout, Mapping, Unmapped

# Columns of the normalised table handed to validation.
NORMALISED = pa.schema(
    [
        ("line", pa.int64()),
        ("station", pa.string()),
        ("element", pa.string()),
        ("time", pa.string()),
        ("value", pa.string()),
        ("flag", pa.string()),
        # Constant over a file or a column of it: dictionary-encoded, so they cost nothing.
        ("station_column", pa.dictionary(pa.int8(), pa.string())),
        ("value_column", pa.dictionary(pa.int8(), pa.string())),
        ("units", pa.dictionary(pa.int8(), pa.string())),
    ]
)


@dataclass(frozen=True)
class MalformedRow:
    """A line the CSV parser could not split into the header's columns."""

    line: int
    reason: str


@dataclass(frozen=True)
class ParsedFile:
    """A file read into the long form, plus the lines that were not even valid CSV rows."""

    rows: pa.Table
    malformed: tuple[MalformedRow, ...] = field(default=())
    row_count: int = 0


def _check_text(file: str, data: bytes, encoding: str) -> None:
    if not data[:65536].strip() and not data.strip():
        raise IngestFileError(file, "the file is empty; expected a CSV file with a header row")
    if b"\x00" in data[:65536] and not encoding.lower().startswith("utf-16"):
        raise IngestFileError(file, "not a CSV file: it contains binary data (NUL bytes)")


def _encoding_error(file: str, data: bytes, encoding: str) -> IngestFileError:
    """Locate the first byte that does not decode, for a message naming its line."""
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return IngestFileError(
            file,
            f"not valid {encoding} text (byte 0x{data[exc.start]:02x}); "
            "save the file as UTF-8 or name its encoding in the mapping",
            line=line,
        )
    return IngestFileError(file, f"cannot be read as {encoding} CSV")


def _header(file: str, data: bytes, mapping: Mapping) -> list[str]:
    """Column names from the first line, so that every column can be read as text."""
    end = data.find(b"\n")
    first_line = (data if end < 0 else data[:end]).rstrip(b"\r")
    utf8 = mapping.encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    try:
        text = first_line.decode("utf-8-sig" if utf8 else mapping.encoding)
    except UnicodeDecodeError as exc:
        raise _encoding_error(file, data, mapping.encoding) from exc
    names = next(csv.reader([text], delimiter=mapping.delimiter), [])
    if not any(name.strip() for name in names):
        raise IngestFileError(file, "the first line is empty; expected a CSV header row", line=1)
    return names


def _read_table(
    file: str, data: bytes, mapping: Mapping
) -> tuple[pa.Table, list[int], list[MalformedRow]]:
    """The rows as text, the lines the parser skipped, and the malformed ones among those."""
    skipped: list[int] = []
    malformed: list[MalformedRow] = []
    names = _header(file, data, mapping)

    def skip_row(row: pacsv.InvalidRow) -> str:
        number = row.number if row.number is not None else -1
        skipped.append(number)
        if row.text.strip():  # a blank line is no error
            malformed.append(
                MalformedRow(
                    line=number,
                    reason=f"expected {row.expected_columns} columns, found {row.actual_columns}",
                )
            )
        return "skip"

    def read(use_threads: bool) -> pa.Table:
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(encoding=mapping.encoding, use_threads=use_threads),
            parse_options=pacsv.ParseOptions(
                delimiter=mapping.delimiter,
                ignore_empty_lines=False,
                invalid_row_handler=skip_row,
            ),
            # Everything as text: validation decides what is a number or a time.
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    try:
        table = read(use_threads=True)
        if skipped:
            # Only a single-threaded parse knows the line numbers of the rows it skips.
            skipped.clear()
            malformed.clear()
            table = read(use_threads=False)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "utf8" in message.lower() or "utf-8" in message.lower():
            raise _encoding_error(file, data, mapping.encoding) from exc
        if "Empty CSV file" in message:
            raise IngestFileError(file, "the file is empty; expected a CSV header row") from exc
        raise IngestFileError(file, f"not a readable CSV file: {message}") from exc
    except UnicodeDecodeError as exc:
        raise _encoding_error(file, data, mapping.encoding) from exc
    return table, skipped, malformed


def _line_numbers(row_count: int, skipped: list[int]) -> np.ndarray:
    """Line of each parsed row: rows follow the header, less the lines the parser skipped."""
    lines = np.arange(2, row_count + len(skipped) + 2, dtype=np.int64)
    if skipped:
        lines = lines[~np.isin(lines, np.asarray(skipped, dtype=np.int64))][:row_count]
    return lines


def _check_columns(file: str, columns: list[str], mapping: Mapping) -> None:
    present = set(columns)
    missing = [name for name in mapping.required_columns() if name not in present]
    if mapping.layout is Layout.WIDE:
        missing += [name for name in mapping.columns if name not in present]
    if missing:
        raise IngestFileError(
            file,
            f"missing required column(s) {', '.join(repr(n) for n in missing)} "
            f"(the header has {', '.join(repr(c) for c in columns)}; mapping {mapping.name})",
            line=1,
        )
    unmapped = [name for name in columns if name not in mapping.known_columns()]
    if unmapped and mapping.unmapped_columns is Unmapped.REFUSE:
        raise IngestFileError(
            file,
            f"column(s) {', '.join(repr(n) for n in unmapped)} are not in mapping "
            f"{mapping.name}, which refuses unmapped columns",
            line=1,
        )


def _constant(value: str | None, length: int) -> pa.Array:
    """``value`` repeated ``length`` times, as a text column."""
    return pa.repeat(pa.scalar(value, pa.string()), length)


def _constant_label(value: str | None, length: int) -> pa.DictionaryArray:
    """``value`` repeated ``length`` times, dictionary-encoded (no copy of the text per row)."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(length, dtype=np.int8)), pa.array([value], pa.string())
    )


def _station_column(file: str, table: pa.Table, mapping: Mapping) -> tuple[pa.ChunkedArray | pa.Array, str]:
    spec = mapping.station
    if spec.column:
        return table.column(spec.column), spec.column
    if spec.fixed:
        return _constant(spec.fixed, table.num_rows), "(mapping: station.fixed)"
    name = file.rsplit("/", 1)[-1]
    station = spec.station_from_filename(name)
    if station is None:
        raise IngestFileError(
            file,
            f"the file name {name!r} does not match the mapping's station.filename_pattern "
            f"{spec.filename_pattern!r}",
        )
    return _constant(station, table.num_rows), "(file name)"


def read_csv(file: str, data: bytes, mapping: Mapping) -> ParsedFile:
    """Parse ``data`` (the bytes of ``file``) under ``mapping`` into the normalised long table."""
    _check_text(file, data, mapping.encoding)
    table, skipped, malformed = _read_table(file, data, mapping)
    _check_columns(file, table.column_names, mapping)
    lines = pa.array(_line_numbers(table.num_rows, skipped))
    stations, station_column = _station_column(file, table, mapping)
    n = table.num_rows
    time = table.column(mapping.time.column)
    if mapping.layout is Layout.LONG:
        flag = table.column("flag") if "flag" in table.column_names else _constant(None, n)
        long = pa.table(
            [lines, stations, table.column("element"), time, table.column("value"), flag,
             _constant_label(station_column, n), _constant_label("value", n),
             _constant_label(None, n)],
            schema=NORMALISED,
        )
        return ParsedFile(rows=long, malformed=tuple(malformed), row_count=n)
    parts = []
    for column, spec in mapping.columns.items():
        values = table.column(column)
        present = pc.not_equal(pc.utf8_trim_whitespace(values), "")
        # In the wide layout an empty cell means "not observed", not a missing observation.
        part = pa.table(
            [lines, stations, _constant(spec.element, n), time, values, _constant(None, n),
             _constant_label(station_column, n), _constant_label(column, n),
             _constant_label(spec.units, n)],
            schema=NORMALISED,
        ).filter(present)
        parts.append(part)
    return ParsedFile(rows=pa.concat_tables(parts), malformed=tuple(malformed), row_count=n)

