"""Initial schema: stations, elements, sources, observations with their audit trail, ledger, jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import csv
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ELEMENTS_CSV = Path(__file__).resolve().parents[2] / "elements.csv"

TABLES = """
CREATE TABLE station (
    id          serial PRIMARY KEY,
    wigos_id    text NOT NULL UNIQUE
                CHECK (wigos_id ~ '^[0-9]{1,5}-[0-9]{1,5}-[0-9]{1,5}-[0-9A-Za-z]{1,16}$'),
    name        text NOT NULL,
    latitude    double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    elevation   double precision,
    territory   text,
    wmo_region  text,
    timezone    text NOT NULL DEFAULT 'UTC',
    status      text NOT NULL DEFAULT 'operational',
    opened      date,
    closed      date,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE element (
    id            smallserial PRIMARY KEY,
    code          text NOT NULL UNIQUE,
    name          text NOT NULL,
    standard_name text NOT NULL,
    cell_method   text,
    units         text NOT NULL,
    valid_min     double precision,
    valid_max     double precision,
    CHECK (valid_min IS NULL OR valid_max IS NULL OR valid_min <= valid_max)
);

CREATE TABLE source (
    id          smallserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per natural key holding the latest version; earlier versions live in
-- observation_history.  Integer keys keep the primary-key index narrow, which is what makes
-- the bulk merge fast.  References to station, element and source are enforced by the
-- triggers below, once per statement: a FOREIGN KEY checks row by row, which costs four
-- times the insert itself on a bulk load (see docs/architecture.md).
CREATE TABLE observation (
    station_id       integer  NOT NULL,
    element_id       smallint NOT NULL,
    phenomenon_time  timestamptz NOT NULL,
    duration_seconds integer  NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
    level            real     NOT NULL DEFAULT 0,
    source_id        smallint NOT NULL,
    value            double precision,
    result_quality   jsonb    NOT NULL DEFAULT '{}'::jsonb,
    qc_status        text     NOT NULL DEFAULT 'none'
                     CHECK (qc_status IN ('none', 'passed', 'suspect', 'failed')),
    final_flag       text,
    version          integer  NOT NULL DEFAULT 1,
    status           text     NOT NULL DEFAULT 'latest' CHECK (status IN ('latest', 'deleted')),
    changed_at       timestamptz NOT NULL DEFAULT now(),
    changed_by       text     NOT NULL,
    comment          text,
    PRIMARY KEY (station_id, element_id, phenomenon_time, duration_seconds, level, source_id)
);
-- BRIN: nearly free to maintain during bulk loads, and enough for the archive's
-- "what changed since the last export" scan; autosummarize so that block ranges filled by a
-- load are summarised soon after, not only at the next VACUUM.
CREATE INDEX observation_changed_at_brin ON observation USING brin (changed_at)
    WITH (autosummarize = on);

CREATE TABLE observation_history (
    id               bigserial PRIMARY KEY,
    operation        text NOT NULL CHECK (operation IN ('UPDATE', 'DELETE')),
    station_id       integer  NOT NULL,
    element_id       smallint NOT NULL,
    phenomenon_time  timestamptz NOT NULL,
    duration_seconds integer  NOT NULL,
    level            real     NOT NULL,
    source_id        smallint NOT NULL,
    value            double precision,
    result_quality   jsonb    NOT NULL,
    qc_status        text     NOT NULL,
    final_flag       text,
    version          integer  NOT NULL,
    status           text     NOT NULL,
    changed_at       timestamptz NOT NULL,
    changed_by       text     NOT NULL,
    comment          text,
    superseded_at    timestamptz NOT NULL DEFAULT now(),
    superseded_by    text NOT NULL,
    reason           text
);
CREATE INDEX observation_history_key
    ON observation_history (station_id, element_id, phenomenon_time);
CREATE INDEX observation_history_superseded_at ON observation_history (superseded_at);

CREATE TABLE ingest_ledger (
    id             bigserial PRIMARY KEY,
    object_key     text NOT NULL,
    size_bytes     bigint NOT NULL,
    checksum       text NOT NULL,
    mapping        text,
    status         text NOT NULL CHECK (status IN ('loading', 'loaded', 'failed', 'skipped')),
    rows_read      integer,
    rows_inserted  integer,
    rows_updated   integer,
    rows_unchanged integer,
    rows_rejected  integer,
    reject_report  text,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    ingested_by    text NOT NULL
);
CREATE INDEX ingest_ledger_object ON ingest_ledger (object_key, checksum);

CREATE TABLE job (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    process      text NOT NULL,
    parameters   jsonb NOT NULL DEFAULT '{}'::jsonb,
    trigger      text NOT NULL,
    requested_by text NOT NULL,
    status       text NOT NULL DEFAULT 'accepted'
                 CHECK (status IN ('accepted', 'running', 'successful', 'failed', 'dismissed')),
    message      text,
    error        text,
    outputs      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX job_created_at ON job (created_at);

CREATE TABLE archive_export (
    id          bigserial PRIMARY KEY,
    watermark   timestamptz NOT NULL,
    partitions  integer NOT NULL,
    rows        bigint NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
"""

# The audit trail lives in the database so that every writer (ingest, forms, notebooks, plain
# SQL) is recorded.  Who: the session setting opencdms.user (SET LOCAL by the application),
# else the database role.  Why: opencdms.reason.  Statement-level triggers with transition
# tables write the history set-based, one INSERT per statement rather than one per row.
TRIGGERS = """
CREATE FUNCTION opencdms_writer() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('opencdms.user', true), ''), session_user::text)
$$;

CREATE FUNCTION observation_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version    := OLD.version + 1;
    NEW.changed_at := now();
    NEW.changed_by := opencdms_writer();
    RETURN NEW;
END
$$;

CREATE TRIGGER observation_stamp BEFORE UPDATE ON observation
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION observation_stamp();

CREATE FUNCTION observation_audit() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER observation_audit_update AFTER UPDATE ON observation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION observation_audit();
CREATE TRIGGER observation_audit_delete AFTER DELETE ON observation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION observation_audit();

-- Referential integrity of observation, set-based: the referenced rows are locked FOR KEY
-- SHARE as a foreign key would lock them, then any missing one is reported.
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

CREATE FUNCTION observation_check_changed_references() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM station WHERE id = NEW.station_id FOR KEY SHARE) THEN
        RAISE foreign_key_violation
            USING MESSAGE = format('observation refers to an unknown station id %s', NEW.station_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM element WHERE id = NEW.element_id FOR KEY SHARE) THEN
        RAISE foreign_key_violation
            USING MESSAGE = format('observation refers to an unknown element id %s', NEW.element_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM source WHERE id = NEW.source_id FOR KEY SHARE) THEN
        RAISE foreign_key_violation
            USING MESSAGE = format('observation refers to an unknown source id %s', NEW.source_id);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER observation_references_update
    BEFORE UPDATE OF station_id, element_id, source_id ON observation FOR EACH ROW
    WHEN (OLD.station_id IS DISTINCT FROM NEW.station_id
          OR OLD.element_id IS DISTINCT FROM NEW.element_id
          OR OLD.source_id IS DISTINCT FROM NEW.source_id)
    EXECUTE FUNCTION observation_check_changed_references();

-- The other side of the references: a station, element or source in use cannot be removed.
CREATE FUNCTION refuse_delete_if_observed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    in_use boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM observation WHERE %I = $1)', TG_ARGV[0])
        INTO in_use USING OLD.id;
    IF in_use THEN
        RAISE foreign_key_violation USING MESSAGE = format(
            '%s id %s has observations and cannot be removed; set its status instead',
            TG_TABLE_NAME, OLD.id);
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER station_in_use BEFORE DELETE OR UPDATE OF id ON station
    FOR EACH ROW EXECUTE FUNCTION refuse_delete_if_observed('station_id');
CREATE TRIGGER element_in_use BEFORE DELETE OR UPDATE OF id ON element
    FOR EACH ROW EXECUTE FUNCTION refuse_delete_if_observed('element_id');
CREATE TRIGGER source_in_use BEFORE DELETE OR UPDATE OF id ON source
    FOR EACH ROW EXECUTE FUNCTION refuse_delete_if_observed('source_id');
"""


def _seed_elements() -> None:
    with ELEMENTS_CSV.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    element = sa.table(
        "element",
        *(sa.column(name) for name in rows[0]),
    )
    for row in rows:
        row["valid_min"] = float(row["valid_min"])  # type: ignore[assignment]
        row["valid_max"] = float(row["valid_max"])  # type: ignore[assignment]
    op.bulk_insert(element, rows)


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(TRIGGERS)
    _seed_elements()


def downgrade() -> None:
    op.execute(
        "DROP TABLE archive_export, job, ingest_ledger, observation_history, observation, "
        "source, element, station CASCADE"
    )
    op.execute(
        "DROP FUNCTION observation_audit(), observation_stamp(), opencdms_writer(), "
        "observation_check_references(), observation_check_changed_references(), "
        "refuse_delete_if_observed() CASCADE"
    )
