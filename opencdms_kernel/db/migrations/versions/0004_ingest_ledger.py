"""Ingest you can trust: which load delivered each value, interrupted and reverted loads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

- ``observation.ingest_id`` / ``observation_history.ingest_id``: the ledger entry whose load
  delivered that version (NULL for other writers), the basis of ``opencdms ingest revert``.
- ``ingest_ledger``: ``mapping_digest`` (the same bytes under another mapping are another
  load), ``load_uid`` (reject report keys stay unique even when a restore reuses ids),
  ``loaded_at`` (the load's transaction time, which its rows and history carry), ``warnings``
  (what the reader left out), ``reverted_at``/``reverted_by``; statuses ``interrupted`` (the
  load's process, connection or server died; see ingest/pipeline.py) and ``reverted``.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE observation ADD COLUMN ingest_id bigint;
ALTER TABLE observation_history ADD COLUMN ingest_id bigint;

ALTER TABLE ingest_ledger
    ADD COLUMN mapping_digest text,
    ADD COLUMN load_uid uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN loaded_at timestamptz,
    ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN reverted_at timestamptz,
    ADD COLUMN reverted_by text,
    DROP CONSTRAINT ingest_ledger_status_check,
    ADD CONSTRAINT ingest_ledger_status_check
        CHECK (status IN ('loading', 'loaded', 'failed', 'skipped', 'interrupted', 'reverted'));
CREATE INDEX ingest_ledger_loading ON ingest_ledger (id) WHERE status = 'loading';
"""

DOWNGRADE = """
DROP INDEX ingest_ledger_loading;
UPDATE ingest_ledger SET status = 'failed' WHERE status IN ('interrupted', 'reverted');
ALTER TABLE ingest_ledger
    DROP CONSTRAINT ingest_ledger_status_check,
    ADD CONSTRAINT ingest_ledger_status_check
        CHECK (status IN ('loading', 'loaded', 'failed', 'skipped')),
    DROP COLUMN reverted_by, DROP COLUMN reverted_at, DROP COLUMN warnings,
    DROP COLUMN loaded_at, DROP COLUMN load_uid, DROP COLUMN mapping_digest;
ALTER TABLE observation_history DROP COLUMN ingest_id;
ALTER TABLE observation DROP COLUMN ingest_id;
"""

# observation_audit() as 0003 made it (SECURITY DEFINER, the role that logged in), plus the
# version's ingest_id; the downgrade puts back 0003's body.
_AUDIT = """
CREATE OR REPLACE FUNCTION observation_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'public.observation'::regclass THEN
        RAISE insufficient_privilege
            USING MESSAGE = format('observation_audit() audits public.observation only, not %s',
                                   TG_RELID::regclass);
    END IF;
    INSERT INTO observation_history (
        operation, station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
        value, result_quality, qc_status, final_flag, version, status, changed_at, changed_by,
        comment, superseded_by, superseded_by_role, reason{extra_columns})
    SELECT TG_OP, o.station_id, o.element_id, o.phenomenon_time, o.duration_seconds, o.level,
           o.source_id, o.value, o.result_quality, o.qc_status, o.final_flag, o.version,
           o.status, o.changed_at, o.changed_by, o.comment, opencdms_writer(), session_user,
           nullif(current_setting('opencdms.reason', true), ''){extra_values}
    FROM old_rows AS o;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION observation_audit() FROM PUBLIC;
"""
AUDIT_WITH_INGEST_ID = _AUDIT.format(extra_columns=", ingest_id", extra_values=", o.ingest_id")
AUDIT_BEFORE = _AUDIT.format(extra_columns="", extra_values="")


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(AUDIT_WITH_INGEST_ID)


def downgrade() -> None:
    op.execute(AUDIT_BEFORE)
    op.execute(DOWNGRADE)
