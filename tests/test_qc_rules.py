"""QC rules, runs and their record on a small hand-made network, on both PostgreSQL setups.

Rules are versioned and never edited in place, each finding names the rule row and version that
raised it, a run records what it covered (and unflagged values it covered read as passed), a
run limited in scope touches nothing outside it, a failed run is recorded as failed, and bad
input is refused with an error that names the parameter.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

import opencdms_kernel.qc.run as qc_run_module
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError, ParameterError, UnknownReferenceError
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.qc import (
    Decision,
    ObservationKey,
    ObservationNotFoundError,
    QcParameterError,
    QcStatus,
    QcTest,
    Relation,
    Severity,
    Threshold,
    add_relations,
    add_thresholds,
    DerivationMethod,
    PersistenceMethod,
    StepMethod,
    current_thresholds,
    decide,
    derive_and_store_range_thresholds,
    derive_and_store_thresholds,
    run_qc,
)
from opencdms_kernel.qc.rules import load_rules
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

A, B = "0-20000-0-71001", "0-20000-0-71002"
USER = "qc-tester"
FIRST_DAY = date(2020, 1, 1)
DAYS = 60
OUTLIER_DAY = 30  # TMAX at A: 27.0 on an otherwise 20-ish series


def write_network(folder: Path) -> tuple[Path, Path]:
    """Two stations; 60 days of TMAX and TMIN each, one TMAX outlier at A (27.0, a step of
    7 K: under the network step limit), and one day at B where TMIN > TMAX."""
    stations = folder / "stations.csv"
    stations.write_text(
        "wigos_id,name,latitude,longitude,elevation\n"
        f"{A},Alpha,-1.0,36.0,1500\n{B},Beta,-1.2,36.3,1400\n", encoding="utf-8")
    lines = ["station,element,time,value"]
    for station in (A, B):
        for element, base in (("TMAX", 20.0), ("TMIN", 10.0)):
            for n in range(DAYS):
                value = base + (n % 5) * 0.3
                if (station, element, n) == (A, "TMAX", OUTLIER_DAY):
                    value = 27.0
                if (station, n) == (B, 10):
                    value = {"TMAX": 9.0, "TMIN": 12.0}[element]
                lines.append(f"{station},{element},{FIRST_DAY + timedelta(days=n)},{value:.1f}")
    observations = folder / "observations.csv"
    observations.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return stations, observations


@pytest.fixture
def network(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> Path:
    stations, observations = write_network(tmp_path)
    import_stations(datastore, stations)
    assert ingest(IngestRequest.from_path(observations), datastore, bucket, "loader").status is IngestStatus.LOADED
    return observations


def entry(datastore: Datastore, station: str, element: str, day: int) -> tuple[dict, str, str | None]:
    """result_quality, qc_status and final_flag of one daily value."""
    with datastore.engine.connect() as connection:
        return tuple(connection.execute(sa.text(
            "SELECT o.result_quality, o.qc_status, o.final_flag FROM observation AS o "
            "JOIN station AS s ON s.id = o.station_id JOIN element AS e ON e.id = o.element_id "
            "WHERE s.wigos_id = :s AND e.code = :e AND o.phenomenon_time = :t"),
            {"s": station, "e": element, "t": datetime.combine(FIRST_DAY + timedelta(days=day), datetime.min.time(),
                                                              tzinfo=timezone.utc)}).one())


def range_rule(high: float, **changes: object) -> Threshold:
    return Threshold(test=QcTest.RANGE, element="TMAX", station=A, low=15.0, high=high, **changes)


@pytest.mark.usefixtures("network")
def test_rules_are_versioned_and_findings_name_rule_and_version(datastore: Datastore, bucket: Bucket) -> None:
    assert add_thresholds(datastore, [range_rule(25.0)], user="climatologist", reason="station A range") == 1
    assert add_thresholds(datastore, [range_rule(25.0)], user="climatologist", reason="same again") == 0
    (rule,) = [t for t in current_thresholds(datastore, QcTest.RANGE) if t["station"] == A]
    assert (rule["version"], rule["high"], rule["method"]) == (1, 25.0, "manual")

    first = run_qc(datastore, bucket, user=USER, tests=["range"])
    quality, status, flag = entry(datastore, A, "TMAX", OUTLIER_DAY)
    assert quality["range"] == {"result": "suspect", "flag": "above_range", "rule": f"qc_threshold:{rule['id']}",
                                "version": 1, "run": first.run_id, "low": 15.0, "high": 25.0, "threshold": "station"}
    assert (status, flag) == ("suspect", "suspect")

    # Never edited in place: the database refuses it, whoever asks.
    for statement in ("UPDATE qc_threshold SET high = 30 WHERE id = :id", "DELETE FROM qc_threshold WHERE id = :id"):
        with pytest.raises(sa.exc.DBAPIError, match="never changed or removed"):
            with datastore.engine.begin() as connection:
                connection.execute(sa.text(statement), {"id": rule["id"]})

    # A wider range is a new version; the value then passes and its entry goes (history keeps it).
    assert add_thresholds(datastore, [range_rule(30.0)], user="climatologist", reason="wider") == 1
    second = run_qc(datastore, bucket, user=USER, tests=["range"])
    quality, status, flag = entry(datastore, A, "TMAX", OUTLIER_DAY)
    assert "range" not in quality and (status, flag) == ("passed", "good")
    # A stricter one is version 3, and the new finding names it.
    add_thresholds(datastore, [range_rule(26.0, severity=Severity.FAILED)], user="climatologist", reason="strict")
    third = run_qc(datastore, bucket, user=USER, tests=["range"])
    quality, status, flag = entry(datastore, A, "TMAX", OUTLIER_DAY)
    (rule3,) = [t for t in current_thresholds(datastore, QcTest.RANGE) if t["station"] == A]
    assert rule3["version"] == 3 and rule3["id"] != rule["id"]
    assert quality["range"]["rule"] == f"qc_threshold:{rule3['id']}" and quality["range"]["version"] == 3
    assert quality["range"]["run"] == third.run_id and (status, flag) == ("failed", "bad")
    with datastore.engine.connect() as connection:
        versions = connection.execute(sa.text(
            "SELECT version, high, created_by FROM qc_threshold WHERE station_id IS NOT NULL ORDER BY version")).all()
        runs = connection.execute(sa.text(
            "SELECT id, threshold_as_of FROM qc_run WHERE status = 'finished' ORDER BY id")).all()
    assert [(v.version, v.high, v.created_by) for v in versions] == [
        (1, 25.0, "climatologist"), (2, 30.0, "climatologist"), (3, 26.0, "climatologist")]
    assert [r.id for r in runs] == [first.run_id, second.run_id, third.run_id]
    assert runs[0].threshold_as_of < runs[1].threshold_as_of < runs[2].threshold_as_of


def test_network_defaults_and_relations_are_seeded_and_versioned(datastore: Datastore) -> None:
    seeded = {(t["test"], t["element"], t["duration_seconds"]): t for t in current_thresholds(datastore)}
    assert seeded[("step", "TMAX", 86400)]["max_change"] == 8.0
    assert seeded[("persistence", "TMAX", 86400)]["max_run"] == 5
    assert seeded[("persistence", "PRCP", 86400)]["exclude_value"] == 0.0
    assert seeded[("spatial", "TMIN", 86400)]["min_neighbours"] == 3
    assert all(t["method"].startswith("seed") for t in seeded.values())
    # Migration 0005 stated, as new versions, the resolution the run limits assume and the
    # spatial check's minimum difference.
    assert (seeded[("persistence", "PRES", 3600)]["resolution"], seeded[("persistence", "RH", 3600)]["resolution"]) \
        == (0.1, 1.0)
    assert seeded[("persistence", "PRES", 3600)]["version"] == 2 and seeded[("persistence", "PRES", 3600)]["max_run"] == 8
    assert seeded[("spatial", "TMAX", 86400)]["min_difference"] == 3.0 and seeded[("spatial", "TMAX", 86400)]["version"] == 2
    assert seeded[("step", "TMAX", 86400)]["version"] == 1 and seeded[("step", "TMAX", 86400)]["resolution"] is None
    relation = Relation("TMIN", "<=", "TMAX", tolerance=0.5, severity=Severity.FAILED)
    assert add_relations(datastore, [relation], user="climatologist", reason="allow rounding") == 1
    assert add_relations(datastore, [relation], user="climatologist", reason="again") == 0
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT r.version, r.tolerance FROM qc_relation AS r JOIN element AS l ON l.id = r.left_element_id "
            "JOIN element AS rr ON rr.id = r.right_element_id WHERE l.code = 'TMIN' AND rr.code = 'TMAX' "
            "ORDER BY r.version")).all()
        with pytest.raises(sa.exc.DBAPIError, match="never changed or removed"):
            connection.execute(sa.text("UPDATE qc_relation SET tolerance = 9"))
    assert [tuple(r) for r in rows] == [(1, 0.0), (2, 0.5)]


def test_relations_in_force_come_failed_first_then_in_the_order_they_were_added(datastore: Datastore) -> None:
    # The severity a relation is sorted by is bound from the enum (Severity.FAILED), not written
    # into the SQL: a relation that finds a value wrong is tried before one that finds it doubtful.
    add_relations(datastore, [Relation("TMEAN", "<=", "TMAX", severity=Severity.SUSPECT),
                              Relation("TMIN", "<=", "TMEAN", severity=Severity.FAILED)],
                  user="climatologist", reason="order")
    with datastore.engine.connect() as connection:
        relations = load_rules(connection).relations
    severities = [relation.severity for relation in relations]
    assert Severity.SUSPECT in severities and Severity.FAILED in severities
    assert severities == sorted(severities, key=lambda severity: severity is not Severity.FAILED)
    for severity in Severity:
        ids = [relation.id for relation in relations if relation.severity is severity]
        assert ids == sorted(ids)


@pytest.mark.usefixtures("network")
def test_derived_thresholds_are_stored_as_new_versions_for_the_scope_asked(datastore: Datastore, bucket: Bucket) -> None:
    method = {"TMAX": DerivationMethod(k=3.0, min_values=20)}
    derived = derive_and_store_range_thresholds(datastore, bucket, user="climatologist", stations=[A],
                                                elements=["TMAX", "TMIN"], start=date(2020, 1, 1),
                                                end=date(2020, 2, 29), methods=method)
    assert (derived.derived, derived.stored) == (2, 2)  # January and February of A's TMAX
    again = derive_and_store_range_thresholds(datastore, bucket, user="climatologist", stations=[A],
                                              elements=["TMAX"], methods=method)
    assert (again.derived, again.stored) == (2, 0)  # the same data: nothing new
    stored = [t for t in current_thresholds(datastore, QcTest.RANGE) if t["station"] == A]
    assert [(t["month"], t["duration_seconds"], t["version"]) for t in stored] == [(1, 86400, 1), (2, 86400, 1)]
    assert all(t["method"].startswith("derived") and t["low"] < 20.0 < t["high"] for t in stored)
    with pytest.raises(UnknownReferenceError, match="stations"):
        derive_and_store_range_thresholds(datastore, bucket, user="c", stations=["0-9-9-9"])


@pytest.mark.usefixtures("network")
def test_the_threshold_level_and_why_a_fallback_applied_are_recorded(datastore: Datastore, bucket: Bucket) -> None:
    # Sixty days of history: too short for the default derivation (120 values of a month).
    derived = derive_and_store_thresholds(datastore, bucket, user="climatologist", tests=["step", "persistence"])
    assert derived.derived == 0 and derived.too_short == 2 * 2 * 2 * 2  # tests, stations, elements, months
    first = run_qc(datastore, bucket, user=USER, tests=["step"])
    quality, _, _ = entry(datastore, B, "TMAX", 10)  # B's swapped day: 9.0 between days of 20-ish
    assert quality["step"]["flag"] == "spike" and quality["step"]["threshold"] == "network"
    assert quality["step"]["fallback"] == "station history too short: 31 values of January, 120 needed"
    assert first.counts[QcTest.STEP].thresholds == {"network": 4 * DAYS}
    with datastore.engine.connect() as connection:
        run = connection.execute(sa.text("SELECT counts, fallbacks FROM qc_run WHERE id = :id"),
                                 {"id": first.run_id}).one()
    assert run.counts["step"]["thresholds"] == {"network": 4 * DAYS}
    fallbacks = {(f["station"], f["element"]): f for f in run.fallbacks}
    assert set(fallbacks) == {(A, "TMAX"), (A, "TMIN"), (B, "TMAX"), (B, "TMIN")}
    assert fallbacks[(B, "TMAX")] == {
        "test": "step", "station": B, "element": "TMAX", "duration_seconds": 86400, "threshold": "network",
        "values": DAYS, "months": ["January", "February"], "reason": "station history too short",
        "detail": ["station history too short: 31 values of January, 120 needed",
                   "station history too short: 29 values of February, 120 needed"]}

    # With a derivation that asks less, each station gets its own: versioned, with its history.
    derived = derive_and_store_thresholds(
        datastore, bucket, user="climatologist", tests=["step", "persistence"],
        step_methods={"TMAX": StepMethod(min_values=20), "TMIN": StepMethod(min_values=20)},
        persistence_methods={"TMAX": PersistenceMethod(min_values=20)})
    assert (derived.derived, derived.stored) == (2 * 2 * 2 + 2 * 2, 12)
    steps = [t for t in current_thresholds(datastore, QcTest.STEP) if t["station"] == B and t["element"] == "TMAX"]
    assert [(t["month"], t["history_values"], t["version"]) for t in steps] == [(1, 31, 1), (2, 29, 1)]
    assert all(t["method"].startswith("derived: q99 + k*(q99 - q90)") for t in steps)
    runs = [t for t in current_thresholds(datastore, QcTest.PERSISTENCE) if t["station"] == A]
    assert {(t["element"], t["resolution"]) for t in runs} == {("TMAX", 0.3)}  # steps of 0.3 K
    second = run_qc(datastore, bucket, user=USER, tests=["step"])
    assert second.counts[QcTest.STEP].thresholds == {"station": 4 * DAYS}
    # Why the default asks for 120 values: in 31, B's two jumps of 11 K are 3 % of its changes,
    # its own 99th percentile, and the threshold learnt from them lets the spike pass.
    quality, _, _ = entry(datastore, B, "TMAX", 10)
    assert "step" not in quality and steps[0]["max_change"] > 11
    with datastore.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT fallbacks FROM qc_run WHERE id = :id"),
                                  {"id": second.run_id}).scalar_one() == []


@pytest.mark.usefixtures("network")
def test_unflagged_values_a_run_covered_are_passed_until_they_change(datastore: Datastore, bucket: Bucket) -> None:
    result = run_qc(datastore, bucket, user=USER)
    assert result.counts[QcTest.CONSISTENCY].failed == 2  # both values of B's swapped day
    assert result.status_counts[QcStatus.FAILED] == 2 and result.written == 2
    with datastore.engine.connect() as connection:
        counts = dict(connection.execute(sa.text("SELECT qc_status, count(*) FROM observation_quality GROUP BY 1")).all())
        stored = dict(connection.execute(sa.text("SELECT qc_status, count(*) FROM observation GROUP BY 1")).all())
    assert counts == {"passed": 4 * DAYS - 2, "failed": 2}
    assert stored == {"none": 4 * DAYS - 2, "failed": 2}  # only the flagged rows were written
    # A value changed after the run is not covered any more.
    with datastore.engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE observation SET value = value + 0.1 WHERE phenomenon_time = :t"),
            {"t": datetime(2020, 1, 3, tzinfo=timezone.utc)})
        counts = dict(connection.execute(sa.text("SELECT qc_status, count(*) FROM observation_quality GROUP BY 1")).all())
    assert counts == {"passed": 4 * DAYS - 6, "failed": 2, "none": 4}


@pytest.mark.usefixtures("network")
def test_a_run_limited_in_scope_touches_nothing_outside_it(datastore: Datastore, bucket: Bucket) -> None:
    result = run_qc(datastore, bucket, user=USER, stations=[A], elements=["TMIN"],
                    start=date(2020, 1, 5), end=date(2020, 1, 20))
    assert result.checked == 16 and result.written == 0  # B's swapped day is outside the scope
    with datastore.engine.connect() as connection:
        run = connection.execute(sa.text("SELECT * FROM qc_run WHERE id = :id"), {"id": result.run_id}).one()
        covered = connection.execute(sa.text(
            "SELECT count(*) FROM observation_quality WHERE checked_by_run = :id"), {"id": result.run_id}).scalar_one()
        element = connection.execute(sa.text("SELECT id FROM element WHERE code = 'TMIN'")).scalar_one()
    assert len(run.station_ids) == 1 and run.element_ids == [element]
    assert run.period_start == datetime(2020, 1, 5, tzinfo=timezone.utc)
    assert run.period_end == datetime(2020, 1, 20, 23, 59, 59, 999999, tzinfo=timezone.utc)
    assert covered == 16


@pytest.mark.usefixtures("network")
def test_a_failing_run_is_recorded_and_writes_nothing(
    datastore: Datastore, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(qc_run_module, "check_step", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_qc(datastore, bucket, user=USER)
    with datastore.engine.connect() as connection:
        run = connection.execute(sa.text("SELECT status, error FROM qc_run")).one()
        written = connection.execute(sa.text("SELECT count(*) FROM observation WHERE qc_status <> 'none'")).scalar_one()
    assert run.status == "failed" and "disk on fire" in run.error and written == 0


@pytest.mark.usefixtures("network")
def test_bad_input_gives_a_clear_error_naming_the_parameter(datastore: Datastore, bucket: Bucket) -> None:
    def refused(error: type[Exception], parameter: str, action) -> str:
        with pytest.raises(error) as raised:
            action()
        assert isinstance(raised.value, OpenCDMSError) and raised.value.parameter == parameter, str(raised.value)
        if isinstance(raised.value, ParameterError):
            # The kernel's one form for a refused parameter, refused as every door refuses it.
            assert str(raised.value).startswith(f"parameter '{parameter}': "), str(raised.value)
            assert (raised.value.http_status, raised.value.exit_code) == (400, 2)
        else:
            assert str(raised.value).startswith(f"{parameter}: "), str(raised.value)
        return str(raised.value)

    assert "'0-9-9-9'" in refused(UnknownReferenceError, "stations",
                                  lambda: run_qc(datastore, bucket, user=USER, stations=[A, "0-9-9-9"]))
    assert "'TMAXX'" in refused(UnknownReferenceError, "elements",
                                lambda: run_qc(datastore, bucket, user=USER, elements=["TMAXX"]))
    assert "after end" in refused(QcParameterError, "start", lambda: run_qc(
        datastore, bucket, user=USER, start=date(2020, 2, 1), end=date(2020, 1, 1)))
    assert "range" in refused(QcParameterError, "tests", lambda: run_qc(datastore, bucket, user=USER, tests=["ragne"]))
    refused(QcParameterError, "user", lambda: run_qc(datastore, bucket, user=" "))
    refused(QcParameterError, "stations", lambda: run_qc(datastore, bucket, user=USER, stations=[]))
    with datastore.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM qc_run")).scalar_one() == 0  # nothing started

    moment = datetime(2020, 1, 31, tzinfo=timezone.utc)
    key = ObservationKey(station=A, element="TMAX", phenomenon_time=moment)
    refused(QcParameterError, "reason", lambda: decide(datastore, key, Decision.ACCEPT, "  ", "anna"))
    refused(QcParameterError, "corrected_value", lambda: decide(datastore, key, Decision.CORRECT, "typo", "anna"))
    refused(QcParameterError, "corrected_value", lambda: decide(datastore, key, Decision.ACCEPT, "ok", "anna", 20.0))
    refused(QcParameterError, "corrected_value", lambda: decide(datastore, key, "correct", "typo", "anna", 99.0))
    refused(QcParameterError, "decision", lambda: decide(datastore, key, "approve", "ok", "anna"))
    refused(UnknownReferenceError, "key.station",
            lambda: decide(datastore, ObservationKey("0-9-9-9", "TMAX", moment), "accept", "ok", "anna"))
    refused(QcParameterError, "key.phenomenon_time", lambda: decide(
        datastore, ObservationKey(A, "TMAX", moment.replace(tzinfo=None)), "accept", "ok", "anna"))
    with pytest.raises(ObservationNotFoundError, match="TMAX at station 0-20000-0-71001"):
        decide(datastore, ObservationKey(A, "TMAX", moment + timedelta(days=100)), "accept", "ok", "anna")
    refused(UnknownReferenceError, "thresholds", lambda: add_thresholds(
        datastore, [Threshold(QcTest.STEP, "TMAXX", max_change=3.0)], user="c", reason="r"))
    refused(QcParameterError, "thresholds[0].max_change", lambda: add_thresholds(
        datastore, [Threshold(QcTest.STEP, "TMAX")], user="c", reason="r"))
    refused(QcParameterError, "thresholds[0].max_run", lambda: add_thresholds(
        datastore, [Threshold(QcTest.RANGE, "TMAX", low=1.0, max_run=3)], user="c", reason="r"))
    # None of it changed anything.
    with datastore.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM observation_history")).scalar_one() == 0


@pytest.mark.usefixtures("network")
def test_a_decision_on_a_value_never_flagged_is_audited_and_kept(datastore: Datastore, bucket: Bucket) -> None:
    key = ObservationKey(station=A, element="TMIN", phenomenon_time=datetime(2020, 1, 2, tzinfo=timezone.utc))
    result = decide(datastore, key, Decision.CORRECT, "transcription error", "anna", corrected_value=11.5)
    assert (result.previous_value, result.value, result.qc_status) == (10.3, 11.5, QcStatus.PASSED)
    again = decide(datastore, key, Decision.CORRECT, "second look", "ben", corrected_value=11.4)
    run_qc(datastore, bucket, user=USER)
    quality, status, flag = entry(datastore, A, "TMIN", 1)
    assert quality["manual"]["original_value"] == 10.3 and quality["manual"]["by"] == "ben"
    assert (again.value, status, flag) == (11.4, "passed", "corrected")
    with datastore.engine.connect() as connection:
        history = connection.execute(sa.text(
            "SELECT value, superseded_by, reason FROM observation_history WHERE phenomenon_time = :t ORDER BY id"),
            {"t": key.phenomenon_time}).all()
    assert [tuple(h) for h in history] == [(10.3, "anna", "manual QC (correct): transcription error"),
                                           (11.5, "ben", "manual QC (correct): second look")]


def test_qc_reads_an_archive_on_s3(s3_settings: Settings, tmp_path: Path) -> None:
    bucket = open_bucket(s3_settings)
    with Datastore.open(s3_settings) as datastore:
        stations, observations = write_network(tmp_path)
        import_stations(datastore, stations)
        assert ingest(IngestRequest.from_path(observations), datastore, bucket, "loader").status is IngestStatus.LOADED
        result = run_qc(datastore, bucket, user=USER)
        assert result.checked == 4 * DAYS and result.written == 2
        assert entry(datastore, B, "TMIN", 10)[1:] == ("failed", "bad")
