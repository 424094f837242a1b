"""Quality control on the demo network and on a real-data-like record: the injected errors
are found, few clean values are flagged, values never change, manual decisions survive re-QC
and re-ingest and are audited.

One demo database per PostgreSQL setup (embedded and external) is loaded once for the module:
20 daily stations x 10 years (TMAX, TMIN, PRCP with the manifest's injected errors; twelve of
the stations form the dense cluster, where the buddy check has neighbours) and one hourly AWS
station for a year; station/month range, step and persistence thresholds are derived from the
archive, then QC runs twice.  Tests that change data (manual decisions) touch only their own
values and compare against snapshots the fixture took, so their order does not matter.

Scoring against ``manifest.json``: a manifest value counts as found when QC flagged it
(qc_status suspect or failed).  A flat line's first day is listed by the manifest with its
true value; it is scored as listed (QC flags the whole run of equal values, since which of its
days is genuine cannot be told) and the recall without those first days is printed beside.
The buddy check's own recall counts the values its entry flagged, at cluster stations.
False positives: flagged values not in the manifest, over all values not in the manifest
(daily and hourly).

The airport record (:func:`opencdms_kernel.demo.generate_airport_data`) is a
mid-latitude station with fronts, whole-°F temperatures and whole-hPa pressure and no
injected errors: every flag there is a false positive.  It is checked twice, first with
the network's rules only (a fresh installation), then with thresholds derived from its own
30 years (daily) and 3 years (hourly).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import pytest
import sqlalchemy as sa

from conftest import PostgresServer, service_missing
from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.demo import (
    AirportDataset,
    AirportSpec,
    DemoDataset,
    DemoSpec,
    cluster_indices,
    generate_airport_data,
    generate_demo_data,
    station_network,
)
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest, load_mapping
from opencdms_kernel.qc import (
    Decision,
    DerivedThresholds,
    FinalFlag,
    ObservationKey,
    QcRunResult,
    QcStatus,
    QcTest,
    attach_quality_view,
    decide,
    derive_and_store_thresholds,
    run_qc,
)
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

SPEC = DemoSpec(stations=20, years=10, start_year=1991, aws_stations=1, aws_years=1)
LOADER, QC_USER, REVIEWER = "loader", "qc-runner", "reviewer-anna"
KINDS = ("spike", "flat_line", "tmin_gt_tmax", "unit_mistake", "spatial_outlier")
MIN_RECALL = 0.95
MAX_FALSE_POSITIVE_RATE = 0.0002  # 0.02 % of the clean values
# The buddy check alone, on the injected single-value temperature errors of cluster stations.
BUDDY_KINDS = ("spatial_outlier", "spike")
AIRPORT = AirportSpec(years=30, hourly_years=3)
MAX_AIRPORT_FALSE_POSITIVE_RATE = 0.0002  # with thresholds from the station's own history

# Every value with its key, local date (the demo's daily files are dated locally) and status.
VALUES_SQL = sa.text(
    """
    SELECT s.wigos_id, e.code, o.phenomenon_time, o.duration_seconds, o.level, src.name AS source,
           o.value, o.status, o.version
    FROM observation AS o
    JOIN station AS s ON s.id = o.station_id JOIN element AS e ON e.id = o.element_id
    JOIN source AS src ON src.id = o.source_id
    """
)
QUALITY_SQL = sa.text(
    """
    SELECT s.wigos_id, e.code, to_char(q.phenomenon_time AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, q.duration_seconds,
           q.qc_status, q.final_flag, q.checked_by_run, q.result_quality
    FROM observation_quality AS q
    JOIN station AS s ON s.id = q.station_id JOIN element AS e ON e.id = q.element_id
    WHERE q.value IS NOT NULL
    """
)


@dataclass
class DemoStore:
    dataset: DemoDataset
    datastore: Datastore
    bucket: Bucket
    derived: DerivedThresholds
    values_before: dict[tuple, tuple]
    values_after_qc: dict[tuple, tuple]
    quality_after_first: list[sa.Row]
    first: QcRunResult
    second: QcRunResult
    errors: dict[tuple[str, str, str], dict]


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_data(tmp_path_factory.mktemp("qc-demo"), SPEC)


def snapshot(datastore: Datastore) -> dict[tuple, tuple]:
    with datastore.engine.connect() as connection:
        return {tuple(row[:6]): tuple(row[6:8]) for row in connection.execute(VALUES_SQL)}


def load(dataset: DemoDataset, datastore: Datastore, bucket: Bucket) -> None:
    import_stations(datastore, dataset.stations_csv)
    aws = load_mapping(dataset.aws_mapping)
    requests = [IngestRequest.from_path(p) for p in dataset.daily_files]
    requests += [IngestRequest.from_path(p, aws) for p in dataset.aws_files]
    for request in requests:
        result = ingest(request, datastore, bucket, LOADER)
        assert result.status is IngestStatus.LOADED, result.error


@pytest.fixture(scope="module", params=["embedded", "external"])
def demo(request: pytest.FixtureRequest, demo_dataset: DemoDataset,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStore]:
    server: PostgresServer | None = request.getfixturevalue(f"{request.param}_server")
    if server is None:
        service_missing("no external PostgreSQL for the QC demo tests")
    name = server.new_database()
    home = tmp_path_factory.mktemp(f"qc-{request.param}")
    settings = Settings(home=home, database_url=server.url_of(name), bucket_url=f"file://{home / 'bucket'}")
    datastore = Datastore.open(settings)
    try:
        bucket = open_bucket(settings)
        load(demo_dataset, datastore, bucket)
        before = snapshot(datastore)
        derived = derive_and_store_thresholds(datastore, bucket, user=QC_USER)
        first = run_qc(datastore, bucket, user=QC_USER)
        with datastore.engine.connect() as connection:
            quality = connection.execute(QUALITY_SQL).all()
        second = run_qc(datastore, bucket, user=QC_USER)
        after = snapshot(datastore)
        manifest = json.loads(demo_dataset.manifest.read_text())
        errors = {(e["station"], e["element"], e["time"]): e for e in manifest["errors"]}
        yield DemoStore(demo_dataset, datastore, bucket, derived, before, after, quality, first, second, errors)
    finally:
        datastore.close()
        server.drop(name)
        shutil.rmtree(home, ignore_errors=True)


def is_flagged(status: str) -> bool:
    return status in (QcStatus.SUSPECT, QcStatus.FAILED)


def test_qc_finds_the_injected_errors(demo: DemoStore) -> None:
    daily = {(r.wigos_id, r.code, r.day): r for r in demo.quality_after_first if r.duration_seconds == 86400}
    assert set(demo.errors) <= set(daily), "every manifest value is in the datastore"
    recall: dict[str, tuple[int, int]] = {}
    for kind in KINDS:
        keys = [key for key, error in demo.errors.items() if error["kind"] == kind]
        found = sum(is_flagged(daily[key].qc_status) for key in keys)
        recall[kind] = (found, len(keys))
    daily_stations, _ = station_network(SPEC)
    cluster = {daily_stations[i].wigos_id for i in cluster_indices(SPEC.stations)}
    buddy: dict[str, tuple[int, int]] = {}
    for kind in (*BUDDY_KINDS, "tmin_gt_tmax"):
        keys = [key for key, error in demo.errors.items()
                if error["kind"] == kind and key[0] in cluster and key[1] in ("TMAX", "TMIN")]
        buddy[kind] = (sum("spatial" in daily[key].result_quality for key in keys), len(keys))
    first_days = [key for key, e in demo.errors.items()
                  if e["kind"] == "flat_line" and e["true_value"] == e["recorded_value"]]
    negatives = [r for r in demo.quality_after_first
                 if r.duration_seconds != 86400 or (r.wigos_id, r.code, r.day) not in demo.errors]
    false_positives = [r for r in negatives if is_flagged(r.qc_status)]
    rate = len(false_positives) / len(negatives)
    print(f"\nQC on the demo network ({SPEC.stations} stations x {SPEC.years} years + "
          f"{SPEC.aws_stations} AWS x {SPEC.aws_years} year, {len(demo.quality_after_first):,} values):")
    for kind, (found, total) in recall.items():
        print(f"  recall {kind:<13} {found:>4}/{total:<4} = {found / total:.3f}")
    flat_rest = [k for k, e in demo.errors.items() if e["kind"] == "flat_line" and k not in first_days]
    print(f"  recall flat_line without first days {sum(is_flagged(daily[k].qc_status) for k in flat_rest)}"
          f"/{len(flat_rest)}; first days flagged "
          f"{sum(is_flagged(daily[k].qc_status) for k in first_days)}/{len(first_days)}")
    for kind, (found, total) in buddy.items():
        print(f"  buddy check alone, cluster stations: {kind:<16} {found:>3}/{total:<3} = {found / max(total, 1):.3f}")
    spatial = demo.first.counts[QcTest.SPATIAL]
    print(f"  buddy check tested {spatial.tested:,} values, skipped {spatial.skipped:,} (no neighbours)")
    by_test = Counter((r.code, r.duration_seconds, ",".join(sorted(set(r.result_quality) - {"ingest"})))
                      for r in false_positives)
    print(f"  false positives {len(false_positives)}/{len(negatives):,} = {rate:.5%}  {dict(by_test)}")
    for kind, (found, total) in recall.items():
        assert total > 0 and found / total >= MIN_RECALL, f"recall of {kind}: {found}/{total}"
    for kind in BUDDY_KINDS:
        found, total = buddy[kind]
        assert total > 0 and found / total >= MIN_RECALL, f"buddy check recall of {kind}: {found}/{total}"
    # The buddy check runs wherever a station has neighbours: on every cluster station.
    assert spatial.tested >= 0.99 * len(cluster) * 2 * 365 * SPEC.years
    assert rate <= MAX_FALSE_POSITIVE_RATE
    assert demo.derived.stored == demo.derived.derived > 0 and demo.derived.too_short == 0


def test_qc_never_changes_or_deletes_a_value(demo: DemoStore) -> None:
    assert demo.first.written > 0
    assert demo.values_after_qc == demo.values_before  # same keys, values and status 'latest'
    assert all(status == "latest" for _, status in demo.values_before.values())


def test_a_second_run_writes_nothing_and_unflagged_values_are_derived_passed(demo: DemoStore) -> None:
    assert demo.second.written == 0 and demo.second.stale == 0
    assert demo.second.status_counts == demo.first.status_counts
    counts = Counter(r.qc_status for r in demo.quality_after_first)
    flagged = demo.first.status_counts[QcStatus.SUSPECT] + demo.first.status_counts[QcStatus.FAILED]
    assert counts[QcStatus.SUSPECT] + counts[QcStatus.FAILED] == flagged
    assert counts[QcStatus.PASSED] == demo.first.checked - flagged  # never written, derived
    assert counts[QcStatus.NONE] == 0
    with demo.datastore.engine.connect() as connection:
        stored = Counter(dict(connection.execute(sa.text(
            "SELECT qc_status, count(*) FROM observation WHERE value IS NOT NULL GROUP BY 1")).all()))
        run = connection.execute(sa.text("SELECT * FROM qc_run WHERE id = :id"), {"id": demo.first.run_id}).one()
    assert stored[QcStatus.NONE] == demo.first.checked - flagged  # sparse: only flagged rows written
    assert run.status == "finished" and run.requested_by == QC_USER and run.written == demo.first.written
    assert run.tests == [t.value for t in QcTest] and run.threshold_as_of > 0 and run.data_as_of is not None
    assert run.counts["range"]["suspect"] == demo.first.counts[QcTest.RANGE].suspect
    # The archive view derives the same statuses.
    archive = connect_archive(demo.bucket)
    try:
        attach_quality_view(archive, demo.datastore)
        archived = dict(archive.sql(
            "SELECT qc_status, count(*) FROM observation_quality WHERE value IS NOT NULL GROUP BY 1").fetchall())
    finally:
        archive.close()
    assert archived == {k: v for k, v in counts.items() if v}


def test_every_finding_names_its_rule_and_version(demo: DemoStore) -> None:
    with demo.datastore.engine.connect() as connection:
        entries = connection.execute(sa.text(
            "SELECT e.key, e.value FROM observation AS o, jsonb_each(o.result_quality) AS e "
            "WHERE e.key <> 'manual' AND e.key <> 'ingest'")).all()
        thresholds = dict(connection.execute(sa.text("SELECT id, version FROM qc_threshold")).all())
        relations = dict(connection.execute(sa.text("SELECT id, version FROM qc_relation")).all())
        elements = {code for (code,) in connection.execute(sa.text("SELECT code FROM element"))}
    assert {key for key, _ in entries} >= {"range", "step", "persistence", "consistency", "spatial"}
    for key, entry in entries:
        assert entry["result"] in ("suspect", "failed") and entry["flag"] and entry["run"] >= demo.first.run_id
        table, _, rule = entry["rule"].partition(":")
        if table == "element":
            assert rule in elements and "version" not in entry
        else:
            assert entry["version"] == {"qc_threshold": thresholds, "qc_relation": relations}[table][int(rule)]


def key_of(error: dict) -> ObservationKey:
    local_midnight = datetime.fromisoformat(error["time"]).replace(tzinfo=timezone.utc)
    return ObservationKey(station=error["station"], element=error["element"], phenomenon_time=local_midnight)


def test_manual_decisions_survive_re_qc_and_re_ingest_and_are_audited(demo: DemoStore) -> None:
    spike = next(e for e in demo.errors.values() if e["kind"] == "spike" and e["element"] in ("TMAX", "TMIN"))
    swap = next(e for e in demo.errors.values() if e["kind"] == "tmin_gt_tmax")
    flat = next(e for e in demo.errors.values() if e["kind"] == "flat_line")
    decisions = [
        (spike, Decision.CORRECT, "spike confirmed by the observer's notebook", spike["true_value"]),
        (swap, Decision.REJECT, "max and min were swapped on the form", None),
        (flat, Decision.ACCEPT, "checked against the neighbouring station", None),
    ]
    results = [decide(demo.datastore, key_of(error), decision, reason, REVIEWER, corrected_value=value)
               for error, decision, reason, value in decisions]
    assert [(r.qc_status, r.final_flag) for r in results] == [
        (QcStatus.PASSED, FinalFlag.CORRECTED), (QcStatus.FAILED, FinalFlag.REJECTED),
        (QcStatus.PASSED, FinalFlag.VERIFIED)]
    assert results[0].previous_value == spike["recorded_value"] and results[0].value == spike["true_value"]
    assert results[1].value == swap["recorded_value"]  # a rejection keeps the value

    def state(error: dict) -> sa.Row:
        with demo.datastore.engine.connect() as connection:
            return connection.execute(sa.text(
                "SELECT o.value, o.result_quality, o.qc_status, o.final_flag, o.changed_by FROM observation AS o "
                "JOIN station AS s ON s.id = o.station_id JOIN element AS e ON e.id = o.element_id "
                "WHERE s.wigos_id = :s AND e.code = :e AND o.phenomenon_time = :t"),
                {"s": error["station"], "e": error["element"], "t": key_of(error).phenomenon_time}).one()

    decided = [state(error) for error, *_ in decisions]
    manual = decided[0].result_quality["manual"]
    assert manual["decision"] == "correct" and manual["by"] == REVIEWER
    assert manual["original_value"] == spike["recorded_value"] and manual["reason"].startswith("spike confirmed")
    assert "step" in decided[0].result_quality  # the automatic result stays beside the decision
    assert "consistency" in decided[1].result_quality and "persistence" in decided[2].result_quality

    # Re-ingest of the same file is skipped by the ledger; re-QC leaves the decisions alone.
    station_file = next(p for p in demo.dataset.daily_files if p.stem == spike["station"])
    assert ingest(IngestRequest.from_path(station_file), demo.datastore, demo.bucket, LOADER).status is IngestStatus.SKIPPED
    rerun = run_qc(demo.datastore, demo.bucket, user=QC_USER)
    after = [state(error) for error, *_ in decisions]
    for before_decision, after_rerun in zip(decided, after):
        assert after_rerun.result_quality["manual"] == before_decision.result_quality["manual"]
        assert (after_rerun.value, after_rerun.qc_status, after_rerun.final_flag) == (
            before_decision.value, before_decision.qc_status, before_decision.final_flag)
    # The corrected value is no longer a spike: re-QC removed the automatic entry, kept the decision.
    assert "step" not in after[0].result_quality and rerun.written >= 1
    assert "consistency" in after[1].result_quality  # still swapped: still flagged beside the rejection

    # History: who, when and why — and the value before the correction.
    with demo.datastore.engine.connect() as connection:
        history = connection.execute(sa.text(
            "SELECT h.value, h.superseded_by, h.superseded_at, h.reason, h.result_quality FROM observation_history AS h "
            "JOIN station AS s ON s.id = h.station_id JOIN element AS e ON e.id = h.element_id "
            "WHERE s.wigos_id = :s AND e.code = :e AND h.phenomenon_time = :t ORDER BY h.id"),
            {"s": spike["station"], "e": spike["element"], "t": key_of(spike).phenomenon_time}).all()
    by_reviewer = [h for h in history if h.superseded_by == REVIEWER]
    assert len(by_reviewer) == 1
    assert by_reviewer[0].value == spike["recorded_value"]
    assert by_reviewer[0].reason == "manual QC (correct): spike confirmed by the observer's notebook"
    assert by_reviewer[0].superseded_at is not None and "manual" not in by_reviewer[0].result_quality
    qc_changes = [h for h in history if h.superseded_by == QC_USER]
    assert [h.reason for h in qc_changes] == [f"quality control run {demo.first.run_id}",
                                              f"quality control run {rerun.run_id}"]


# --------------------------------------------------------------------------- the real-data-like record


@dataclass
class AirportStore:
    dataset: AirportDataset
    datastore: Datastore
    network_only: QcRunResult
    network_quality: list[sa.Row]
    derived: DerivedThresholds
    with_history: QcRunResult
    history_quality: list[sa.Row]


@pytest.fixture(scope="module")
def airport_dataset(tmp_path_factory: pytest.TempPathFactory) -> AirportDataset:
    return generate_airport_data(tmp_path_factory.mktemp("airport"), AIRPORT)


@pytest.fixture(scope="module", params=["embedded", "external"])
def airport(request: pytest.FixtureRequest, airport_dataset: AirportDataset,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirportStore]:
    server: PostgresServer | None = request.getfixturevalue(f"{request.param}_server")
    if server is None:
        service_missing("no external PostgreSQL for the QC demo tests")
    name = server.new_database()
    home = tmp_path_factory.mktemp(f"airport-{request.param}")
    settings = Settings(home=home, database_url=server.url_of(name), bucket_url=f"file://{home / 'bucket'}")
    datastore = Datastore.open(settings)
    try:
        bucket = open_bucket(settings)
        import_stations(datastore, airport_dataset.stations_csv)
        for path, mapping in ((airport_dataset.daily_file, airport_dataset.daily_mapping),
                              (airport_dataset.hourly_file, airport_dataset.hourly_mapping)):
            result = ingest(IngestRequest.from_path(path, load_mapping(mapping)), datastore, bucket, LOADER)
            assert result.status is IngestStatus.LOADED, result.error
        network_only = run_qc(datastore, bucket, user=QC_USER)
        with datastore.engine.connect() as connection:
            network_quality = connection.execute(QUALITY_SQL).all()
        derived = derive_and_store_thresholds(datastore, bucket, user=QC_USER)
        with_history = run_qc(datastore, bucket, user=QC_USER)
        with datastore.engine.connect() as connection:
            history_quality = connection.execute(QUALITY_SQL).all()
        yield AirportStore(airport_dataset, datastore, network_only, network_quality, derived, with_history, history_quality)
    finally:
        datastore.close()
        server.drop(name)
        shutil.rmtree(home, ignore_errors=True)


def flag_rates(rows: list[sa.Row]) -> dict[int, tuple[int, int]]:
    """(flagged, values) per duration."""
    rates: dict[int, tuple[int, int]] = {}
    for duration in (86400, 3600):
        values = [r for r in rows if r.duration_seconds == duration]
        rates[duration] = (sum(is_flagged(r.qc_status) for r in values), len(values))
    return rates


def test_real_data_like_series_are_not_flagged_as_ordinary_weather(airport: AirportStore) -> None:
    values = airport.dataset.daily_values + airport.dataset.hourly_values
    assert len(airport.history_quality) == len(airport.network_quality) == values
    print(f"\nQC on the airport record ({AIRPORT.years} years daily in whole °F, {AIRPORT.hourly_years} years "
          f"hourly in whole °F and hPa, {values:,} values, no errors):")
    for label, rows in (("network rules only", airport.network_quality),
                        ("thresholds from its own history", airport.history_quality)):
        flagged = [r for r in rows if is_flagged(r.qc_status)]
        by_test = Counter((r.code, r.duration_seconds, ",".join(sorted(set(r.result_quality) - {"ingest"})))
                          for r in flagged)
        parts = ", ".join(f"{'daily' if d == 86400 else 'hourly'} {f}/{n:,} = {f / n:.4%}"
                          for d, (f, n) in flag_rates(rows).items())
        print(f"  {label}: {len(flagged)}/{len(rows):,} = {len(flagged) / len(rows):.4%} ({parts})  {dict(by_test)}")
    flagged = sum(is_flagged(r.qc_status) for r in airport.history_quality)
    assert flagged / values <= MAX_AIRPORT_FALSE_POSITIVE_RATE
    for duration, (found, total) in flag_rates(airport.history_quality).items():
        assert found / total <= MAX_AIRPORT_FALSE_POSITIVE_RATE, duration
    assert airport.derived.too_short == 0
    assert airport.with_history.counts[QcTest.STEP].thresholds == {"station": airport.with_history.counts[QcTest.STEP].tested}
    # Whole-hPa and whole-°F runs are judged at their resolution, with the other elements in
    # view, even under the network's rules: the hourly file is not flagged for persistence.
    hourly_runs = [r for r in airport.network_quality if r.duration_seconds == 3600 and "persistence" in r.result_quality]
    assert len(hourly_runs) <= MAX_AIRPORT_FALSE_POSITIVE_RATE * airport.dataset.hourly_values


def test_a_network_threshold_says_why_the_stations_own_did_not_apply(airport: AirportStore) -> None:
    # Under the network's rules (made for a tropical network), the airport's ordinary fronts
    # exceed the network's 8 K step; each such entry names its level and why.
    steps = [r.result_quality["step"] for r in airport.network_quality if "step" in r.result_quality]
    assert steps and all(e["threshold"] == "network" for e in steps)
    assert all(e["fallback"].startswith("no station threshold derived yet (") for e in steps)
    assert airport.network_only.counts[QcTest.STEP].thresholds == {"network": airport.network_only.counts[QcTest.STEP].tested}
    with airport.datastore.engine.connect() as connection:
        fallbacks = connection.execute(sa.text("SELECT fallbacks FROM qc_run WHERE id = :id"),
                                       {"id": airport.network_only.run_id}).scalar_one()
        after = connection.execute(sa.text("SELECT fallbacks FROM qc_run WHERE id = :id"),
                                   {"id": airport.with_history.run_id}).scalar_one()
    assert {(f["test"], f["element"], f["reason"]) for f in fallbacks} >= {
        ("step", "TMAX", "no station threshold derived yet"), ("persistence", "PRES", "no station threshold derived yet")}
    # With its history, only elements no derivation covers (wind: range) keep a fallback.
    assert {(f["test"], f["element"], f["threshold"], f["reason"]) for f in after} == {
        ("range", code, "global", "no station threshold") for code in ("WSPD", "WDIR")}
