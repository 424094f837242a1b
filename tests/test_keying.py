"""Data entry in the kernel (opencdms_kernel/keying, migration 0009): forms, checks as typed,
the keying store with its version check, blind double keying, differences and their resolution,
and the commit as audited observations — also through hub users' own database logins."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from opencdms_kernel.db import roles
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.keying import (
    CellInput,
    CellKind,
    FormError,
    KeyingAccessError,
    KeyingCheckError,
    KeyingConflictError,
    Severity,
    SheetNotReadyError,
    SheetRules,
    SheetStatus,
    check_sheet,
    commit_sheet,
    list_differences,
    load_form,
    open_sheet,
    read_cell,
    read_keying,
    resolve_difference,
    save_keying,
    sheet_audit,
    shipped_form,
    shipped_forms,
)
from opencdms_kernel.keying.checks import ElementLimits, RelationCheck, load_sheet_rules
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import Threshold, add_thresholds
from opencdms_kernel.vocabulary import HubRole

STATION = "0-20000-0-63741"
OTHER_STATION = "0-20000-0-63742"
INSUFFICIENT_PRIVILEGE = "42501"
NOT_READY = "55000"
DAILY = shipped_form("daily_climate")  # keyed twice
SINGLE = DAILY.model_copy(update={"name": "daily_single", "double_keying": False})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def stations(datastore: Datastore) -> dict[str, int]:
    """Two stations; the first has a July TMAX threshold of its own (15-38 degC)."""
    with datastore.engine.begin() as connection:
        ids = dict(connection.execute(sa.text(
            "INSERT INTO station (wigos_id, name, latitude, longitude, timezone) VALUES "
            "(:a, 'Keyed Hill', -1.3, 36.8, 'Africa/Nairobi'), (:b, 'Paper Creek', -1.2, 36.9, 'UTC') "
            "RETURNING wigos_id, id"), {"a": STATION, "b": OTHER_STATION}).all())
    add_thresholds(datastore, [Threshold(test=QcTest.RANGE, element="TMAX", station=STATION, month=7,
                                         duration_seconds=86400, low=15.0, high=38.0)],
                   user="qc-admin", reason="station climatology")
    return ids


def texts(rows: dict[int, dict[str, str]]) -> dict[tuple[int, str], CellInput]:
    return {(row, code): CellInput(text) for row, values in rows.items() for code, text in values.items()}


THREE_DAYS = {
    1: {"TMAX": "31,2", "TMIN": "18.4", "PRCP": "0", "EVAP": "6.1", "SUN": "9.5", "RH": "61"},
    2: {"TMAX": "30.8", "TMIN": "17.9", "PRCP": "T", "EVAP": "5.8", "SUN": "8.7", "RH": "64"},
    3: {"TMAX": "29.5", "TMIN": "18.1", "PRCP": "12.4", "EVAP": "M", "SUN": "4.2", "RH": "80"},
}


def keyed_observations(datastore: Datastore) -> list[sa.Row]:
    with datastore.engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT s.wigos_id, e.code, o.phenomenon_time, o.value, o.result_quality, o.changed_by, o.version, "
            "       o.duration_seconds, o.comment "
            "FROM observation AS o JOIN source AS src ON src.id = o.source_id "
            "JOIN station AS s ON s.id = o.station_id JOIN element AS e ON e.id = o.element_id "
            "WHERE src.name = 'keying' ORDER BY o.phenomenon_time, e.code")).all()


# --------------------------------------------------------------------------- forms


def test_shipped_forms_are_valid_and_laid_out_as_paper() -> None:
    forms = shipped_forms()
    assert set(forms) == {"daily_climate", "hourly_synoptic"}
    daily, hourly = forms["daily_climate"], forms["hourly_synoptic"]
    assert daily.codes_of[:3] == ("TMAX", "TMIN", "PRCP") and daily.double_keying
    assert daily.period("2020-02").rows == tuple(range(1, 30))  # a leap February
    assert hourly.period("2020-07-15").rows == tuple(range(24)) and not hourly.double_keying
    assert hourly.element("WSPD").display_units == "knot"
    assert daily.period("2020-07").cell_label(3, "TMAX") == "2020-07-03 TMAX"
    with pytest.raises(ValueError, match="parameter 'period'"):
        daily.period("2020-7")
    with pytest.raises(ValueError, match="parameter 'period'"):
        hourly.period("2020-07")


@pytest.mark.parametrize(("body", "field", "reason"), [
    ("elements:\n  - {code: TMAX}\n  - {code: TMAXX}\n", "elements.1.code", "not an element code"),
    ("elements:\n  - {code: TMAX}\n  - {code: TMAX}\n", "elements", "on the form twice"),
    ("elements:\n  - {code: PRCP, units: degC}\n", "elements.0", "cannot convert"),
    ("elements:\n  - {code: PRCP}\ncodes: {missing: [M], trace: [M]}\n", "codes", "means both missing and trace"),
    ("elements:\n  - {code: PRCP, decimal: 1}\n", "elements.0.decimal", "Extra inputs are not permitted"),
])
def test_a_bad_form_names_its_file_and_field(tmp_path: Path, body: str, field: str, reason: str) -> None:
    path = tmp_path / "station_book.yml"
    path.write_text("title: Station book\nlayout: days_of_month\nduration: P1D\n" + body, encoding="utf-8")
    with pytest.raises(FormError, match=reason) as raised:
        load_form(path)
    assert raised.value.form_file == str(path) and raised.value.field == field
    assert str(raised.value).startswith(f"{path}: field '{field}': ")


# --------------------------------------------------------------------------- checks


def test_a_cell_is_read_as_typed_with_codes_and_the_forms_units() -> None:
    synoptic = shipped_form("hourly_synoptic")
    value, problem = read_cell(" 31,2 ", DAILY.element("TMAX"), DAILY.codes)
    assert problem is None and (value.kind, value.canonical, value.value) == (CellKind.VALUE, "31.2", 31.2)
    assert read_cell("31", DAILY.element("TMAX"), DAILY.codes)[0].canonical == "31.0"
    trace, _ = read_cell("t", DAILY.element("PRCP"), DAILY.codes)
    assert (trace.kind, trace.value, trace.flag, trace.canonical) == (CellKind.TRACE, 0.0, "trace", "T")
    assert read_cell("M", DAILY.element("TMAX"), DAILY.codes)[0].kind is CellKind.MISSING
    assert read_cell("A", DAILY.element("PRCP"), DAILY.codes)[0].value is None
    _, problem = read_cell("T", DAILY.element("TMAX"), DAILY.codes)
    assert problem.severity is Severity.ERROR and "trace" in problem.message
    _, problem = read_cell("3l.2", DAILY.element("TMAX"), DAILY.codes)
    assert problem.check == "type" and "not a number" in problem.message
    knots, _ = read_cell("10", synoptic.element("WSPD"), synoptic.codes)
    assert knots.canonical == "10" and knots.value == pytest.approx(5.144444, abs=1e-5)  # stored in m s-1
    assert read_cell("", DAILY.element("TMAX"), DAILY.codes) == (None, None)


def test_checks_range_threshold_relation_and_accumulation() -> None:
    rules = SheetRules(
        limits={"TMAX": ElementLimits("TMAX", "degC", -90, 60, 15.0, 38.0, "station", "qc_threshold:7 v1"),
                "TMIN": ElementLimits("TMIN", "degC", -90, 60),
                "PRCP": ElementLimits("PRCP", "mm", 0, 2000)},
        relations=(RelationCheck("TMIN", "<=", "TMAX", None, 0.0, "TMIN<=TMAX", "qc_relation:1 v1"),),
    )
    period = DAILY.period("2020-07")
    checked = check_sheet(DAILY, rules, period, {
        (1, "TMAX"): "75", (2, "TMAX"): "39.5", (3, "TMAX"): "20.0", (3, "TMIN"): "22.5",
        (4, "PRCP"): "A", (5, "PRCP"): "A", (6, "PRCP"): "31.0", (7, "TMAX"): "30.25", (8, "TMAX"): "",
    })
    assert [f.check for f in checked[(1, "TMAX")].errors] == ["range"]
    assert "above the physical limit of TMAX (60 degC)" in checked[(1, "TMAX")].errors[0].message
    threshold = checked[(2, "TMAX")].warnings[0]
    assert threshold.check == "threshold" and "station threshold" in threshold.message and "38.0" in threshold.message
    for code in ("TMAX", "TMIN"):  # a broken relation warns on both cells
        assert [f.message for f in checked[(3, code)].warnings] == [
            "TMIN 22.5 and TMAX 20.0 break TMIN<=TMAX (qc_relation:1 v1)"]
    assert checked[(6, "PRCP")].days == 3 and checked[(4, "PRCP")].value.kind is CellKind.ACCUMULATED
    assert "more decimals" in checked[(7, "TMAX")].warnings[0].message
    assert (8, "TMAX") not in checked  # empty: not keyed
    with pytest.raises(ValueError, match="row 32, element TMAX is not on a daily_climate sheet"):
        check_sheet(DAILY, rules, period, {(32, "TMAX"): "20"})


@pytest.mark.postgres
def test_the_sheets_rules_are_qcs_own_resolution(datastore: Datastore, stations: dict[str, int]) -> None:
    with datastore.engine.connect() as connection:
        july = load_sheet_rules(connection, DAILY, stations[STATION], DAILY.period("2020-07"))
        june = load_sheet_rules(connection, DAILY, stations[STATION], DAILY.period("2020-06"))
        other = load_sheet_rules(connection, DAILY, stations[OTHER_STATION], DAILY.period("2020-07"))
    assert (july.limits["TMAX"].low, july.limits["TMAX"].high, july.limits["TMAX"].level) == (15.0, 38.0, "station")
    assert june.limits["TMAX"].high is None and other.limits["TMAX"].high is None  # no rule: physical range only
    assert (july.limits["TMAX"].valid_min, july.limits["TMAX"].valid_max) == (-90, 60)
    assert any(r.label == "TMIN<=TMAX" for r in july.relations)  # the seeded relation (migration 0002)


# --------------------------------------------------------------------------- the store


@pytest.mark.postgres
def test_double_keying_blind_differences_resolution_and_commit(datastore: Datastore, stations: dict[str, int]) -> None:
    first = open_sheet(datastore, DAILY, STATION, "2020-07", user="alice", role=HubRole.CLERK)
    assert (first.keying, first.version, first.status) == (1, 0, SheetStatus.NEW)
    saved = save_keying(datastore, first, texts(THREE_DAYS))
    assert (saved.keying, saved.version, saved.status) == (1, 1, SheetStatus.KEYING)
    assert "waiting for the second keying" in saved.message and keyed_observations(datastore) == []

    # The second keyer is blind: their own (empty) keying, and the first one is refused.
    second = open_sheet(datastore, DAILY, STATION, "2020-07", user="bob", role=HubRole.CLERK)
    assert (second.keying, second.version, second.cells) == (2, 0, {})
    with pytest.raises(KeyingAccessError, match="keying is blind: bob may not read it"):
        read_keying(datastore, second, 1)
    bob = {row: dict(values) for row, values in THREE_DAYS.items()}
    bob[2]["TMIN"] = "19.7"
    result = save_keying(datastore, second, texts(bob))
    assert (result.status, result.differences) == (SheetStatus.DIFFERENCES, 1)
    assert open_sheet(datastore, DAILY, STATION, "2020-07", user="bob", role="clerk").differences == ((2, "TMIN"),)
    with pytest.raises(SheetNotReadyError, match="1 unresolved difference"):
        commit_sheet(datastore, second)
    assert keyed_observations(datastore) == []

    # Differences are for supervisors who did not key the sheet.
    with pytest.raises(KeyingAccessError, match="only a supervisor"):
        list_differences(datastore, second)
    keyer_as_reviewer = open_sheet(datastore, DAILY, STATION, "2020-07", user="alice", role=HubRole.QC_REVIEWER)
    with pytest.raises(KeyingAccessError, match="alice keyed this sheet"):
        list_differences(datastore, keyer_as_reviewer)
    supervisor = open_sheet(datastore, DAILY, STATION, "2020-07", user="sam", role=HubRole.QC_REVIEWER)
    assert supervisor.keying is None and "does not key" in supervisor.note
    [difference] = list_differences(datastore, supervisor)
    assert (difference.label, difference.first, difference.second) == ("2020-07-02 TMIN", "17.9", "19.7")
    resolved = resolve_difference(datastore, supervisor, difference, "17.9", reason="the form reads 17.9")
    assert (resolved.status, resolved.remaining, resolved.written) == (SheetStatus.COMMITTED, 0, 18)

    stored = keyed_observations(datastore)
    assert len(stored) == 18 and {row.changed_by for row in stored} == {"alice"}  # the clerk who keyed them
    assert {row.wigos_id for row in stored} == {STATION} and {row.duration_seconds for row in stored} == {86400}
    by_cell = {(row.phenomenon_time.isoformat(), row.code): row for row in stored}
    # Station-local days (Africa/Nairobi, UTC+3): day 1 starts at 2020-06-30 21:00 UTC.
    day2 = "2020-07-01T21:00:00+00:00"
    assert by_cell[(day2, "PRCP")].value == 0 and by_cell[(day2, "PRCP")].result_quality == {"ingest": {"flag": "trace"}}
    assert by_cell[("2020-07-02T21:00:00+00:00", "EVAP")].value is None  # M: a missing value
    assert by_cell[(day2, "TMIN")].value == pytest.approx(17.9)
    assert "difference resolved by sam: the form reads 17.9" in by_cell[(day2, "TMIN")].comment

    audit = sheet_audit(datastore, supervisor)
    lines = [(event.action, event.who) for event in audit]
    assert ("saved", "alice") in lines and ("saved", "bob") in lines
    assert ("resolved", "sam") in lines and ("committed", "sam") in lines
    assert any(event.action == "stored" and event.who == "alice" for event in audit)
    assert "resolved 2020-07-02 TMIN: 17.9 / 19.7 -> 17.9 (the form reads 17.9)" in [event.text for event in audit]


@pytest.mark.postgres
def test_a_stale_save_is_refused_and_nothing_is_overwritten(datastore: Datastore, stations: dict[str, int]) -> None:
    alice = open_sheet(datastore, DAILY, STATION, "2020-08", user="alice", role="clerk")
    bob = open_sheet(datastore, DAILY, STATION, "2020-08", user="bob", role="clerk")
    assert alice.keying == bob.keying == 1  # both opened the empty sheet as its first keying
    save_keying(datastore, alice, texts({1: {"TMAX": "30.1"}}))
    with pytest.raises(KeyingConflictError, match=r"keying 1 of daily_climate, station 0-20000-0-63741, 2020-08 "
                                                  r"was saved by alice at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
                                                  r"after you opened it") as refused:
        save_keying(datastore, bob, texts({1: {"TMAX": "29.9"}}))
    assert refused.value.saved_by == "alice" and refused.value.http_status == 409
    again = open_sheet(datastore, DAILY, STATION, "2020-08", user="alice", role="clerk")
    assert again.cells[(1, "TMAX")].text == "30.1" and again.version == 1
    # Alice's own stale view is refused the same way after a newer save of hers.
    save_keying(datastore, again, texts({1: {"TMAX": "30.2"}}))
    with pytest.raises(KeyingConflictError, match="was saved by alice"):
        save_keying(datastore, again, texts({1: {"TMAX": "30.3"}}))


@pytest.mark.postgres
def test_checks_refuse_a_save_and_a_warning_is_kept_with_its_reason(datastore: Datastore, stations: dict[str, int]) -> None:
    view = open_sheet(datastore, SINGLE, STATION, "2020-07", user="alice", role="clerk")
    with pytest.raises(KeyingCheckError) as refused:
        save_keying(datastore, view, texts({2: {"TMAX": "75"}, 3: {"TMAX": "39.5", "TMIN": "x"}}))
    problems = refused.value.problems
    assert any(p.startswith("2020-07-02 TMAX: 75.0 degC is above the physical limit") for p in problems)
    assert any(p.startswith("2020-07-03 TMAX: give a reason to keep it") for p in problems)
    assert any(p.startswith("2020-07-03 TMIN: 'x' is not a number") for p in problems)
    result = save_keying(datastore, view, {(3, "TMAX"): CellInput("39.5", reason="as on the form; hot spell")})
    assert (result.status, result.written) == (SheetStatus.COMMITTED, 1)
    [row] = keyed_observations(datastore)
    assert row.value == 39.5 and "kept despite a warning: as on the form; hot spell" in row.comment


@pytest.mark.postgres
def test_an_edit_after_commit_is_a_new_audited_version(datastore: Datastore, stations: dict[str, int]) -> None:
    view = open_sheet(datastore, SINGLE, OTHER_STATION, "2021-01", user="alice", role="clerk")
    save_keying(datastore, view, texts({1: {"TMAX": "25.0", "TMIN": "12.0"}}))
    reopened = open_sheet(datastore, SINGLE, OTHER_STATION, "2021-01", user="carol", role="clerk")
    assert reopened.status is SheetStatus.COMMITTED and reopened.keying == 1
    assert {key: value.text for key, value in reopened.stored.items()} == {(1, "TMAX"): "25.0", (1, "TMIN"): "12.0"}
    assert reopened.stored[(1, "TMAX")].version == 1 and reopened.stored[(1, "TMAX")].changed_by == "alice"
    result = save_keying(datastore, reopened, texts({1: {"TMAX": "26.0", "TMIN": "12.0"}}))
    assert result.written == 1  # only the changed value
    rows = {row.code: row for row in keyed_observations(datastore)}
    assert (rows["TMAX"].value, rows["TMAX"].version, rows["TMAX"].changed_by) == (26.0, 2, "carol")
    assert (rows["TMIN"].version, rows["TMIN"].changed_by) == (1, "alice")
    with datastore.engine.connect() as connection:
        history = connection.execute(sa.text(
            "SELECT value, version, changed_by, superseded_by, reason FROM observation_history")).all()
    assert [tuple(row) for row in history] == [
        (25.0, 1, "alice", "carol", f"keyed from form daily_single, sheet {result.sheet_id} "
                                    f"(station {OTHER_STATION}, 2021-01)")]


@pytest.mark.postgres
def test_a_full_month_saves_in_one_transaction(datastore: Datastore, stations: dict[str, int]) -> None:
    month = {day: {"TMAX": f"{28 + day % 5}.{day % 10}", "TMIN": f"{16 + day % 3}.{day % 7}", "PRCP": f"{day % 4}.2",
                   "EVAP": f"{5 + day % 2}.1", "SUN": f"{6 + day % 4}.5", "RH": f"{60 + day}"}
             for day in range(1, 32)}
    timings = []
    for number, period in enumerate(("2019-01", "2019-03", "2019-05", "2019-07", "2019-08")):
        view = open_sheet(datastore, SINGLE, STATION, period, user="alice", role="clerk")
        started = time.perf_counter()
        result = save_keying(datastore, view, texts(month))
        timings.append(time.perf_counter() - started)
        assert result.written == 186, number
    print(f"\nfull month (31 days x 6 elements) saved and committed: median {statistics.median(timings) * 1000:.0f} ms "
          f"of {len(timings)} ({', '.join(f'{t * 1000:.0f}' for t in timings)} ms)")


# --------------------------------------------------------------------------- hub users' own logins


@pytest.fixture
def logins(datastore: Datastore) -> Iterator[dict[str, Datastore]]:
    """Datastores connected as hub users' own database logins: clerks ann and ben, reviewer rita."""
    opened = {}
    for user, role in (("ann", HubRole.CLERK), ("ben", HubRole.CLERK), ("rita", HubRole.QC_REVIEWER)):
        url = roles.ensure_hub_user(datastore, user, role)
        opened[user] = Datastore(engine=sa.create_engine(url, poolclass=NullPool), url=url)
    yield opened
    for store in opened.values():
        store.engine.dispose()


def outcome(store: Datastore, *statements: str, **parameters: object) -> str:
    """'ok', or the SQLSTATE of the refusal of ``statements`` (one transaction)."""
    try:
        with store.engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement), parameters)
    except sa.exc.DBAPIError as error:
        return error.orig.sqlstate  # type: ignore[union-attr]
    return "ok"


@pytest.mark.postgres
def test_clerks_logins_commit_through_the_function_never_observation_itself(
    datastore: Datastore, stations: dict[str, int], logins: dict[str, Datastore]
) -> None:
    ann, ben, rita = logins["ann"], logins["ben"], logins["rita"]
    save_keying(ann, open_sheet(ann, DAILY, STATION, "2020-09", user="ann", role="clerk"),
                texts({1: {"TMAX": "30.0", "TMIN": "15.0"}}))
    second = open_sheet(ben, DAILY, STATION, "2020-09", user="ben", role="clerk")
    assert save_keying(ben, second, texts({1: {"TMAX": "30.5", "TMIN": "15.0"}})).status is SheetStatus.DIFFERENCES
    sheet = second.sheet_id
    # The database itself: a clerk cannot write observations, resolve, or commit an unready sheet.
    assert outcome(ben, "UPDATE observation SET value = 1") == INSUFFICIENT_PRIVILEGE
    assert outcome(ben, "INSERT INTO observation (station_id, element_id, phenomenon_time, source_id, value, "
                        "changed_by) VALUES (1, 1, now(), 1, 1, 'ben')") == INSUFFICIENT_PRIVILEGE
    assert outcome(ben, "INSERT INTO keying_resolution (sheet_id, cell, reason, resolved_by, resolved_by_role) "
                        "VALUES (:s, '1|TMAX', 'mine', 'ben', 'ben')", s=sheet) == INSUFFICIENT_PRIVILEGE
    assert outcome(ben, "SELECT keying_commit(:s)", s=sheet) == NOT_READY
    assert outcome(ben, "UPDATE keying_log SET done_by = 'x'") == INSUFFICIENT_PRIVILEGE
    # The reviewer resolves through her own login; that commits (keying_commit runs as the owner).
    supervisor = open_sheet(rita, DAILY, STATION, "2020-09", user="rita", role=HubRole.QC_REVIEWER)
    [difference] = list_differences(rita, supervisor)
    result = resolve_difference(rita, supervisor, difference, "30.5", reason="form reads 30.5")
    assert (result.status, result.written) == (SheetStatus.COMMITTED, 2)
    authors = {row.code: row.changed_by for row in keyed_observations(datastore)}
    assert authors == {"TMAX": "ben", "TMIN": "ann"}  # the clerk whose value was kept
    # An edit by the first clerk's login: a new version, the history names her login.
    first = open_sheet(ann, DAILY, STATION, "2020-09", user="ann", role="clerk")
    assert first.stored[(1, "TMAX")].text == "30.5"  # what is stored, read through keying_observations
    save_keying(ann, first, texts({1: {"TMAX": "30.5", "TMIN": "15.5"}}))
    save_keying(ben, open_sheet(ben, DAILY, STATION, "2020-09", user="ben", role="clerk"),
                texts({1: {"TMAX": "30.5", "TMIN": "15.5"}}))
    with datastore.engine.connect() as connection:
        entry = connection.execute(sa.text(
            "SELECT h.value, h.superseded_by, h.superseded_by_role FROM observation_history AS h "
            "JOIN element AS e ON e.id = h.element_id WHERE e.code = 'TMIN'")).one()
    assert (entry.value, entry.superseded_by) == (15.0, "ann")
    assert entry.superseded_by_role == roles.hub_user_role_name(roles.installation_roles(datastore), "ben")
    # One person cannot be both keyers, whatever name a session claims.
    save_keying(ann, open_sheet(ann, DAILY, STATION, "2020-10", user="ann", role="clerk"), texts({1: {"TMAX": "20"}}))
    with ann.engine.begin() as connection:
        sheet = connection.execute(sa.text("SELECT id FROM keying_sheet WHERE period = '2020-10'")).scalar_one()
    assert outcome(ann, "SELECT set_config('opencdms.user', 'someone-else', true)",
                   "INSERT INTO keying_entry (sheet_id, keying, keyed_by, keyed_by_role, cells, saved_by) "
                   "SELECT sheet_id, 2, '', '', cells, '' FROM keying_entry WHERE sheet_id = :s",
                   "SELECT keying_commit(:s)", s=sheet) == NOT_READY
