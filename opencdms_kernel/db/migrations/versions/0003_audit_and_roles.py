"""An audit nobody can rewrite: append-only history, physical ranges for every writer, no-op
updates skipped, the database role recorded, and the record of the installation's roles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

- ``observation_history`` refuses UPDATE, DELETE and TRUNCATE (a statement trigger, for every
  role); the history is written only by ``observation_audit()``, which now runs as the schema
  owner (SECURITY DEFINER), so the application role needs no INSERT on it and cannot forge
  entries.  Each entry records ``superseded_by_role``, the role that logged in.
- ``TRUNCATE observation`` is refused: it removes rows without firing the audit triggers.
- An UPDATE that changes nothing is skipped before any other trigger (no history, no version).
- Each element's physical range (``element.valid_min``/``valid_max``) is checked once per
  statement from the transition table, on INSERT and UPDATE, for every writer; narrowing a
  range is refused while stored values lie outside the new one.
- ``database_role`` records the names of the installation's roles (created by
  ``opencdms_kernel.db.roles`` when ``migrate.upgrade`` runs): a database cloned from this one
  keeps using the roles its grants name.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = """
-- NULL only in entries written before this migration; the NOT VALID check holds every new
-- entry to it without pretending to know who wrote the old ones.
ALTER TABLE observation_history ADD COLUMN superseded_by_role text;
ALTER TABLE observation_history ADD CONSTRAINT observation_history_role_recorded
    CHECK (superseded_by_role IS NOT NULL) NOT VALID;

-- The installation's database roles (see opencdms_kernel/db/roles.py).  Role names are
-- cluster-wide; a database copied with CREATE DATABASE ... TEMPLATE carries this record
-- together with the grants that name these roles.
CREATE TABLE database_role (
    kind       text PRIMARY KEY CHECK (kind IN ('owner', 'app', 'readonly')),
    role_name  text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

# The history is written by the owner of this function (the schema owner, see roles.py), not
# by the caller: the application role has no INSERT on observation_history, so the only way
# in is through this trigger.  search_path is pinned (pg_temp last) as for any SECURITY
# DEFINER function, and the function refuses to run for any table but observation (a user
# could otherwise attach it to a table of their own; EXECUTE is revoked from PUBLIC as well,
# which CREATE TRIGGER checks and firing does not).  session_user: the role that logged in,
# which a SECURITY DEFINER function does not change.
AUDIT_FUNCTION = """
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
        comment, superseded_by, superseded_by_role, reason)
    SELECT TG_OP, o.station_id, o.element_id, o.phenomenon_time, o.duration_seconds, o.level,
           o.source_id, o.value, o.result_quality, o.qc_status, o.final_flag, o.version,
           o.status, o.changed_at, o.changed_by, o.comment, opencdms_writer(), session_user,
           nullif(current_setting('opencdms.reason', true), '')
    FROM old_rows AS o;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION observation_audit() FROM PUBLIC;
"""

# The body of migration 0001, restored by the downgrade.
AUDIT_FUNCTION_0001 = """
CREATE OR REPLACE FUNCTION observation_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO observation_history (
        operation, station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
        value, result_quality, qc_status, final_flag, version, status, changed_at, changed_by,
        comment, superseded_by, reason)
    SELECT TG_OP, o.station_id, o.element_id, o.phenomenon_time, o.duration_seconds, o.level,
           o.source_id, o.value, o.result_quality, o.qc_status, o.final_flag, o.version,
           o.status, o.changed_at, o.changed_by, o.comment, opencdms_writer(),
           nullif(current_setting('opencdms.reason', true), '')
    FROM old_rows AS o;
    RETURN NULL;
END
$$;
GRANT EXECUTE ON FUNCTION observation_audit() TO PUBLIC;
"""

# The reference check of migration 0001, restored by the downgrade.
REFERENCES_0001 = """
CREATE FUNCTION observation_check_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    station_ids integer[];
    element_ids smallint[];
    source_ids  smallint[];
    missing     text;
BEGIN
    SELECT array_agg(DISTINCT r.station_id), array_agg(DISTINCT r.element_id),
           array_agg(DISTINCT r.source_id)
      INTO station_ids, element_ids, source_ids
      FROM (SELECT DISTINCT n.station_id, n.element_id, n.source_id FROM new_rows AS n) AS r;
    PERFORM 1 FROM station WHERE id = ANY (station_ids) FOR KEY SHARE;
    PERFORM 1 FROM element WHERE id = ANY (element_ids) FOR KEY SHARE;
    PERFORM 1 FROM source WHERE id = ANY (source_ids) FOR KEY SHARE;
    SELECT coalesce(
        (SELECT 'station id ' || min(i) FROM unnest(station_ids) AS i
          WHERE NOT EXISTS (SELECT 1 FROM station WHERE id = i)),
        (SELECT 'element id ' || min(i) FROM unnest(element_ids) AS i
          WHERE NOT EXISTS (SELECT 1 FROM element WHERE id = i)),
        (SELECT 'source id ' || min(i) FROM unnest(source_ids) AS i
          WHERE NOT EXISTS (SELECT 1 FROM source WHERE id = i)))
      INTO missing;
    IF missing IS NOT NULL THEN
        RAISE foreign_key_violation
            USING MESSAGE = format('observation refers to an unknown %s', missing);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER observation_references_insert AFTER INSERT ON observation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION observation_check_references();
"""

TRIGGERS = """
CREATE FUNCTION refuse_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: %', TG_OP, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

-- Per statement, so that even a statement matching no row is refused, at no cost per row.
CREATE TRIGGER observation_history_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON observation_history
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_statement(
        'the audit trail is append-only; entries are never changed or removed');

-- TRUNCATE fires no row or transition-table triggers, so it would remove every observation
-- without history.  The application never deletes (a delete is status = 'deleted').
CREATE TRIGGER observation_no_truncate BEFORE TRUNCATE ON observation
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_statement(
        'it would remove observations without history; set status = ''deleted'' instead');

-- An UPDATE that changes nothing is dropped before any other trigger sees it (row triggers
-- fire in name order; "0" sorts before every letter): no version bump, and the row is not in
-- the transition table, so the statement-level audit writes no history for it.  The C
-- function compares the stored bytes, so observation_stamp now stamps every row that gets
-- through: a row that is written always gets a new version and a history entry.
CREATE TRIGGER observation_0_skip_unchanged BEFORE UPDATE ON observation
    FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
DROP TRIGGER observation_stamp ON observation;
CREATE TRIGGER observation_stamp BEFORE UPDATE ON observation
    FOR EACH ROW EXECUTE FUNCTION observation_stamp();

-- Physical ranges, set-based, in the same pass over the transition table as the references
-- of inserted rows (this replaces observation_check_references, whose second scan of a bulk
-- load would have cost as much again): one aggregate per (station, element, source) with the
-- minimum and maximum value, then a few small arrays.  Referenced rows are locked as a
-- foreign key would lock them; element rows FOR SHARE, so that a concurrent change of a range
-- waits for this transaction (and element_range_in_use then sees its rows).  The offending
-- row is looked up only to write the message.  Updates: the ranges only (a changed reference
-- is checked per row by observation_references_update).
CREATE FUNCTION observation_check_new_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    station_ids integer[];
    source_ids  smallint[];
    element_ids smallint[];
    lows        double precision[];
    highs       double precision[];
    missing     text;
    bad         record;
    example     record;
BEGIN
    WITH g AS MATERIALIZED (
        SELECT n.station_id, n.element_id, n.source_id, min(n.value) AS low, max(n.value) AS high
        FROM new_rows AS n GROUP BY n.station_id, n.element_id, n.source_id)
    SELECT (SELECT array_agg(DISTINCT g.station_id) FROM g),
           (SELECT array_agg(DISTINCT g.source_id) FROM g),
           array_agg(r.element_id), array_agg(r.low), array_agg(r.high)
      INTO station_ids, source_ids, element_ids, lows, highs
      FROM (SELECT g.element_id, min(g.low) AS low, max(g.high) AS high
              FROM g GROUP BY g.element_id) AS r;
    PERFORM 1 FROM element WHERE id = ANY (element_ids) FOR SHARE;
    IF TG_OP = 'INSERT' THEN
        PERFORM 1 FROM station WHERE id = ANY (station_ids) FOR KEY SHARE;
        PERFORM 1 FROM source WHERE id = ANY (source_ids) FOR KEY SHARE;
        SELECT coalesce(
            (SELECT 'station id ' || min(i) FROM unnest(station_ids) AS i
              WHERE NOT EXISTS (SELECT 1 FROM station WHERE id = i)),
            (SELECT 'element id ' || min(i) FROM unnest(element_ids) AS i
              WHERE NOT EXISTS (SELECT 1 FROM element WHERE id = i)),
            (SELECT 'source id ' || min(i) FROM unnest(source_ids) AS i
              WHERE NOT EXISTS (SELECT 1 FROM source WHERE id = i)))
          INTO missing;
        IF missing IS NOT NULL THEN
            RAISE foreign_key_violation
                USING MESSAGE = format('observation refers to an unknown %s', missing);
        END IF;
    END IF;
    SELECT e.id, e.code, e.units, e.valid_min, e.valid_max INTO bad
      FROM unnest(element_ids, lows, highs) AS r (element_id, low, high)
      JOIN element AS e ON e.id = r.element_id
     WHERE r.low < e.valid_min OR r.high > e.valid_max
     ORDER BY e.code
     LIMIT 1;
    IF FOUND THEN
        SELECT n.station_id, n.phenomenon_time, n.value INTO example
          FROM new_rows AS n
         WHERE n.element_id = bad.id AND (n.value < bad.valid_min OR n.value > bad.valid_max)
         LIMIT 1;
        RAISE check_violation USING MESSAGE = format(
            '%s value %s (station id %s, %s) is outside the physical range of element %s: [%s, %s] %s',
            bad.code, example.value, example.station_id, example.phenomenon_time, bad.code,
            coalesce(bad.valid_min::text, '-infinity'), coalesce(bad.valid_max::text, 'infinity'),
            bad.units);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER observation_references_insert ON observation;
DROP FUNCTION observation_check_references();
CREATE TRIGGER observation_check_insert AFTER INSERT ON observation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION observation_check_new_rows();
CREATE TRIGGER observation_check_update AFTER UPDATE ON observation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION observation_check_new_rows();

-- The other side of the range: an element's range cannot shrink past stored values (a scan
-- of observation, only when the range narrows; changing a range is rare and deliberate).
CREATE FUNCTION element_range_check_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    outside bigint;
BEGIN
    SELECT count(*) INTO outside FROM observation
     WHERE element_id = NEW.id AND (value < NEW.valid_min OR value > NEW.valid_max);
    IF outside > 0 THEN
        RAISE check_violation USING MESSAGE = format(
            'element %s: %s stored value(s) lie outside the new physical range [%s, %s] %s',
            NEW.code, outside, coalesce(NEW.valid_min::text, '-infinity'),
            coalesce(NEW.valid_max::text, 'infinity'), NEW.units);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER element_range_in_use BEFORE UPDATE OF valid_min, valid_max ON element
    FOR EACH ROW
    WHEN (NEW.valid_min > OLD.valid_min OR NEW.valid_max < OLD.valid_max
          OR (OLD.valid_min IS NULL AND NEW.valid_min IS NOT NULL)
          OR (OLD.valid_max IS NULL AND NEW.valid_max IS NOT NULL))
    EXECUTE FUNCTION element_range_check_stored();
"""

# Values stored before this migration are held to the ranges as a new CHECK constraint would
# hold them: the upgrade stops and names one, rather than leaving rows that every later
# update (a QC flag, a deletion) would trip over.
OUT_OF_RANGE_SQL = """
SELECT e.code, e.units, e.valid_min, e.valid_max, o.station_id, o.phenomenon_time, o.value,
       count(*) OVER () AS outside
FROM observation AS o JOIN element AS e ON e.id = o.element_id
WHERE o.value < e.valid_min OR o.value > e.valid_max
LIMIT 1
"""


def _refuse_stored_values_out_of_range() -> None:
    from opencdms_kernel.db.migrate import MigrationError

    bad = op.get_bind().execute(sa.text(OUT_OF_RANGE_SQL)).first()
    if bad is not None:
        raise MigrationError(
            f"migration 0003 enforces each element's physical range, and {bad.outside} stored "
            f"observation(s) lie outside it, e.g. {bad.code} = {bad.value} {bad.units} at station "
            f"id {bad.station_id}, {bad.phenomenon_time:%Y-%m-%d %H:%M %Z} (range "
            f"[{bad.valid_min}, {bad.valid_max}]); correct them (or set the value to NULL) at "
            "revision 0002, then upgrade again"
        )


def upgrade() -> None:
    _refuse_stored_values_out_of_range()
    op.execute(TABLES)
    op.execute(AUDIT_FUNCTION)
    op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER element_range_in_use ON element;
        DROP TRIGGER observation_check_insert ON observation;
        DROP TRIGGER observation_check_update ON observation;
        DROP FUNCTION element_range_check_stored(), observation_check_new_rows();
        DROP TRIGGER observation_0_skip_unchanged ON observation;
        DROP TRIGGER observation_stamp ON observation;
        CREATE TRIGGER observation_stamp BEFORE UPDATE ON observation
            FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION observation_stamp();
        DROP TRIGGER observation_no_truncate ON observation;
        DROP TRIGGER observation_history_append_only ON observation_history;
        DROP FUNCTION refuse_statement();
        """
    )
    op.execute(REFERENCES_0001)
    op.execute(AUDIT_FUNCTION_0001)
    op.execute("ALTER TABLE observation_history DROP COLUMN superseded_by_role")
    op.execute("DROP TABLE database_role")
