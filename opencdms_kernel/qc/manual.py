"""Manual QC decisions: accept, reject or correct one value, with a reason, audited.

The decision is the ``manual`` entry of ``result_quality`` (decision, reason, by, at, and for a
correction the original value); the automatic entries stay beside it, and re-QC never touches
it — the derived status follows it (accept, correct: passed; reject: failed).  The update goes
through the observation triggers, so ``observation_history`` keeps the previous row with who
(``superseded_by``), when (``superseded_at``) and why (``reason``); a correction's old value is
there too.  QC itself never changes a value: only a person's correction does.  :func:`decide_many` records
one decision on several values in one transaction (all or none), each audited the same way.

A decision records the source value it was made on (``source_value``).  A later ingest never
overrides the decision: when the source delivers another value, the ingest keeps it beside the
decision as ``manual.source_changed`` and :func:`source_changes` lists the row for review; the
next decision on the row is made on that new source value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest.load import identify_writer
from opencdms_kernel.qc.model import (
    Decision,
    FinalFlag,
    ObservationKey,
    ObservationNotFoundError,
    QcParameterError,
    QcStatus,
    UnknownQcReferenceError,
)


@dataclass(frozen=True)
class DecisionResult:
    """The observation after a decision."""

    key: ObservationKey
    decision: Decision
    previous_value: float | None
    value: float | None
    qc_status: QcStatus
    final_flag: FinalFlag
    version: int


_FIND_SQL = sa.text(
    """
    SELECT o.station_id, o.element_id, o.source_id, src.name AS source, o.value, o.version,
           o.result_quality -> 'manual' AS manual
    FROM observation AS o JOIN source AS src ON src.id = o.source_id
    WHERE o.station_id = :station_id AND o.element_id = :element_id
      AND o.phenomenon_time = :phenomenon_time AND o.duration_seconds = :duration_seconds
      AND o.level = :level AND o.status = 'latest'
      AND (CAST(:source_id AS smallint) IS NULL OR o.source_id = :source_id)
    ORDER BY o.source_id
    FOR UPDATE OF o
    """
)

_DECIDE_SQL = sa.text(
    """
    UPDATE observation AS o
    SET value = :value,
        result_quality = n.result_quality,
        qc_status = qc_status_of(n.result_quality, true),
        final_flag = qc_final_flag_of(n.result_quality, true)
    FROM (SELECT o2.result_quality
                 || jsonb_build_object('manual', CAST(:entry AS jsonb) || jsonb_build_object('at', now()))
                 AS result_quality
          FROM observation AS o2
          WHERE o2.station_id = :station_id AND o2.element_id = :element_id
            AND o2.phenomenon_time = :phenomenon_time AND o2.duration_seconds = :duration_seconds
            AND o2.level = :level AND o2.source_id = :source_id) AS n
    WHERE o.station_id = :station_id AND o.element_id = :element_id
      AND o.phenomenon_time = :phenomenon_time AND o.duration_seconds = :duration_seconds
      AND o.level = :level AND o.source_id = :source_id
    RETURNING o.value, o.qc_status, o.final_flag, o.version
    """
)


def check_decision(decision: Decision | str, reason: str, user: str,
                   corrected_value: float | None = None) -> Decision:
    """The decision, if it can be recorded as given (a reason, who, a value only for a
    correction); else :class:`QcParameterError` naming the parameter.  Apps call it before
    asking a person to confirm; :func:`decide` and :func:`decide_many` call it again."""
    try:
        chosen = Decision(str(decision).strip().lower())
    except ValueError:
        raise QcParameterError(
            "decision", f"{decision!r} is not one of {', '.join(d.value for d in Decision)}"
        ) from None
    if not isinstance(reason, str) or not reason.strip():
        raise QcParameterError("reason", "a manual decision needs a reason")
    if not isinstance(user, str) or not user.strip():
        raise QcParameterError("user", "a manual decision needs the name of who made it")
    if chosen is Decision.CORRECT:
        if corrected_value is None or not math.isfinite(corrected_value):
            raise QcParameterError("corrected_value", "a correction needs the corrected value (a finite number)")
    elif corrected_value is not None:
        raise QcParameterError("corrected_value", f"only a correction takes a value, not {chosen.value}")
    return chosen


def _check(decision: Decision | str, reason: str, user: str, corrected_value: float | None,
           key: ObservationKey, parameter: str = "key") -> Decision:
    chosen = check_decision(decision, reason, user, corrected_value)
    if key.phenomenon_time.tzinfo is None:
        raise QcParameterError(f"{parameter}.phenomenon_time", "give the time with its time zone (e.g. UTC)")
    return chosen


def decide(
    datastore: Datastore,
    key: ObservationKey,
    decision: Decision | str,
    reason: str,
    user: str,
    corrected_value: float | None = None,
) -> DecisionResult:
    """Record a person's decision on the observation ``key`` (one transaction, audited).

    A new decision replaces the previous ``manual`` entry (the history keeps it); a
    correction's ``original_value`` is the value before the first correction.
    """
    chosen = _check(decision, reason, user, corrected_value, key)
    with datastore.engine.begin() as connection:
        return _decide_in(connection, key, chosen, reason, user, corrected_value)


def decide_many(
    datastore: Datastore,
    keys: Sequence[ObservationKey],
    decision: Decision | str,
    reason: str,
    user: str,
    corrected_value: float | None = None,
) -> list[DecisionResult]:
    """The same decision, with one reason, on every observation of ``keys``, in one
    transaction: all are recorded (each audited as :func:`decide` does) or none is."""
    if not keys:
        raise QcParameterError("keys", "choose at least one value to decide on")
    if len(set(keys)) != len(keys):
        raise QcParameterError("keys", "the same value is chosen twice")
    chosen = check_decision(decision, reason, user, corrected_value)
    for index, key in enumerate(keys):
        _check(chosen, reason, user, corrected_value, key, f"keys[{index}]")
    with datastore.engine.begin() as connection:
        return [_decide_in(connection, key, chosen, reason, user, corrected_value) for key in keys]


def _decide_in(connection: sa.Connection, key: ObservationKey, chosen: Decision, reason: str, user: str,
               corrected_value: float | None) -> DecisionResult:
    """One decision in the caller's transaction."""
    identify_writer(connection, user.strip(), f"manual QC ({chosen.value}): {reason.strip()}")
    station_id = connection.execute(
        sa.text("SELECT id FROM station WHERE wigos_id = :w"), {"w": key.station}).scalar_one_or_none()
    if station_id is None:
        raise UnknownQcReferenceError("key.station", "station", (key.station,))
    element = connection.execute(
        sa.text("SELECT id, code, units, valid_min, valid_max FROM element WHERE code = :c"),
        {"c": key.element}).one_or_none()
    if element is None:
        raise UnknownQcReferenceError("key.element", "element", (key.element,))
    source_id = None
    if key.source is not None:
        source_id = connection.execute(
            sa.text("SELECT id FROM source WHERE name = :n"), {"n": key.source}).scalar_one_or_none()
        if source_id is None:
            raise UnknownQcReferenceError("key.source", "source", (key.source,))
    if chosen is Decision.CORRECT and not (
        (element.valid_min is None or corrected_value >= element.valid_min)
        and (element.valid_max is None or corrected_value <= element.valid_max)
    ):
        raise QcParameterError(
            "corrected_value",
            f"{corrected_value} {element.units} is outside the physical range of {element.code} "
            f"({element.valid_min}..{element.valid_max} {element.units})",
        )
    where = {
        "station_id": station_id, "element_id": element.id, "phenomenon_time": key.phenomenon_time,
        "duration_seconds": key.duration_seconds, "level": key.level, "source_id": source_id,
    }
    found = connection.execute(_FIND_SQL, where).all()
    if not found:
        raise ObservationNotFoundError(
            f"no observation of {key.element} at station {key.station} at "
            f"{key.phenomenon_time.isoformat()} (duration {key.duration_seconds} s, level {key.level}"
            + (f", source {key.source})" if key.source else ")")
        )
    if len(found) > 1:
        names = ", ".join(row.source for row in found)
        raise QcParameterError("key.source", f"several sources have this value ({names}); name one")
    row = found[0]
    previous = row.manual or {}
    changed = previous.get("source_changed")
    # The value this decision is made on: a newly delivered source value, if there is one.
    current = changed["value"] if changed else row.value
    if current is None and chosen is not Decision.CORRECT:
        raise QcParameterError("decision", f"the value is missing; it can be corrected, not {chosen.value}ed")
    source = changed["value"] if changed else previous.get(
        "source_value", previous.get("original_value", row.value))
    entry: dict[str, object] = {"decision": chosen.value, "reason": reason.strip(), "by": user.strip(),
                                "source_value": source}
    if "original_value" in previous and not changed:
        entry["original_value"] = previous["original_value"]
    elif chosen is Decision.CORRECT:
        entry["original_value"] = current
    new_value = corrected_value if chosen is Decision.CORRECT else current
    result = connection.execute(_DECIDE_SQL, {
        **where, "source_id": row.source_id, "value": new_value, "entry": json.dumps(entry),
    }).one()
    return DecisionResult(
        key=key,
        decision=chosen,
        previous_value=row.value,
        value=result.value,
        qc_status=QcStatus(result.qc_status),
        final_flag=FinalFlag(result.final_flag),
        version=result.version,
    )


@dataclass(frozen=True)
class SourceChange:
    """A decided value whose source has since delivered another value: to be reviewed."""

    station: str
    element: str
    phenomenon_time: datetime
    duration_seconds: int
    source: str
    decision: Decision
    value: float | None
    source_value: float | None
    new_source_value: float | None
    ingest_id: int | None
    delivered_at: str | None


_SOURCE_CHANGES_SQL = sa.text(
    """
    SELECT s.wigos_id, e.code, o.phenomenon_time, o.duration_seconds, src.name AS source, o.value,
           o.result_quality -> 'manual' AS manual
    FROM observation AS o
    JOIN station AS s ON s.id = o.station_id
    JOIN element AS e ON e.id = o.element_id
    JOIN source AS src ON src.id = o.source_id
    WHERE o.status = 'latest' AND o.result_quality -> 'manual' ? 'source_changed'
    ORDER BY s.wigos_id, e.code, o.phenomenon_time
    LIMIT :limit
    """
)


def source_changes(datastore: Datastore, limit: int = 1000) -> list[SourceChange]:
    """Decided values whose source delivered another value since the decision, oldest key first."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(_SOURCE_CHANGES_SQL, {"limit": limit}).all()
    changes = []
    for row in rows:
        manual = row.manual
        changed = manual["source_changed"]
        changes.append(SourceChange(
            station=row.wigos_id, element=row.code, phenomenon_time=row.phenomenon_time,
            duration_seconds=row.duration_seconds, source=row.source, decision=Decision(manual["decision"]),
            value=row.value, source_value=manual.get("source_value", manual.get("original_value")),
            new_source_value=changed.get("value"), ingest_id=changed.get("ingest_id"),
            delivered_at=changed.get("at"),
        ))
    return changes
