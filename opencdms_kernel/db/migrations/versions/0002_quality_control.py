"""Quality control: versioned thresholds and inter-element relations, QC runs, derived status.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Rules (``qc_threshold``, ``qc_relation``) are never edited in place: a change is a new row with
the next ``version`` of the same scope, and a trigger refuses UPDATE, DELETE and TRUNCATE.  The
rule in force for a scope is its newest version (``active = false`` withdraws it).

A QC run writes back only the observations whose automatic entries or derived status change;
every run records what it checked in ``qc_run`` (scope, tests, the rule versions in force, the
archive snapshot it read).  An observation without entries that a finished run covered is
therefore "passed" without a write: the view ``observation_quality`` derives that.  The
derivation of ``qc_status`` and ``final_flag`` from ``result_quality`` lives in SQL functions
here, used by the QC write-back, manual decisions and the view alike.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = """
-- One row per version of one threshold rule.  Scope: test, element, station (NULL: the whole
-- network), calendar month (NULL: every month), duration (NULL: any).  The most specific rule
-- applies: station before network, then month, then duration; the element's physical range
-- (element.valid_min/valid_max) is the global fallback of the range test.
CREATE TABLE qc_threshold (
    id               bigserial PRIMARY KEY,
    test             text     NOT NULL CHECK (test IN ('range', 'step', 'persistence', 'spatial')),
    element_id       smallint NOT NULL REFERENCES element (id),
    station_id       integer  REFERENCES station (id),
    month            smallint CHECK (month BETWEEN 1 AND 12),
    duration_seconds integer  CHECK (duration_seconds >= 0),
    version          integer  NOT NULL CHECK (version >= 1),
    active           boolean  NOT NULL DEFAULT true,
    severity         text     NOT NULL DEFAULT 'suspect' CHECK (severity IN ('suspect', 'failed')),
    -- range: values outside [low, high] are flagged
    low              double precision,
    high             double precision,
    -- step: largest allowed change between consecutive values
    max_change       double precision CHECK (max_change > 0),
    -- step, persistence: values further apart than this are not consecutive
    -- (NULL: the series' duration, or one hour for point values)
    max_gap_seconds  integer  CHECK (max_gap_seconds > 0),
    -- persistence: at most max_run equal values in a row (runs of exclude_value are normal);
    -- with min_spread, also any max_run + 1 consecutive values spanning less than min_spread
    max_run          integer  CHECK (max_run >= 1),
    min_spread       double precision CHECK (min_spread > 0),
    exclude_value    double precision,
    -- spatial: neighbours within radius_km; at least min_neighbours; |z| above max_z flagged
    radius_km        double precision CHECK (radius_km > 0),
    min_neighbours   integer  CHECK (min_neighbours >= 1),
    max_z            double precision CHECK (max_z > 0),
    method           text     NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text     NOT NULL DEFAULT opencdms_writer(),
    CONSTRAINT qc_threshold_scope_version UNIQUE NULLS NOT DISTINCT
        (test, element_id, station_id, month, duration_seconds, version),
    CONSTRAINT qc_threshold_parameters CHECK (NOT active OR CASE test
        WHEN 'range' THEN (low IS NOT NULL OR high IS NOT NULL)
                          AND (low IS NULL OR high IS NULL OR low <= high)
        WHEN 'step' THEN max_change IS NOT NULL
        WHEN 'persistence' THEN max_run IS NOT NULL
        WHEN 'spatial' THEN radius_km IS NOT NULL AND min_neighbours IS NOT NULL
                            AND max_z IS NOT NULL
        END)
);

-- Inter-element relations (as Climsoft's inter-element checks): left <operator> right, where
-- right is another element of the same station, time, duration, level and source, or a
-- constant; tolerance widens the relation.  Both values of a broken relation are flagged.
CREATE TABLE qc_relation (
    id               bigserial PRIMARY KEY,
    left_element_id  smallint NOT NULL REFERENCES element (id),
    operator         text     NOT NULL CHECK (operator IN ('<', '<=', '=', '>=', '>')),
    right_element_id smallint REFERENCES element (id),
    right_value      double precision,
    tolerance        double precision NOT NULL DEFAULT 0 CHECK (tolerance >= 0),
    version          integer  NOT NULL CHECK (version >= 1),
    active           boolean  NOT NULL DEFAULT true,
    severity         text     NOT NULL DEFAULT 'suspect' CHECK (severity IN ('suspect', 'failed')),
    method           text     NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text     NOT NULL DEFAULT opencdms_writer(),
    CONSTRAINT qc_relation_right CHECK ((right_element_id IS NULL) <> (right_value IS NULL)),
    CONSTRAINT qc_relation_two_elements CHECK (right_element_id IS DISTINCT FROM left_element_id),
    CONSTRAINT qc_relation_scope_version UNIQUE NULLS NOT DISTINCT
        (left_element_id, operator, right_element_id, right_value, version)
);

-- One row per QC run: what it checked (scope, tests, rules in force, the archive snapshot),
-- what it found and wrote.  Rules in force: the newest version of each scope among the rows
-- with id <= threshold_as_of / relation_as_of.  data_as_of is the archive export's watermark:
-- every value changed before it was in the data checked.
CREATE TABLE qc_run (
    id               bigserial PRIMARY KEY,
    status           text     NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'finished', 'failed')),
    requested_by     text     NOT NULL,
    tests            text[]   NOT NULL,
    station_ids      integer[],
    element_ids      smallint[],
    period_start     timestamptz,
    period_end       timestamptz,
    threshold_as_of  bigint,
    relation_as_of   bigint,
    data_as_of       timestamptz,
    checked          bigint,
    written          bigint,
    stale            bigint,
    counts           jsonb    NOT NULL DEFAULT '{}'::jsonb,
    skipped          jsonb    NOT NULL DEFAULT '[]'::jsonb,
    error            text,
    seconds          double precision,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CHECK (period_start IS NULL OR period_end IS NULL OR period_start <= period_end)
);
CREATE INDEX qc_run_finished ON qc_run (id) WHERE status = 'finished';
"""

FUNCTIONS = """
CREATE FUNCTION qc_rule_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed or removed; insert a new version instead',
        TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER qc_threshold_immutable BEFORE UPDATE OR DELETE ON qc_threshold
    FOR EACH ROW EXECUTE FUNCTION qc_rule_immutable();
CREATE TRIGGER qc_threshold_no_truncate BEFORE TRUNCATE ON qc_threshold
    FOR EACH STATEMENT EXECUTE FUNCTION qc_rule_immutable();
CREATE TRIGGER qc_relation_immutable BEFORE UPDATE OR DELETE ON qc_relation
    FOR EACH ROW EXECUTE FUNCTION qc_rule_immutable();
CREATE TRIGGER qc_relation_no_truncate BEFORE TRUNCATE ON qc_relation
    FOR EACH STATEMENT EXECUTE FUNCTION qc_rule_immutable();

-- The layers of result_quality: 'ingest' (the source's own flag, not a QC result), one entry
-- per automatic test ({"result": "suspect"|"failed", "flag", "rule", "version", "run", ...};
-- a test that passes leaves no entry), and 'manual' (a person's decision, which wins).
-- checked: the observation was covered by a QC run (an empty result then means passed).
CREATE FUNCTION qc_status_of(result_quality jsonb, checked boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN result_quality ? 'manual' THEN
            CASE result_quality -> 'manual' ->> 'decision' WHEN 'reject' THEN 'failed' ELSE 'passed' END
        WHEN (result_quality - 'ingest') @? '$.* ? (@.result == "failed")' THEN 'failed'
        WHEN (result_quality - 'ingest') @? '$.* ? (@.result == "suspect")' THEN 'suspect'
        WHEN checked THEN 'passed'
        ELSE 'none'
    END
$$;

CREATE FUNCTION qc_final_flag_of(result_quality jsonb, checked boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN result_quality ? 'manual' THEN
            CASE result_quality -> 'manual' ->> 'decision'
                WHEN 'accept' THEN 'verified' WHEN 'reject' THEN 'rejected' ELSE 'corrected' END
        ELSE CASE qc_status_of(result_quality, checked)
                WHEN 'failed' THEN 'bad' WHEN 'suspect' THEN 'suspect' WHEN 'passed' THEN 'good' END
    END
$$;

-- The automatic entries of a run merged into an observation's result_quality: the entries of
-- the run's tests are replaced by the new ones (a test without a new entry passed), an entry
-- identical but for its run keeps the run that first raised it, and every other key
-- ('manual', 'ingest', tests not run) is left as it was.  New entries carry their run.
CREATE FUNCTION qc_merge_entries(old jsonb, new jsonb, tests text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN NOT old ?| tests THEN old || new
        ELSE (old - tests) || coalesce(
            (SELECT jsonb_object_agg(e.key,
                        CASE WHEN (old -> e.key) - 'run' = e.value - 'run' THEN old -> e.key
                             ELSE e.value END)
             FROM jsonb_each(new) AS e),
            '{}'::jsonb)
    END
$$;

-- Observations with their quality as QC sees it: the stored status where QC or a person
-- wrote one, otherwise 'passed' (final flag 'good') when a finished run covered the
-- observation's current value, otherwise 'none'.  checked_by_run: that run.
CREATE VIEW observation_quality AS
SELECT o.station_id, o.element_id, o.phenomenon_time, o.duration_seconds, o.level, o.source_id,
       o.value, o.result_quality,
       CASE WHEN covering.id IS NULL THEN o.qc_status ELSE 'passed' END AS qc_status,
       CASE WHEN covering.id IS NULL THEN o.final_flag ELSE 'good' END AS final_flag,
       covering.id AS checked_by_run,
       o.version, o.status, o.changed_at, o.changed_by, o.comment
FROM observation AS o
LEFT JOIN LATERAL (
    SELECT r.id
    FROM qc_run AS r
    WHERE o.qc_status = 'none'
      AND o.value IS NOT NULL
      AND r.status = 'finished'
      AND o.changed_at < r.data_as_of
      AND (r.station_ids IS NULL OR o.station_id = ANY (r.station_ids))
      AND (r.element_ids IS NULL OR o.element_id = ANY (r.element_ids))
      AND (r.period_start IS NULL OR o.phenomenon_time >= r.period_start)
      AND (r.period_end IS NULL OR o.phenomenon_time <= r.period_end)
    ORDER BY r.id DESC
    LIMIT 1
) AS covering ON true;
"""

# Network defaults, per element and duration (86400: daily values, 3600: hourly).  Step:
# (max_change, max_gap_seconds).  Persistence: (max_run, exclude_value, max_gap_seconds);
# runs of 0 mm rain, calm wind or saturated air are normal, so those values are excluded.
# Spatial: (radius_km, min_neighbours, max_z), temperatures only.
STEP_DEFAULTS = {
    ("TMAX", 86400): 8.0, ("TMIN", 86400): 8.0, ("TMEAN", 86400): 8.0, ("TDEW", 86400): 10.0,
    ("TMEAN", 3600): 6.0, ("TDEW", 3600): 6.0, ("TSOIL", 86400): 8.0,
    ("PRES", 3600): 4.0, ("MSLP", 3600): 4.0, ("PRES", 86400): 20.0, ("MSLP", 86400): 20.0,
    ("RH", 3600): 50.0, ("WSPD", 3600): 20.0,
}
PERSISTENCE_DEFAULTS = {
    ("TMAX", 86400): (5, None), ("TMIN", 86400): (5, None), ("TMEAN", 86400): (5, None),
    ("TDEW", 86400): (5, None), ("TMEAN", 3600): (8, None), ("TDEW", 3600): (8, None),
    ("PRCP", 86400): (2, 0.0), ("PRCP", 3600): (4, 0.0),
    ("RH", 86400): (5, 100.0), ("RH", 3600): (12, 100.0),
    ("PRES", 86400): (5, None), ("PRES", 3600): (8, None),
    ("MSLP", 86400): (5, None), ("MSLP", 3600): (8, None),
    ("WSPD", 86400): (5, 0.0), ("WSPD", 3600): (12, 0.0), ("WDIR", 3600): (12, 0.0),
    ("WGUST", 3600): (12, 0.0), ("SUN", 86400): (4, 0.0), ("EVAP", 86400): (4, 0.0),
}
SPATIAL_DEFAULTS = {
    ("TMAX", 86400): (150.0, 3, 5.0), ("TMIN", 86400): (150.0, 3, 5.0),
    ("TMEAN", 86400): (150.0, 3, 5.0),
}
# (left, operator, right element or constant, tolerance, severity)
RELATION_DEFAULTS = [
    ("TMIN", "<=", "TMAX", 0.0, "failed"),
    ("TMIN", "<=", "TMEAN", 0.0, "suspect"),
    ("TMEAN", "<=", "TMAX", 0.0, "suspect"),
    ("TDEW", "<=", "TMEAN", 0.5, "suspect"),
    ("WSPD", "<=", "WGUST", 0.0, "suspect"),
    ("PRCP", ">=", 0.0, 0.0, "failed"),
]
SEED_METHOD = "seed: network default (migration 0002)"


def _seed() -> None:
    elements = dict(op.get_bind().execute(sa.text("SELECT code, id FROM element")).all())
    threshold = sa.table("qc_threshold", *(sa.column(name) for name in (
        "test", "element_id", "duration_seconds", "version", "severity", "max_change",
        "max_gap_seconds", "max_run", "exclude_value", "radius_km", "min_neighbours", "max_z",
        "method")))
    rows = []
    for (code, duration), max_change in STEP_DEFAULTS.items():
        rows.append({"test": "step", "element_id": elements[code], "duration_seconds": duration,
                     "max_change": max_change, "max_gap_seconds": duration})
    for (code, duration), (max_run, exclude) in PERSISTENCE_DEFAULTS.items():
        rows.append({"test": "persistence", "element_id": elements[code], "duration_seconds": duration,
                     "max_run": max_run, "exclude_value": exclude, "max_gap_seconds": duration})
    for (code, duration), (radius, neighbours, max_z) in SPATIAL_DEFAULTS.items():
        rows.append({"test": "spatial", "element_id": elements[code], "duration_seconds": duration,
                     "radius_km": radius, "min_neighbours": neighbours, "max_z": max_z})
    names = ("max_change", "max_gap_seconds", "max_run", "exclude_value", "radius_km",
             "min_neighbours", "max_z")
    op.bulk_insert(threshold, [
        {name: None for name in names} | row | {"version": 1, "severity": "suspect", "method": SEED_METHOD}
        for row in rows
    ])
    relation = sa.table("qc_relation", *(sa.column(name) for name in (
        "left_element_id", "operator", "right_element_id", "right_value", "tolerance", "version",
        "severity", "method")))
    op.bulk_insert(relation, [
        {"left_element_id": elements[left], "operator": operator,
         "right_element_id": elements[right] if isinstance(right, str) else None,
         "right_value": right if not isinstance(right, str) else None,
         "tolerance": tolerance, "version": 1, "severity": severity, "method": SEED_METHOD}
        for left, operator, right, tolerance, severity in RELATION_DEFAULTS
    ])


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(FUNCTIONS)
    _seed()


def downgrade() -> None:
    op.execute("DROP VIEW observation_quality")
    op.execute("DROP TABLE qc_run, qc_relation, qc_threshold CASCADE")
    op.execute(
        "DROP FUNCTION qc_merge_entries(jsonb, jsonb, text[]), "
        "qc_final_flag_of(jsonb, boolean), qc_status_of(jsonb, boolean), qc_rule_immutable()"
    )
