"""Station metadata audited like observations: every change and removal keeps the row before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

- ``station_history``: append-only (the same statement trigger as ``observation_history``
  refuses UPDATE, DELETE and TRUNCATE).  One entry per station row an UPDATE or DELETE
  superseded: the whole old row as ``old_row`` (jsonb, so that a later column needs no change
  here), who superseded it (``opencdms.user``, else the login) and as which database role, and
  why (``opencdms.reason``).  Written by a SECURITY DEFINER statement trigger, so that roles which
  may edit stations (the API's transactions, imports) need no right on the history.
- An UPDATE that changes nothing is dropped before the audit sees it
  (``suppress_redundant_updates_trigger``), as on ``observation``.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE station_history (
    id                 bigserial PRIMARY KEY,
    operation          text NOT NULL CHECK (operation IN ('UPDATE', 'DELETE')),
    station_id         integer NOT NULL,
    wigos_id           text NOT NULL,
    old_row            jsonb NOT NULL,
    superseded_at      timestamptz NOT NULL DEFAULT now(),
    superseded_by      text NOT NULL,
    superseded_by_role text NOT NULL,
    reason             text
);
CREATE INDEX station_history_station ON station_history (station_id, superseded_at);

CREATE FUNCTION station_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'public.station'::regclass THEN
        RAISE insufficient_privilege
            USING MESSAGE = format('station_audit() audits public.station only, not %s', TG_RELID::regclass);
    END IF;
    INSERT INTO station_history (operation, station_id, wigos_id, old_row, superseded_by,
                                 superseded_by_role, reason)
    SELECT TG_OP, o.id, o.wigos_id, to_jsonb(o), opencdms_writer(), session_user,
           nullif(current_setting('opencdms.reason', true), '')
    FROM old_rows AS o;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION station_audit() FROM PUBLIC;

CREATE TRIGGER station_0_skip_unchanged BEFORE UPDATE ON station
    FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
CREATE TRIGGER station_audit_update AFTER UPDATE ON station
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION station_audit();
CREATE TRIGGER station_audit_delete AFTER DELETE ON station
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION station_audit();
CREATE TRIGGER station_history_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON station_history
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_statement(
        'the audit trail is append-only; entries are never changed or removed');
"""

DOWNGRADE = """
DROP TRIGGER station_audit_delete ON station;
DROP TRIGGER station_audit_update ON station;
DROP TRIGGER station_0_skip_unchanged ON station;
DROP FUNCTION station_audit();
DROP TABLE station_history;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
