"""Undo a load: put back what one ingest changed, audited, or refuse when that is no longer safe.

A load's rows carry its ledger id (``observation.ingest_id``) and its transaction time
(``ingest_ledger.loaded_at``, which is also the ``changed_at`` of its rows and the
``superseded_at`` of the versions it replaced).  Reverting restores each row the load updated
to the version it replaced, and marks each row it inserted as deleted (nothing is removed) —
all in one transaction, through the audit triggers.  If anything changed one of those rows
after the load (a later ingest, QC flags, a person's decision), the revert is refused with how
many rows and one example: undoing the load would silently undo that later change too.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import ConflictError, NotFoundError
from opencdms_kernel.ingest.load import identify_writer, lock_ingest


class RevertError(ConflictError):
    """A load cannot be reverted (now); says why."""

    def __init__(self, ledger_id: int, reason: str) -> None:
        self.ledger_id = ledger_id
        super().__init__(f"ingest {ledger_id} cannot be reverted: {reason}")


@dataclass(frozen=True)
class RevertResult:
    """What a revert put back."""

    ledger_id: int
    object_key: str
    restored: int  # rows back at the version the load replaced
    deleted: int  # rows the load had inserted, now marked deleted


_LEDGER_SQL = sa.text(
    "SELECT object_key, status, loaded_at FROM ingest_ledger WHERE id = :ledger_id FOR UPDATE"
)

# Rows the load wrote that someone changed since, or versions it wrote that were superseded later.
_LATER_CHANGES_SQL = sa.text(
    """
    SELECT count(DISTINCT (c.station_id, c.element_id, c.phenomenon_time)) AS rows,
           min(w.wigos_id || ' ' || e.code || ' ' || c.phenomenon_time::text) AS example
    FROM (
        SELECT station_id, element_id, phenomenon_time FROM observation
        WHERE ingest_id = :ledger_id AND changed_at > :loaded_at
        UNION ALL
        SELECT station_id, element_id, phenomenon_time FROM observation_history
        WHERE ingest_id = :ledger_id AND superseded_at > :loaded_at
    ) AS c
    JOIN station AS w ON w.id = c.station_id JOIN element AS e ON e.id = c.element_id
    """
)

_RESTORE_SQL = sa.text(
    """
    UPDATE observation AS o
    SET value = h.value, result_quality = h.result_quality, qc_status = h.qc_status,
        final_flag = h.final_flag, status = h.status, comment = h.comment, ingest_id = h.ingest_id
    FROM observation_history AS h
    WHERE o.ingest_id = :ledger_id AND o.changed_at = :loaded_at
      AND h.superseded_at = :loaded_at AND h.version = o.version - 1
      AND h.station_id = o.station_id AND h.element_id = o.element_id
      AND h.phenomenon_time = o.phenomenon_time AND h.duration_seconds = o.duration_seconds
      AND h.level = o.level AND h.source_id = o.source_id
    """
)

# What is left of the load's rows after the restore are the ones it inserted.
_DELETE_INSERTED_SQL = sa.text(
    """
    UPDATE observation SET status = 'deleted'
    WHERE ingest_id = :ledger_id AND changed_at = :loaded_at AND status = 'latest'
    """
)


def revert_load(datastore: Datastore, ledger_id: int, user: str) -> RevertResult:
    """Put back what the load ``ledger_id`` changed (one transaction, audited)."""
    with datastore.engine.begin() as connection:
        lock_ingest(connection)
        ledger = connection.execute(_LEDGER_SQL, {"ledger_id": ledger_id}).one_or_none()
        if ledger is None:
            raise NotFoundError(f"there is no ingest {ledger_id} in the ledger (see opencdms ingest ledger)")
        if ledger.status != "loaded":
            raise RevertError(ledger_id, f"its status is {ledger.status}; only a loaded file can be reverted")
        if ledger.loaded_at is None:
            raise RevertError(ledger_id, "it was loaded before loads recorded what they changed")
        where = {"ledger_id": ledger_id, "loaded_at": ledger.loaded_at}
        later = connection.execute(_LATER_CHANGES_SQL, where).one()
        if later.rows:
            raise RevertError(
                ledger_id,
                f"{later.rows} of the values it loaded were changed afterwards (e.g. {later.example}: a "
                "later ingest, QC flags or a person's decision); reverting would undo those changes too",
            )
        identify_writer(connection, user, reason=f"revert of ingest {ledger_id} ({ledger.object_key})")
        restored = connection.execute(_RESTORE_SQL, where).rowcount
        deleted = connection.execute(_DELETE_INSERTED_SQL, where).rowcount
        connection.execute(
            sa.text("UPDATE ingest_ledger SET status = 'reverted', reverted_at = now(), reverted_by = :user "
                    "WHERE id = :ledger_id"),
            {"ledger_id": ledger_id, "user": user},
        )
    return RevertResult(ledger_id, ledger.object_key, restored=restored, deleted=deleted)

