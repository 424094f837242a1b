"""Reading a CSV file, in chunks, into long tables of text values with the file's line numbers.

Nothing is interpreted here beyond the CSV structure: values stay text so that validation can
name the line and column of every value it refuses.  The file is streamed: pyarrow parses it
block by block and :meth:`CsvReading.chunks` yields about ``chunk_rows`` rows at a time, so the
memory needed is bounded by the chunk size, not the file size.

Whole-file problems raise :class:`IngestFileError` naming the file and, where there is one,
the line: empty, binary (a NUL byte, wherever it is), UTF-16 without the mapping saying so,
bytes that are not text in the declared encoding, a line too long to be a CSV row, a header
with a repeated or missing column, columns the mapping refuses.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

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
        ("source", pa.string()),
        # Constant over a file or a column of it: dictionary-encoded, so they cost nothing.
        ("station_column", pa.dictionary(pa.int8(), pa.string())),
        ("value_column", pa.dictionary(pa.int8(), pa.string())),
        ("units", pa.dictionary(pa.int8(), pa.string())),
    ]
)

# pyarrow parses blocks of this size; a line must fit in one block.
BLOCK_BYTES = 4 << 20
# Rows handed on at a time: large enough that per-chunk costs vanish, small enough to bound memory.
CHUNK_ROWS = 500_000
# The first chunk is this much smaller: writing starts after it, so it is the pipeline's fill time.
FIRST_CHUNK_DIVISOR = 2

Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class MalformedRow:
    """A line the CSV parser could not split into the header's columns."""

    line: int
    reason: str


@dataclass(frozen=True)
class ParsedChunk:
    """Some consecutive rows of a file in the long form, and the malformed lines among them."""

    rows: pa.Table
    malformed: tuple[MalformedRow, ...] = field(default=())
    row_count: int = 0


def _utf16_mark(head: bytes) -> str | None:
    """How ``head`` shows that a file is UTF-16: its byte-order mark, or NUL bytes every other byte."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return f"byte-order mark {head[0]:02X} {head[1]:02X}"
    sample = head[:200]
    if len(sample) >= 8 and (sample[1::2].count(0) > 0.9 * len(sample[1::2])
                             or sample[0::2].count(0) > 0.9 * len(sample[0::2])):
        return "a NUL byte between the characters"
    return None


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


class _CheckedStream(io.RawIOBase):
    """The file's bytes as pyarrow reads them, refusing a NUL byte with the line it is on.

    A NUL byte anywhere makes the file binary data, not text; finding it while the parser
    reads costs one ``bytes.find`` and one ``bytes.count`` per block.
    """

    def __init__(self, file: str, raw: BinaryIO, check_nul: bool) -> None:
        super().__init__()
        self._file = file
        self._raw = raw
        self._check_nul = check_nul
        self._lines_before = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the file, checked."""
        data = self._raw.read(size)
        if self._check_nul and (at := data.find(b"\x00")) >= 0:
            line = self._lines_before + data.count(b"\n", 0, at) + 1
            raise IngestFileError(
                self._file, "not a text file: it contains binary data (a NUL byte)", line=line
            )
        self._lines_before += data.count(b"\n")
        return data


class _WhitespaceStream(_CheckedStream):
    """A column-aligned file as tab-separated text: every run of spaces and tabs becomes one tab,
    and those at the start and end of a line go.  Line breaks are kept, so line numbers hold."""

    _RUNS = re.compile(rb"[ \t]+")
    _EDGES = re.compile(rb"^\t|\t(?=\r?$)", re.MULTILINE)

    def __init__(self, file: str, raw: BinaryIO, check_nul: bool) -> None:
        super().__init__(file, raw, check_nul)
        self._partial_line = b""  # read, but its line not yet complete
        self._ready = b""  # rewritten, not yet handed out

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._ready:
            block = self._read(BLOCK_BYTES)
            if not block:
                self._ready, self._partial_line = self._rewrite(self._partial_line), b""
                break
            text = self._partial_line + block
            end = text.rfind(b"\n") + 1
            self._ready, self._partial_line = self._rewrite(text[:end]), text[end:]
        size = min(len(buffer), len(self._ready))
        buffer[:size] = self._ready[:size]
        self._ready = self._ready[size:]
        return size

    def _rewrite(self, lines: bytes) -> bytes:
        return self._EDGES.sub(b"", self._RUNS.sub(b"\t", lines))

    def close(self) -> None:
        self._raw.close()
        super().close()


def _lines_to_header(file: str, open_file: Opener, mapping: Mapping) -> list[str]:
    """The lines up to and including the header line (decoded); whole-file problems seen in the
    first block raise."""
    with open_file() as raw:
        head = raw.read(BLOCK_BYTES)
    if not head.strip():
        raise IngestFileError(file, "the file is empty; expected a CSV file with a header row")
    if not mapping.encoding.lower().replace("_", "-").startswith("utf-16"):
        mark = _utf16_mark(head)
        if mark is not None:
            raise IngestFileError(
                file,
                f"the file is UTF-16 text ({mark}); declare it in the mapping (encoding: utf-16) "
                "or save the file as UTF-8",
            )
        if (at := head.find(b"\x00")) >= 0:
            raise IngestFileError(
                file, "not a text file: it contains binary data (a NUL byte)", line=head.count(b"\n", 0, at) + 1
            )
        lines = head.split(b"\n", mapping.header_line)[: mapping.header_line]
        try:
            text = b"\n".join(lines).decode("utf-8-sig" if _is_utf8(mapping.encoding) else mapping.encoding)
        except UnicodeDecodeError as exc:
            raise _encoding_error(file, open_file, mapping.encoding) from exc
    else:
        text = head.decode(mapping.encoding, errors="replace").lstrip("\ufeff")
    lines = [line.rstrip("\r") for line in text.split("\n")[: mapping.header_line]]
    if len(lines) < mapping.header_line:
        raise IngestFileError(file, f"the file has {len(lines)} line(s); the mapping expects the header on "
                              f"line {mapping.header_line}")
    return lines


def _fields(line: str, mapping: Mapping) -> list[str]:
    if mapping.whitespace_delimited:
        return line.split()
    return next(csv.reader([line], delimiter=mapping.delimiter), [])


def _header(file: str, lines: list[str], mapping: Mapping) -> list[str]:
    """The column names on the mapping's header line."""
    names = _fields(lines[-1], mapping)
    if not any(name.strip() for name in names):
        where = "the first line" if mapping.header_line == 1 else f"line {mapping.header_line}"
        raise IngestFileError(file, f"{where} is empty; expected a CSV header row", line=mapping.header_line)
    return names


def _encoding_error(file: str, open_file: Opener, encoding: str) -> IngestFileError:
    """Locate the first byte that does not decode, reading the file again in blocks."""
    decoder = codecs.getincrementaldecoder(encoding)()
    lines_before = 0
    with open_file() as raw:
        while block := raw.read(BLOCK_BYTES):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return IngestFileError(
                    file,
                    f"not valid {encoding} text (byte 0x{block[exc.start]:02x}); "
                    "save the file as UTF-8 or name its encoding in the mapping",
                    line=lines_before + block.count(b"\n", 0, exc.start) + 1,
                )
            lines_before += block.count(b"\n")
    return IngestFileError(file, f"cannot be read as {encoding} CSV")


def _long_line_error(file: str, open_file: Opener) -> IngestFileError:
    """Name the first line longer than a parser block (a runaway quote or a huge field)."""
    line, length = 1, 0
    with open_file() as raw:
        while block := raw.read(BLOCK_BYTES):
            start = 0
            while (end := block.find(b"\n", start)) >= 0:
                if length + end - start > BLOCK_BYTES:
                    break
                line, length, start = line + 1, 0, end + 1
            else:
                length += len(block) - start
                if length <= BLOCK_BYTES:
                    continue
            break
    return IngestFileError(
        file,
        f"line {line} is longer than {BLOCK_BYTES // (1 << 20)} MB: not a CSV row (a field that "
        "huge, or a quote that is never closed)",
        line=line,
    )


def _check_columns(file: str, columns: list[str], mapping: Mapping) -> list[str]:
    """Refuse a header the mapping cannot read; return the columns it does not name."""
    seen: set[str] = set()
    repeated = [name for name in columns if name in seen or seen.add(name)]  # type: ignore[func-returns-value]
    if repeated:
        raise IngestFileError(
            file, f"the header names column(s) {', '.join(repr(n) for n in dict.fromkeys(repeated))} "
            "more than once; each column needs its own name", line=1,
        )
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
    return unmapped


def _constant(value: str | None, length: int) -> pa.Array:
    """``value`` repeated ``length`` times, as a text column."""
    return pa.repeat(pa.scalar(value, pa.string()), length)


def _constant_label(value: str | None, length: int) -> pa.DictionaryArray:
    """``value`` repeated ``length`` times, dictionary-encoded (no copy of the text per row)."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(length, dtype=np.int8)), pa.array([value], pa.string())
    )


def _file_station(file: str, mapping: Mapping, lines: list[str]) -> tuple[str | None, str]:
    """The station a whole file is about (fixed, from a line before the header or from its name),
    and how it was found."""
    spec = mapping.station
    if spec.column:
        return None, spec.column
    if spec.fixed:
        return spec.fixed, "(mapping: station.fixed)"
    if spec.header_line is not None:
        fields = _fields(lines[spec.header_line - 1], mapping)
        if spec.header_field >= len(fields) or not fields[spec.header_field].strip():
            raise IngestFileError(
                file, f"line {spec.header_line} has no field {spec.header_field + 1} to take the station from "
                f"(mapping: station.header_line/header_field)", line=spec.header_line)
        return spec.prefix + fields[spec.header_field].strip(), f"(line {spec.header_line}, field {spec.header_field + 1})"
    name = file.rsplit("/", 1)[-1]
    station = spec.station_from_filename(name)
    if station is not None:
        station = spec.prefix + station
    if station is None:
        raise IngestFileError(
            file,
            f"the file name {name!r} does not match the mapping's station.filename_pattern "
            f"{spec.filename_pattern!r}",
        )
    return station, "(file name)"


@dataclass
class _LineCounter:
    """Line numbers of parsed rows: rows follow the header, less the lines the parser skipped."""

    next_line: int = 2
    skipped: list[int] = field(default_factory=list)

    def lines(self, row_count: int) -> np.ndarray:
        skipped = [line for line in self.skipped if line >= self.next_line]
        lines = np.arange(self.next_line, self.next_line + row_count + len(skipped), dtype=np.int64)
        if skipped:
            lines = lines[~np.isin(lines, np.asarray(skipped, dtype=np.int64))][:row_count]
        self.skipped = [line for line in self.skipped if line > (lines[-1] if row_count else self.next_line)]
        if row_count:
            self.next_line = int(lines[-1]) + 1
        return lines


class CsvReading:
    """One file being read under one mapping: its header checked, its rows given in chunks."""

    def __init__(self, file: str, open_file: Opener, mapping: Mapping, chunk_rows: int = CHUNK_ROWS) -> None:
        self.file = file
        self.mapping = mapping
        self._open = open_file
        self._chunk_rows = chunk_rows
        lines = _lines_to_header(file, open_file, mapping)
        self.columns = _header(file, lines, mapping)
        self.unmapped_columns = tuple(_check_columns(file, self.columns, mapping))
        self._station, self._station_column = _file_station(file, mapping, lines)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the reader left out without refusing the file."""
        if not self.unmapped_columns:
            return ()
        return (
            f"column(s) {', '.join(repr(n) for n in self.unmapped_columns)} are not in mapping "
            f"{self.mapping.name} and were not read (a misspelt name? set unmapped_columns: refuse "
            "to refuse such files)",
        )

    def chunks(self) -> Iterator[ParsedChunk]:
        """The file's rows in the long form, about ``chunk_rows`` file rows at a time."""
        counter = _LineCounter(next_line=self.mapping.header_line + 1)
        malformed: list[MalformedRow] = []

        def skip_row(row: pacsv.InvalidRow) -> str:
            number = row.number if row.number is not None else -1
            counter.skipped.append(number)
            if row.text.strip():  # a blank line is no error
                malformed.append(MalformedRow(
                    line=number, reason=f"expected {row.expected_columns} columns, found {row.actual_columns}"))
            return "skip"

        mapping = self.mapping
        check_nul = not mapping.encoding.lower().replace("_", "-").startswith("utf-16")
        stream_type = _WhitespaceStream if mapping.whitespace_delimited else _CheckedStream
        stream = stream_type(self.file, self._open(), check_nul)
        try:
            reader = self._open_reader(stream, skip_row)
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            # A smaller first chunk: the load can start writing sooner.
            wanted = max(1, self._chunk_rows // FIRST_CHUNK_DIVISOR)
            for batch in self._batches(reader):
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= wanted:
                    yield self._chunk(pending, counter, malformed)
                    pending, pending_rows, wanted = [], 0, self._chunk_rows
            if pending or malformed:
                yield self._chunk(pending, counter, malformed)
        finally:
            stream.close()

    def _open_reader(
        self, stream: _CheckedStream, skip_row: Callable[[pacsv.InvalidRow], str]
    ) -> pacsv.CSVStreamingReader:
        """pyarrow's streaming reader over ``stream`` (it parses the first block at once)."""
        mapping = self.mapping
        try:
            return pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    encoding=mapping.encoding, use_threads=False, block_size=BLOCK_BYTES,
                    skip_rows=mapping.header_line - 1),
                parse_options=pacsv.ParseOptions(
                    delimiter=mapping.parser_delimiter, ignore_empty_lines=False, invalid_row_handler=skip_row),
                # Everything as text: validation decides what is a number or a time.
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.columns},
                    strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise self._parse_error(exc) from exc

    def _batches(self, reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
        """The parser's batches, with its errors turned into messages that name the line."""
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                raise self._parse_error(exc) from exc
            yield batch

    def _parse_error(self, exc: pa.ArrowInvalid | UnicodeDecodeError) -> IngestFileError:
        """What a parser error means for the person who sent the file, with the line."""
        message = str(exc)
        if isinstance(exc, UnicodeDecodeError) or "utf8" in message.lower() or "utf-8" in message.lower():
            return _encoding_error(self.file, self._open, self.mapping.encoding)
        if "straddling" in message or "block size" in message:
            return _long_line_error(self.file, self._open)
        return IngestFileError(self.file, f"not a readable CSV file: {message}")

    def _chunk(self, batches: list[pa.RecordBatch], counter: _LineCounter,
               malformed: list[MalformedRow]) -> ParsedChunk:
        table = (pa.Table.from_batches(batches) if batches
                 else pa.table({name: pa.array([], pa.string()) for name in self.columns}))
        lines = pa.array(counter.lines(table.num_rows))
        chunk = ParsedChunk(rows=self._long(table, lines), malformed=tuple(malformed), row_count=table.num_rows)
        malformed.clear()
        return chunk

    def _long(self, table: pa.Table, lines: pa.Array) -> pa.Table:
        """``table`` (the file's columns as text) in the normalised long form."""
        mapping = self.mapping
        n = table.num_rows
        if self._station is not None:
            stations = _constant(self._station, n)
        elif mapping.station.prefix:
            stations = pc.binary_join_element_wise(
                mapping.station.prefix, pc.utf8_trim_whitespace(table.column(self._station_column)), "")
        else:
            stations = table.column(self._station_column)
        time = _time_text(table, mapping)
        if mapping.layout is Layout.LONG:
            flag = table.column("flag") if "flag" in table.column_names else _constant(None, n)
            source = table.column("source") if "source" in table.column_names else _constant(None, n)
            value, flag = _coded(table.column("value"), flag, mapping, (), ())
            return pa.table(
                [lines, stations, table.column("element"), time, value, flag, source,
                 _constant_label(self._station_column, n), _constant_label("value", n),
                 _constant_label(None, n)],
                schema=NORMALISED,
            ).filter(_not_blank(table))
        parts = []
        for column, spec in mapping.columns.items():
            values = table.column(column)
            # In the wide layout an empty cell means "not observed", not a missing observation.
            present = pc.not_equal(pc.utf8_trim_whitespace(values), "")
            flag = table.column(spec.flag_column) if spec.flag_column else _constant(None, n)
            source = table.column(spec.source_column) if spec.source_column else _constant(None, n)
            value, flag = _coded(values, flag, mapping, spec.missing_values, spec.trace_values)
            parts.append(pa.table(
                [lines, stations, _constant(spec.element, n), time, value, flag, source,
                 _constant_label(self._station_column, n), _constant_label(column, n),
                 _constant_label(spec.units, n)],
                schema=NORMALISED,
            ).filter(present))
        return pa.concat_tables(parts)


TRACE_FLAG = "trace"


def _time_text(table: pa.Table, mapping: Mapping) -> pa.ChunkedArray:
    """The time as one text: its column, or its columns joined by a space."""
    columns = [table.column(name) for name in mapping.time.source_columns]
    if len(columns) == 1:
        return columns[0]
    return pc.binary_join_element_wise(*columns, " ")


def _coded(values: pa.ChunkedArray, flags: pa.ChunkedArray | pa.Array, mapping: Mapping,
           missing: tuple[str, ...], trace: tuple[str, ...]) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Values with the mapping's codes applied: missing codes become empty (a missing value),
    trace codes become 0 with the flag ``trace``, a decimal comma becomes a point."""
    missing_codes = (*mapping.missing_values, *missing)
    trace_codes = (*mapping.trace_values, *trace)
    if missing_codes or trace_codes:
        trimmed = pc.utf8_trim_whitespace(values)
        if missing_codes:
            values = pc.if_else(pc.is_in(trimmed, value_set=pa.array(missing_codes, pa.string())), "", values)
        if trace_codes:
            is_trace = pc.is_in(trimmed, value_set=pa.array(trace_codes, pa.string()))
            values = pc.if_else(is_trace, "0", values)
            flags = pc.if_else(is_trace, TRACE_FLAG, flags)
    if mapping.decimal == ",":
        values = pc.replace_substring(values, ",", ".")
    return values, flags


def _not_blank(table: pa.Table) -> pa.Array:
    """Rows with at least one non-empty field (a blank line is a row of empty strings)."""
    mask = None
    for column in table.columns:
        filled = pc.greater(pc.binary_length(column), 0)
        mask = filled if mask is None else pc.or_(mask, filled)
    return mask if mask is not None else pa.array([], pa.bool_())
