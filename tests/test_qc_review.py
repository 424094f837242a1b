"""The QC review's queries and decisions (opencdms_kernel/qc/review.py) on the explorer's seeded
network (tests/support/network.py ``build_network``), on both PostgreSQL setups: flagged values
with their tests and the exact rules that judged them, filters, a value in context (its
series, the neighbours the spatial rule in force reaches, the station's normal), single and
bulk decisions (a reason required, all or none, audited), and the values whose source changed
since a decision.

Tests that decide touch only their own values; the module's fixture builds the network once.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from api_support import STATION_A, STATION_B, STATION_C, STATION_FAR
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.qc import (
    Decision,
    FinalFlag,
    ObservationNotFoundError,
    QcParameterError,
    QcStatus,
    QcTest,
    Threshold,
    UnknownQcReferenceError,
    add_thresholds,
)
from opencdms_kernel.qc.manual import check_decision
from opencdms_kernel.qc.manual import decide_many
from opencdms_kernel.qc.review import items_table, review_items, source_change_table, value_context
from support.network import DOUBT_DAY, SPIKE_DAY, SWAP_DAY, Network, key, network_on

REVIEWER = "reviewer-quinn"


@pytest.fixture(scope="module", params=["embedded", "external"])
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with network_on(request, request.param, tmp_path_factory.mktemp(f"review-{request.param}")) as built:
        yield built


def history(network: Network, element: str, day: datetime, station: str = STATION_A) -> list[sa.Row]:
    with network.datastore.engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT h.value, h.superseded_by, h.reason FROM observation_history AS h "
            "JOIN station AS s ON s.id = h.station_id JOIN element AS e ON e.id = h.element_id "
            "WHERE s.wigos_id = :s AND e.code = :e AND h.phenomenon_time = :t ORDER BY h.id"),
            {"s": station, "e": element, "t": day}).all()


def state(network: Network, element: str, day: datetime) -> sa.Row:
    with network.datastore.engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT o.value, o.qc_status, o.final_flag, o.version FROM observation AS o "
            "JOIN station AS s ON s.id = o.station_id JOIN element AS e ON e.id = o.element_id "
            "WHERE s.wigos_id = :s AND e.code = :e AND o.phenomenon_time = :t"),
            {"s": STATION_A, "e": element, "t": day}).one()


def test_flagged_values_come_with_their_tests_and_the_rules_that_judged_them(network: Network) -> None:
    found = review_items(network.datastore, start=date(2020, 1, 1), end=date(2020, 12, 31))
    assert found.total == 4
    keys = [(item.key.element, item.key.phenomenon_time, item.qc_status) for item in found.items]
    assert keys == [("TMAX", SPIKE_DAY, QcStatus.FAILED), ("TMAX", SWAP_DAY, QcStatus.FAILED),
                    ("TMIN", SWAP_DAY, QcStatus.FAILED), ("TMAX", DOUBT_DAY, QcStatus.SUSPECT)]  # failed first
    spike = found.items[0]
    assert spike.value == 45.0 and spike.final_flag is FinalFlag.BAD and spike.decision is None
    (result,) = spike.results
    assert (result.test, result.result, result.flag, result.level) == ("range", "failed", "above_range", "station")
    assert result.rule_text.startswith("range rule ") and result.version == 1
    assert f"station {STATION_A}, month 1, any duration): low 10, high 42; failed" in result.rule_text
    assert result.details == {"low": 10.0, "high": 42.0}
    swap = found.items[1].results[0]
    assert swap.test == "consistency" and "relation" in swap.rule_text and "TMIN <= TMAX" in swap.rule_text
    doubt = found.items[3].results[0]
    assert "month 2" in doubt.rule_text and doubt.rule_text.endswith("; suspect")

    table = items_table(found.items)
    assert list(table["status"]) == ["failed", "failed", "failed", "suspect"]
    assert table.loc[0, "tests"] == "range: above_range (failed)" and "high 42" in table.loc[0, "rules"]
    assert table.loc[0, "id"] == f"{STATION_A}|TMAX|2020-01-10T00:00:00Z|86400|0|api-tests"
    assert found.by_id(table.loc[0, "id"]) == spike


def test_the_filters_choose_station_element_period_and_status(network: Network) -> None:
    def listed(**filters: object) -> list[tuple[str, datetime]]:
        return [(i.key.element, i.key.phenomenon_time) for i in review_items(network.datastore, **filters).items]

    assert listed(elements=["TMIN"]) == [("TMIN", SWAP_DAY)]
    assert listed(statuses=["suspect"], stations=[STATION_A]) == [("TMAX", DOUBT_DAY)]
    assert listed(start=date(2020, 2, 15), end=date(2020, 2, 29)) == [("TMAX", DOUBT_DAY)]
    assert listed(stations=[STATION_B, STATION_C]) == [] and listed(stations=[]) != []  # none chosen: all
    limited = review_items(network.datastore, limit=1, end=date(2020, 2, 29))
    assert len(limited.items) == 1 and limited.total >= 4

    with pytest.raises(QcParameterError, match="parameter 'statuses'"):
        review_items(network.datastore, statuses=["passed"])
    with pytest.raises(QcParameterError, match="parameter 'end'"):
        review_items(network.datastore, start=date(2020, 2, 1), end=date(2020, 1, 1))
    with pytest.raises(UnknownQcReferenceError, match="stations: unknown station '0-20000-0-69999'"):
        review_items(network.datastore, stations=["0-20000-0-69999"])
    with pytest.raises(UnknownQcReferenceError, match="elements"):
        review_items(network.datastore, elements=["TMAXX"])


def test_a_value_in_context_with_its_neighbours_and_normal(network: Network) -> None:
    context = value_context(network.catalog, key(SPIKE_DAY))
    assert context.value == 45.0 and context.units == "degC" and context.month == 1
    assert len(context.series) == 31 and context.series["time"].is_monotonic_increasing
    assert context.series.set_index("time").loc[pd.Timestamp(SPIKE_DAY), "mark"] == "failed"
    # The network's spatial rule for daily TMAX reaches 150 km: B and C, not FAR.
    assert list(context.stations["wigos_id"]) == [STATION_B, STATION_C] and context.radius_km == 150.0
    assert context.neighbour_rule.startswith("stations within 150 km (spatial rule qc_threshold:")
    assert context.stations["km"].iloc[0] == pytest.approx(6.0, abs=0.5)
    # Their records start on 2020-01-01: 25 of the 31 days each.
    assert set(context.neighbours["wigos_id"]) == {STATION_B, STATION_C} and len(context.neighbours) == 50
    assert context.normal is not None and context.normal_value == context.normal.of_month(1)
    assert 25.0 < context.normal_value < 40.0

    # The rule the check itself would use: a station rule of 10 km reaches B alone.
    add_thresholds(network.datastore, [Threshold(QcTest.SPATIAL, "TMAX", station=STATION_A, radius_km=10.0,
                                                 min_neighbours=1, max_z=5.0)], user="c", reason="dense pair")
    near = value_context(network.catalog, key(SPIKE_DAY), days=3)
    assert list(near.stations["wigos_id"]) == [STATION_B] and near.radius_km == 10.0 and len(near.series) == 7
    # A station without a spatial rule's reach, or a normal: the nearest stations, no normal.
    bravo = value_context(network.catalog, key(datetime(2020, 6, 1, tzinfo=timezone.utc), station=STATION_B))
    assert bravo.normal is not None and bravo.normal.given == 0 and bravo.normal_value is None
    with pytest.raises(ObservationNotFoundError):
        value_context(network.catalog, key(datetime(2020, 6, 1, tzinfo=timezone.utc), station=STATION_FAR))
    with pytest.raises(QcParameterError, match="parameter 'days'"):
        value_context(network.catalog, key(SPIKE_DAY), days=0)


def test_one_decision_needs_a_reason_and_is_audited(network: Network) -> None:
    day = datetime(2020, 1, 25, tzinfo=timezone.utc)  # a value of its own: no other test looks at it
    before = state(network, "TMAX", day)
    for reason in ("", "   "):
        with pytest.raises(QcParameterError, match="parameter 'reason': a manual decision needs a reason"):
            decide_many(network.datastore, [key(day)], "reject", reason, REVIEWER)
    with pytest.raises(QcParameterError, match="parameter 'corrected_value'"):
        check_decision("correct", "typo on the form", REVIEWER)
    assert state(network, "TMAX", day) == before and history(network, "TMAX", day) == []

    (result,) = decide_many(network.datastore, [key(day)], "reject", "observer wrote 3 for 8", REVIEWER)
    assert (result.qc_status, result.final_flag, result.version) == (QcStatus.FAILED, FinalFlag.REJECTED,
                                                                     before.version + 1)
    (entry,) = history(network, "TMAX", day)
    assert (entry.value, entry.superseded_by, entry.reason) == (
        before.value, REVIEWER, "manual QC (reject): observer wrote 3 for 8")
    # Decided values leave the list, unless asked for; their decision comes with them.
    assert all(item.key.phenomenon_time != day for item in review_items(network.datastore).items)
    decided = [item for item in review_items(network.datastore, include_decided=True, start=day.date(),
                                             end=day.date()).items]
    assert [(i.decision.decision, i.decision.by, i.decision.reason) for i in decided] == [
        (Decision.REJECT, REVIEWER, "observer wrote 3 for 8")]

    (corrected,) = decide_many(network.datastore, [key(day)], "correct", "read again from the form", REVIEWER,
                                corrected_value=31.5)
    assert corrected.value == 31.5 and corrected.final_flag is FinalFlag.CORRECTED


def test_bulk_decisions_are_all_or_none_and_each_audited(network: Network) -> None:
    keys = [key(SWAP_DAY, "TMAX"), key(SWAP_DAY, "TMIN")]
    missing = key(datetime(1980, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ObservationNotFoundError):
        decide_many(network.datastore, [*keys, missing], "accept", "checked", REVIEWER)
    assert [state(network, k.element, SWAP_DAY).final_flag for k in keys] == ["bad", "bad"]  # none written
    with pytest.raises(QcParameterError, match="parameter 'keys'"):
        decide_many(network.datastore, [keys[0], keys[0]], "accept", "checked", REVIEWER)
    with pytest.raises(QcParameterError, match="parameter 'reason'"):
        decide_many(network.datastore, keys, "reject", "", REVIEWER)

    results = decide_many(network.datastore, keys, "reject", "max and min swapped on the form", REVIEWER)
    assert [(r.key.element, r.final_flag) for r in results] == [("TMAX", FinalFlag.REJECTED),
                                                                 ("TMIN", FinalFlag.REJECTED)]
    for k in keys:
        assert [(h.superseded_by, h.reason) for h in history(network, k.element, SWAP_DAY)][-1] == (
            REVIEWER, "manual QC (reject): max and min swapped on the form")
    assert not {(i.key.element, i.key.phenomenon_time) for i in review_items(network.datastore).items} & {
        ("TMAX", SWAP_DAY), ("TMIN", SWAP_DAY)}


def test_values_whose_source_changed_since_the_decision_are_listed(network: Network) -> None:
    def deliver(value: float) -> None:
        text = (f"station,element,time,value\n{STATION_FAR},TMAX,2021-01-01,20.5\n"
                f"{STATION_FAR},TMAX,2021-01-02,{value}\n")
        result = ingest(IngestRequest.from_bytes("incoming/far.csv", text.encode()), network.datastore,
                        network.bucket, "loader")
        assert result.status is IngestStatus.LOADED, result.error

    assert source_change_table(network.datastore).empty
    deliver(21.0)
    day = datetime(2021, 1, 2, tzinfo=timezone.utc)
    decide_many(network.datastore, [key(day, station=STATION_FAR)], "correct", "transposed digits", REVIEWER,
                 corrected_value=12.0)
    deliver(21.4)
    table = source_change_table(network.datastore)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["station"], row["element"], row["time (UTC)"], row["decision"]) == (
        STATION_FAR, "TMAX", "2021-01-02 00:00", "correct")
    assert (row["value"], row["decided on"], row["new source value"]) == (12.0, 21.0, 21.4)
