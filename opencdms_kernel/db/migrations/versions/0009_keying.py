"""Data entry: paper forms keyed (twice, blind, where the form says so) before they become observations.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09

- ``keying_sheet``: one form for one station and one period, with what the database needs to
  turn its cells into observations (rows, their clock and step, duration, level, elements) and
  whether the form is keyed twice.  Those columns never change once the sheet exists.
- ``keying_entry``: keying 1 and keying 2 of a sheet, held apart: their keyer, cells (jsonb,
  ``"<row>|<element>": {text, canonical, kind, value, flag, days, by, override}``), version and
  times.  Who keyed and which login saved are set here (``opencdms.user``, ``session_user``);
  every save bumps the version.
- ``keying_resolution`` (append-only): a supervisor's decision on one cell where the keyings
  differ: the two cells it resolves, the value chosen (or none), who, as which login, and why.
  Nobody resolves a sheet they keyed.
- ``keying_log`` (append-only, written by triggers as the schema owner): every save (with the
  cells that changed), resolution and commit.
- ``keying_cells(sheet)``: the one rule of double keying: per cell, both keyings, the resolution
  that matches them, the state (``single``, ``agreed``, ``resolved``, ``unresolved``), the value
  that becomes the observation and its author (the clerk who keyed it; the supervisor only for a
  value neither keyed).
- ``keying_commit(sheet)`` (SECURITY DEFINER, run as the schema owner): writes a sheet's values
  as observations of source ``keying`` through the audited path, only when the sheet is ready:
  keyed once (single-keyed form) or twice by two people with every difference resolved.  A
  clerk's role may not write ``observation``; it may run this.  Each value is written under its
  author's name (``opencdms.user`` per author for the audit triggers), a value a QC reviewer has
  decided on is left as decided, and the caller's identity is restored afterwards.
- ``keying_observations(sheet)`` (SECURITY DEFINER): what is stored for a sheet's cells (current
  rows and their history), for clerks, whose role may not read ``observation``.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE keying_sheet (
    id               bigserial PRIMARY KEY,
    form             text NOT NULL CHECK (form ~ '^[a-z][a-z0-9_]{0,63}$'),
    station_id       integer NOT NULL REFERENCES station (id),
    period           text NOT NULL,
    period_start     timestamp NOT NULL,
    row_step         interval NOT NULL,
    row_origin       smallint NOT NULL,
    row_numbers      smallint[] NOT NULL CHECK (cardinality(row_numbers) BETWEEN 1 AND 100),
    time_zone        text NOT NULL,
    duration_seconds integer NOT NULL CHECK (duration_seconds > 0),
    level            real NOT NULL,
    elements         text[] NOT NULL CHECK (cardinality(elements) BETWEEN 1 AND 24),
    double_keying    boolean NOT NULL,
    status           text NOT NULL DEFAULT 'keying' CHECK (status IN ('keying', 'differences', 'committed')),
    committed_at     timestamptz,
    committed_by     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text NOT NULL,
    CONSTRAINT keying_sheet_once UNIQUE (form, station_id, period)
);

CREATE TABLE keying_entry (
    sheet_id      bigint NOT NULL REFERENCES keying_sheet (id),
    keying        smallint NOT NULL CHECK (keying IN (1, 2)),
    keyed_by      text NOT NULL,
    keyed_by_role text NOT NULL,
    cells         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(cells) = 'object'),
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    saved_at      timestamptz NOT NULL DEFAULT now(),
    saved_by      text NOT NULL,
    PRIMARY KEY (sheet_id, keying)
);

CREATE TABLE keying_resolution (
    id               bigserial PRIMARY KEY,
    sheet_id         bigint NOT NULL REFERENCES keying_sheet (id),
    cell             text NOT NULL CHECK (cell ~ '^[0-9]{1,3}[|][A-Z0-9_]+$'),
    first            jsonb,
    second           jsonb,
    resolved         jsonb,
    reason           text NOT NULL CHECK (length(btrim(reason)) > 0),
    resolved_by      text NOT NULL,
    resolved_by_role text NOT NULL,
    resolved_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX keying_resolution_cell ON keying_resolution (sheet_id, cell, id);

CREATE TABLE keying_log (
    id           bigserial PRIMARY KEY,
    sheet_id     bigint NOT NULL,
    action       text NOT NULL CHECK (action IN ('saved', 'resolved', 'committed')),
    keying       smallint,
    version      integer,
    cell         text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    done_by      text NOT NULL,
    done_by_role text NOT NULL,
    done_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX keying_log_sheet ON keying_log (sheet_id, id);
"""

TRIGGERS = """
-- What the database needs to place a sheet's cells never changes once the sheet exists.
CREATE FUNCTION keying_sheet_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.form, NEW.station_id, NEW.period, NEW.period_start, NEW.row_step, NEW.row_origin,
        NEW.row_numbers, NEW.time_zone, NEW.duration_seconds, NEW.level, NEW.elements, NEW.double_keying,
        NEW.created_at, NEW.created_by)
       IS DISTINCT FROM
       (OLD.id, OLD.form, OLD.station_id, OLD.period, OLD.period_start, OLD.row_step, OLD.row_origin,
        OLD.row_numbers, OLD.time_zone, OLD.duration_seconds, OLD.level, OLD.elements, OLD.double_keying,
        OLD.created_at, OLD.created_by) THEN
        RAISE integrity_constraint_violation USING MESSAGE = format(
            'keying sheet %s: only its status changes; its form, station, period and layout are fixed', OLD.id);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER keying_sheet_fixed BEFORE UPDATE ON keying_sheet
    FOR EACH ROW EXECUTE FUNCTION keying_sheet_fixed();

-- Who keyed (opencdms.user, as the audit takes it), which login saved, the version of each save.
CREATE FUNCTION keying_entry_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.keyed_by_role := session_user;
    NEW.saved_by := opencdms_writer();
    NEW.saved_at := now();
    IF TG_OP = 'INSERT' THEN
        NEW.keyed_by := opencdms_writer();
        NEW.version := 1;
        NEW.created_at := now();
    ELSE
        IF NEW.sheet_id <> OLD.sheet_id OR NEW.keying <> OLD.keying OR NEW.keyed_by <> OLD.keyed_by THEN
            RAISE integrity_constraint_violation USING MESSAGE = format(
                'keying %s of sheet %s keeps its sheet, its number and its keyer (%s)', OLD.keying, OLD.sheet_id,
                OLD.keyed_by);
        END IF;
        NEW.version := OLD.version + 1;
        NEW.created_at := OLD.created_at;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER keying_entry_stamp BEFORE INSERT OR UPDATE ON keying_entry
    FOR EACH ROW EXECUTE FUNCTION keying_entry_stamp();

-- A resolution names its maker and their login; nobody resolves a sheet they keyed.
CREATE FUNCTION keying_resolution_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.resolved_by := opencdms_writer();
    NEW.resolved_by_role := session_user;
    NEW.resolved_at := now();
    IF EXISTS (SELECT 1 FROM keying_entry WHERE sheet_id = NEW.sheet_id AND keyed_by = NEW.resolved_by) THEN
        RAISE insufficient_privilege USING MESSAGE = format(
            '%s keyed sheet %s: another supervisor resolves its differences', NEW.resolved_by, NEW.sheet_id);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER keying_resolution_stamp BEFORE INSERT ON keying_resolution
    FOR EACH ROW EXECUTE FUNCTION keying_resolution_stamp();

-- The log is written here, as the schema owner: no role needs (or is given) a right on it.
CREATE FUNCTION keying_log_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    old_cells jsonb := '{}'::jsonb;
BEGIN
    IF TG_RELID = 'public.keying_entry'::regclass THEN
        IF TG_OP = 'UPDATE' THEN
            old_cells := OLD.cells;
        END IF;
        INSERT INTO keying_log (sheet_id, action, keying, version, detail, done_by, done_by_role)
        SELECT NEW.sheet_id, 'saved', NEW.keying, NEW.version,
               jsonb_build_object('cells', (SELECT count(*) FROM jsonb_object_keys(NEW.cells)),
                                  'changed', coalesce(jsonb_object_agg(d.cell, jsonb_build_array(d.before, d.after))
                                                      FILTER (WHERE d.cell IS NOT NULL), '{}'::jsonb)),
               NEW.saved_by, session_user
        FROM (SELECT coalesce(a.key, b.key) AS cell, a.value ->> 'canonical' AS before, b.value ->> 'canonical' AS after
              FROM jsonb_each(old_cells) AS a FULL JOIN jsonb_each(NEW.cells) AS b ON a.key = b.key
              WHERE (a.value ->> 'canonical') IS DISTINCT FROM (b.value ->> 'canonical')) AS d;
    ELSIF TG_RELID = 'public.keying_resolution'::regclass THEN
        INSERT INTO keying_log (sheet_id, action, cell, detail, done_by, done_by_role)
        VALUES (NEW.sheet_id, 'resolved', NEW.cell,
                jsonb_build_object('first', NEW.first ->> 'canonical', 'second', NEW.second ->> 'canonical',
                                   'resolved', NEW.resolved ->> 'canonical', 'reason', NEW.reason),
                NEW.resolved_by, NEW.resolved_by_role);
    ELSE
        RAISE insufficient_privilege USING MESSAGE = format('keying_log_write() logs keyings only, not %s', TG_RELID::regclass);
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION keying_log_write() FROM PUBLIC;
CREATE TRIGGER keying_entry_log AFTER INSERT OR UPDATE ON keying_entry
    FOR EACH ROW EXECUTE FUNCTION keying_log_write();
CREATE TRIGGER keying_resolution_log AFTER INSERT ON keying_resolution
    FOR EACH ROW EXECUTE FUNCTION keying_log_write();

CREATE TRIGGER keying_resolution_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON keying_resolution
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_statement(
        'a resolution is never changed: a new one for the same cell supersedes it');
CREATE TRIGGER keying_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON keying_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_statement(
        'the keying log is append-only; entries are never changed or removed');
"""

FUNCTIONS = """
-- The time of a sheet's row: row r starts at period_start + (r - row_origin) * row_step on the
-- sheet's clock (its time zone), so a local day is a local day across a change of daylight time.
CREATE FUNCTION keying_time(sheet keying_sheet, row_no integer)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (sheet.period_start + (row_no - sheet.row_origin) * sheet.row_step) AT TIME ZONE sheet.time_zone
$$;

-- The rule of double keying, once: per cell of a sheet, both keyings (by canonical value), the
-- newest resolution made for exactly that pair, the state, the value to store and its author.
CREATE FUNCTION keying_cells(p_sheet bigint)
RETURNS TABLE (cell text, first jsonb, second jsonb, state text, final jsonb, author text, note text,
               resolution_id bigint, resolved_by text, reason text)
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    WITH sheet AS (SELECT s.id, s.form, s.double_keying FROM keying_sheet AS s WHERE s.id = p_sheet),
    one AS (SELECT c.key, c.value FROM keying_entry AS e, jsonb_each(e.cells) AS c
            WHERE e.sheet_id = p_sheet AND e.keying = 1),
    two AS (SELECT c.key, c.value FROM keying_entry AS e, jsonb_each(e.cells) AS c
            WHERE e.sheet_id = p_sheet AND e.keying = 2),
    pairs AS (SELECT coalesce(one.key, two.key) AS cell, one.value AS first, two.value AS second
              FROM one FULL JOIN two ON one.key = two.key),
    judged AS (
        SELECT p.cell, p.first, p.second, r.id AS resolution_id, r.resolved, r.resolved_by, r.reason,
               CASE WHEN NOT sheet.double_keying THEN 'single'
                    WHEN (p.first ->> 'canonical') IS NOT DISTINCT FROM (p.second ->> 'canonical') THEN 'agreed'
                    WHEN r.id IS NOT NULL THEN 'resolved'
                    ELSE 'unresolved' END AS state,
               sheet.form, sheet.id AS sheet_id
        FROM pairs AS p CROSS JOIN sheet
        LEFT JOIN LATERAL (
            SELECT x.* FROM keying_resolution AS x
            WHERE x.sheet_id = p_sheet AND x.cell = p.cell
              AND (x.first ->> 'canonical') IS NOT DISTINCT FROM (p.first ->> 'canonical')
              AND (x.second ->> 'canonical') IS NOT DISTINCT FROM (p.second ->> 'canonical')
            ORDER BY x.id DESC LIMIT 1) AS r ON sheet.double_keying
    )
    SELECT j.cell, j.first, j.second, j.state,
           CASE j.state WHEN 'single' THEN j.first WHEN 'agreed' THEN j.first WHEN 'resolved' THEN j.resolved END,
           CASE WHEN j.state IN ('single', 'agreed') THEN j.first ->> 'by'
                WHEN j.state = 'resolved' AND j.resolved IS NULL THEN NULL
                WHEN j.state = 'resolved' AND (j.resolved ->> 'canonical') = (j.first ->> 'canonical')
                     THEN j.first ->> 'by'
                WHEN j.state = 'resolved' AND (j.resolved ->> 'canonical') = (j.second ->> 'canonical')
                     THEN j.second ->> 'by'
                WHEN j.state = 'resolved' THEN j.resolved_by END,
           CASE j.state
               WHEN 'single' THEN format('keyed by %s (form %s, sheet %s)', j.first ->> 'by', j.form, j.sheet_id)
               WHEN 'agreed' THEN format('keyed by %s, checked by %s (form %s, sheet %s)',
                                         j.first ->> 'by', j.second ->> 'by', j.form, j.sheet_id)
               WHEN 'resolved' THEN format('keyed by %s and %s (form %s, sheet %s); difference resolved by %s: %s',
                                           coalesce(j.first ->> 'by', '-'), coalesce(j.second ->> 'by', '-'),
                                           j.form, j.sheet_id, j.resolved_by, j.reason)
           END || coalesce('; kept despite a warning: ' ||
                           ((CASE WHEN j.state = 'resolved' THEN j.resolved ELSE j.first END) -> 'override' ->> 'reason'),
                           ''),
           j.resolution_id, j.resolved_by, j.reason
    FROM judged AS j
$$;

-- A sheet's values become observations (source keying) when it is ready, through the audited
-- write path, each under its author's name.  Run as the schema owner: the caller's role may not
-- write observation itself.  Refuses (SQLSTATE 55000) a sheet that is not ready.
CREATE FUNCTION keying_commit(p_sheet bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_sheet    keying_sheet%ROWTYPE;
    v_first    keying_entry%ROWTYPE;
    v_second   keying_entry%ROWTYPE;
    v_station  text;
    v_pending  integer;
    v_example  text;
    v_stray    text;
    v_source   smallint;
    v_author   text;
    v_written  integer := 0;
    v_kept     integer := 0;
    v_count    integer;
    v_caller   text := opencdms_writer();
    v_user     text := coalesce(current_setting('opencdms.user', true), '');
    v_reason   text := coalesce(current_setting('opencdms.reason', true), '');
BEGIN
    SELECT * INTO v_sheet FROM keying_sheet WHERE id = p_sheet FOR UPDATE;
    IF NOT FOUND THEN
        RAISE no_data_found USING MESSAGE = format('keying sheet %s does not exist', p_sheet);
    END IF;
    SELECT wigos_id INTO v_station FROM station WHERE id = v_sheet.station_id;
    SELECT * INTO v_first FROM keying_entry WHERE sheet_id = p_sheet AND keying = 1;
    IF NOT FOUND THEN
        RAISE object_not_in_prerequisite_state USING MESSAGE = format(
            'sheet %s (%s, station %s, %s) has not been keyed yet', p_sheet, v_sheet.form, v_station, v_sheet.period);
    END IF;
    IF v_sheet.double_keying THEN
        SELECT * INTO v_second FROM keying_entry WHERE sheet_id = p_sheet AND keying = 2;
        IF NOT FOUND THEN
            RAISE object_not_in_prerequisite_state USING MESSAGE = format(
                'sheet %s (%s, station %s, %s) is keyed twice: waiting for the second keying',
                p_sheet, v_sheet.form, v_station, v_sheet.period);
        END IF;
        -- Two people: two names, and (for hub users, who each have their own login) two logins.
        IF v_first.keyed_by = v_second.keyed_by
           OR (v_first.keyed_by_role = v_second.keyed_by_role
               AND EXISTS (SELECT 1 FROM hub_database_user WHERE role_name = v_first.keyed_by_role)) THEN
            RAISE object_not_in_prerequisite_state USING MESSAGE = format(
                'both keyings of sheet %s were made by %s (login %s): the second keying must be another person''s',
                p_sheet, v_first.keyed_by, v_first.keyed_by_role);
        END IF;
    END IF;
    SELECT count(*), min(c.cell) INTO v_pending, v_example FROM keying_cells(p_sheet) AS c WHERE c.state = 'unresolved';
    IF v_pending > 0 THEN
        RAISE object_not_in_prerequisite_state USING MESSAGE = format(
            'sheet %s (%s, station %s, %s) has %s unresolved difference(s) between its keyings (e.g. cell %s): '
            'a supervisor resolves each before the values become observations',
            p_sheet, v_sheet.form, v_station, v_sheet.period, v_pending, v_example);
    END IF;
    SELECT min(c.cell) INTO v_stray FROM keying_cells(p_sheet) AS c
    WHERE split_part(c.cell, '|', 1) !~ '^[0-9]{1,3}$'
       OR NOT (split_part(c.cell, '|', 1)::smallint = ANY (v_sheet.row_numbers))
       OR NOT (split_part(c.cell, '|', 2) = ANY (v_sheet.elements))
       OR (c.final IS NOT NULL AND jsonb_typeof(c.final -> 'value') NOT IN ('number', 'null'));
    IF v_stray IS NOT NULL THEN
        RAISE invalid_parameter_value USING MESSAGE = format(
            'sheet %s: cell %s is not a cell of the sheet (or its value is not a number)', p_sheet, v_stray);
    END IF;

    INSERT INTO source (name, description)
    VALUES ('keying', 'values keyed from paper forms in the data-entry app')
    ON CONFLICT (name) DO NOTHING;
    SELECT id INTO v_source FROM source WHERE name = 'keying';

    -- Values a QC reviewer decided on keep the decision (as a re-ingest does); counted here.
    SELECT count(*) INTO v_kept
    FROM keying_cells(p_sheet) AS c
    JOIN element AS e ON e.code = split_part(c.cell, '|', 2)
    JOIN observation AS o
      ON o.station_id = v_sheet.station_id AND o.element_id = e.id
     AND o.phenomenon_time = keying_time(v_sheet, split_part(c.cell, '|', 1)::integer)
     AND o.duration_seconds = v_sheet.duration_seconds AND o.level = v_sheet.level AND o.source_id = v_source
    WHERE c.final IS NOT NULL AND o.result_quality ? 'manual'
      AND o.value IS DISTINCT FROM CAST(c.final ->> 'value' AS double precision);

    FOR v_author IN SELECT DISTINCT c.author FROM keying_cells(p_sheet) AS c
                    WHERE c.final IS NOT NULL ORDER BY 1 LOOP
        -- The audit triggers name the author of these values (observation_stamp, the history).
        PERFORM set_config('opencdms.user', v_author, true);
        PERFORM set_config('opencdms.reason', format('keyed from form %s, sheet %s (station %s, %s)',
                                                     v_sheet.form, p_sheet, v_station, v_sheet.period), true);
        INSERT INTO observation AS o (station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                                      value, result_quality, changed_by, comment)
        SELECT v_sheet.station_id, e.id,
               keying_time(v_sheet, split_part(c.cell, '|', 1)::integer),
               v_sheet.duration_seconds, v_sheet.level, v_source,
               CAST(c.final ->> 'value' AS double precision),
               CASE WHEN c.final ? 'flag'
                    THEN jsonb_build_object('ingest', jsonb_strip_nulls(jsonb_build_object(
                        'flag', c.final -> 'flag', 'days', c.final -> 'days')))
                    ELSE '{}'::jsonb END,
               v_author, c.note
        FROM keying_cells(p_sheet) AS c
        JOIN element AS e ON e.code = split_part(c.cell, '|', 2)
        WHERE c.final IS NOT NULL AND c.author = v_author
        ORDER BY 2, 3
        ON CONFLICT (station_id, element_id, phenomenon_time, duration_seconds, level, source_id) DO UPDATE
            SET value = EXCLUDED.value,
                result_quality = (o.result_quality - 'ingest') || EXCLUDED.result_quality,
                comment = EXCLUDED.comment,
                status = 'latest'
            WHERE NOT (o.result_quality ? 'manual')
              AND (o.value IS DISTINCT FROM EXCLUDED.value
                   OR o.result_quality -> 'ingest' IS DISTINCT FROM EXCLUDED.result_quality -> 'ingest'
                   OR o.comment IS DISTINCT FROM EXCLUDED.comment
                   OR o.status <> 'latest');
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_written := v_written + v_count;
    END LOOP;
    PERFORM set_config('opencdms.user', v_user, true);
    PERFORM set_config('opencdms.reason', v_reason, true);

    UPDATE keying_sheet SET status = 'committed', committed_at = now(), committed_by = v_caller WHERE id = p_sheet;
    INSERT INTO keying_log (sheet_id, action, detail, done_by, done_by_role)
    VALUES (p_sheet, 'committed',
            jsonb_build_object('written', v_written, 'kept_decided', v_kept,
                               'cells', (SELECT count(*) FROM keying_cells(p_sheet) AS c WHERE c.final IS NOT NULL)),
            v_caller, session_user);
    RETURN v_written;
END
$$;
REVOKE EXECUTE ON FUNCTION keying_commit(bigint) FROM PUBLIC;

-- What is stored for a sheet's cells (current rows and the versions they superseded), for
-- clerks, whose role may not read observation: only the cells of the sheet, source keying.
CREATE FUNCTION keying_observations(p_sheet bigint)
RETURNS TABLE (cell text, is_current boolean, version integer, value double precision, result_quality jsonb,
               status text, changed_at timestamptz, changed_by text, comment text, superseded_at timestamptz,
               superseded_by text, superseded_by_role text, reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    WITH keyed AS (SELECT id FROM source WHERE name = 'keying'),
    grid AS (
        SELECT r.row_no || '|' || e.code AS cell, s.station_id, e.id AS element_id, s.duration_seconds, s.level,
               keying_time(s, r.row_no) AS phenomenon_time
        FROM keying_sheet AS s
        CROSS JOIN LATERAL unnest(s.row_numbers) AS r (row_no)
        CROSS JOIN LATERAL unnest(s.elements) AS x (code)
        JOIN element AS e ON e.code = x.code
        WHERE s.id = p_sheet
    )
    SELECT g.cell, true, o.version, o.value, o.result_quality, o.status, o.changed_at, o.changed_by, o.comment,
           NULL::timestamptz, NULL::text, NULL::text, NULL::text
    FROM grid AS g JOIN observation AS o
      ON o.station_id = g.station_id AND o.element_id = g.element_id AND o.phenomenon_time = g.phenomenon_time
     AND o.duration_seconds = g.duration_seconds AND o.level = g.level AND o.source_id = (SELECT id FROM keyed)
    UNION ALL
    SELECT g.cell, false, h.version, h.value, h.result_quality, h.status, h.changed_at, h.changed_by, h.comment,
           h.superseded_at, h.superseded_by, h.superseded_by_role, h.reason
    FROM grid AS g JOIN observation_history AS h
      ON h.station_id = g.station_id AND h.element_id = g.element_id AND h.phenomenon_time = g.phenomenon_time
     AND h.duration_seconds = g.duration_seconds AND h.level = g.level AND h.source_id = (SELECT id FROM keyed)
$$;
REVOKE EXECUTE ON FUNCTION keying_observations(bigint) FROM PUBLIC;
"""

DOWNGRADE = """
DROP FUNCTION keying_observations(bigint), keying_commit(bigint), keying_cells(bigint),
              keying_time(keying_sheet, integer);
DROP TABLE keying_log, keying_resolution, keying_entry, keying_sheet;
DROP FUNCTION keying_log_write(), keying_resolution_stamp(), keying_entry_stamp(), keying_sheet_fixed();
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(TRIGGERS)
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute(DOWNGRADE)
