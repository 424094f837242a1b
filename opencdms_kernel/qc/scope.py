"""What a QC request covers: checked and resolved against the datastore, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Sequence

import sqlalchemy as sa

from opencdms_kernel.qc.frame import ElementInfo, StationInfo
from opencdms_kernel.qc.model import ALL_TESTS, QcParameterError, QcTest, UnknownQcReferenceError


@dataclass(frozen=True)
class Scope:
    """A resolved request: ``station_ids`` None means every station, ``start``/``end`` (UTC,
    inclusive) None mean unbounded.  ``elements`` are those in scope; ``all_elements`` and
    ``stations`` are the reference data (for partners and neighbours)."""

    tests: tuple[QcTest, ...]
    station_ids: frozenset[int] | None
    elements: tuple[ElementInfo, ...]
    start: datetime | None
    end: datetime | None
    all_elements: tuple[ElementInfo, ...]
    stations: dict[int, StationInfo]

    @property
    def element_ids(self) -> frozenset[int]:
        return frozenset(e.id for e in self.elements)

    @property
    def all_elements_in_scope(self) -> bool:
        return len(self.elements) == len(self.all_elements)


def _moment(parameter: str, value: date | datetime | None, end: bool) -> datetime | None:
    """A date or datetime as an aware UTC datetime; a date means the whole UTC day (so an end
    date is included), a naive datetime is taken as UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        moment = datetime.combine(value, time(0), tzinfo=timezone.utc)
        return moment + timedelta(days=1) - timedelta(microseconds=1) if end else moment
    raise QcParameterError(parameter, f"{value!r} is not a date or a datetime")


def _names(parameter: str, values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    names = [str(v).strip() for v in values]
    if not names:
        raise QcParameterError(parameter, "is empty; leave it out to check all")
    if any(not name for name in names):
        raise QcParameterError(parameter, "contains an empty name")
    return names


def parse_tests(tests: Sequence[QcTest | str] | None) -> tuple[QcTest, ...]:
    """The tests requested, in the canonical order; None: all."""
    if tests is None:
        return ALL_TESTS
    if isinstance(tests, str):
        tests = [tests]
    chosen = set()
    for test in tests:
        try:
            chosen.add(QcTest(str(test).strip().lower()))
        except ValueError:
            raise QcParameterError(
                "tests", f"unknown test {test!r}; known: {', '.join(t.value for t in ALL_TESTS)}"
            ) from None
    if not chosen:
        raise QcParameterError("tests", "is empty; leave it out to run all tests")
    return tuple(test for test in ALL_TESTS if test in chosen)


def resolve_scope(
    connection: sa.Connection,
    *,
    stations: Sequence[str] | None,
    elements: Sequence[str] | None,
    start: date | datetime | None,
    end: date | datetime | None,
    tests: Sequence[QcTest | str] | None,
) -> Scope:
    """Check a request against the datastore: unknown WIGOS ids or element codes, a start
    after the end, unknown tests each raise an error naming the parameter."""
    chosen_tests = parse_tests(tests)
    station_names = _names("stations", stations)
    element_names = _names("elements", elements)
    first, last = _moment("start", start, end=False), _moment("end", end, end=True)
    if first is not None and last is not None and first > last:
        raise QcParameterError("start", f"{first.isoformat()} is after end ({last.isoformat()})")
    station_rows = connection.execute(
        sa.text("SELECT id, wigos_id, latitude, longitude FROM station ORDER BY id")
    ).all()
    all_stations = {row.id: StationInfo(row.id, row.wigos_id, row.latitude, row.longitude) for row in station_rows}
    all_elements = tuple(
        ElementInfo(row.id, row.code, row.valid_min, row.valid_max)
        for row in connection.execute(sa.text("SELECT id, code, valid_min, valid_max FROM element ORDER BY id"))
    )
    station_ids = None
    if station_names is not None:
        by_wigos = {s.wigos_id: s.id for s in all_stations.values()}
        unknown = tuple(sorted({name for name in station_names if name not in by_wigos}))
        if unknown:
            raise UnknownQcReferenceError("stations", "station", unknown)
        station_ids = frozenset(by_wigos[name] for name in station_names)
    chosen_elements = all_elements
    if element_names is not None:
        by_code = {e.code.upper(): e for e in all_elements}
        unknown = tuple(sorted({name for name in element_names if name.upper() not in by_code}))
        if unknown:
            raise UnknownQcReferenceError("elements", "element", unknown)
        wanted = {by_code[name.upper()].id for name in element_names}
        chosen_elements = tuple(e for e in all_elements if e.id in wanted)
    return Scope(
        tests=chosen_tests,
        station_ids=station_ids,
        elements=chosen_elements,
        start=first,
        end=last,
        all_elements=all_elements,
        stations=all_stations,
    )
