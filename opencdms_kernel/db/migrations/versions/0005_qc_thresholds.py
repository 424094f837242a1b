"""QC thresholds from a station's own history: resolution, provenance, fallbacks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

- ``qc_threshold.resolution`` (persistence): how finely the values a run limit was made for
  are recorded.  A run of equal values is normally longer in whole hPa than in tenths, so a
  run in values recorded more coarsely than its rule assumes is judged against the runs the
  series itself has (see qc/persistence.py).
- ``qc_threshold.min_difference`` (spatial): a value closer than this to what its neighbours
  say is never an outlier, whatever its z-score.  Where neighbours agree within a few
  tenths, a z-score alone flags the 2 K a local shower takes off one station's maximum.
- ``qc_threshold.history_values``: how many values of the station's history a derived
  threshold came from (NULL: not derived).  Provenance only: it is not compared when a
  derivation decides whether a threshold changed.
- ``qc_run.fallbacks``: per test and series, the values judged by a network or global
  threshold instead of the station's own, and why (history too short, none derived).
- The network persistence defaults of 0002 get a new version that states the resolution
  they assume, the spatial ones a new version with a minimum difference of 3 K (rules are
  never edited: a change is a new version).  A default an operator has already changed is
  left alone.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEED_0002 = "seed: network default (migration 0002)"
SEED_METHOD = "seed: network default (migration 0005)"
# The recording resolution each element's seeded run limit assumes (the element's units).
# Spatial: the smallest difference from the neighbours that can be an outlier (K).
MIN_DIFFERENCE = {"TMAX": 3.0, "TMIN": 3.0, "TMEAN": 3.0}
RESOLUTIONS = {
    "TMAX": 0.1, "TMIN": 0.1, "TMEAN": 0.1, "TDEW": 0.1, "PRCP": 0.1, "RH": 1.0, "PRES": 0.1,
    "MSLP": 0.1, "WSPD": 0.1, "WDIR": 1.0, "WGUST": 0.1, "SUN": 0.1, "EVAP": 0.1,
}

UPGRADE = """
ALTER TABLE qc_threshold
    ADD COLUMN resolution double precision CHECK (resolution > 0),
    ADD COLUMN min_difference double precision CHECK (min_difference > 0),
    ADD COLUMN history_values integer CHECK (history_values >= 0);
COMMENT ON COLUMN qc_threshold.min_difference IS
    'spatial: a value closer than this to what its neighbours say is never an outlier';
COMMENT ON COLUMN qc_threshold.resolution IS
    'persistence: the recording resolution (step between possible values) the run limit assumes';
COMMENT ON COLUMN qc_threshold.history_values IS
    'derived thresholds: how many values of the station''s history they came from';
ALTER TABLE qc_run ADD COLUMN fallbacks jsonb NOT NULL DEFAULT '[]'::jsonb;
COMMENT ON COLUMN qc_run.fallbacks IS
    'per test and series: values judged by a network or global threshold, and why';
"""

# New versions of the seeded persistence defaults still in force as seeded (or as this
# migration seeded them, when a downgrade took the column that held their resolution).
SEED_RESOLUTION = """
WITH resolution (code, resolution) AS (SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:resolutions AS float8[]))),
current AS (
    SELECT DISTINCT ON (test, element_id, station_id, month, duration_seconds) q.*
    FROM qc_threshold AS q
    WHERE q.test = 'persistence'
    ORDER BY test, element_id, station_id, month, duration_seconds, version DESC
)
INSERT INTO qc_threshold (test, element_id, station_id, month, duration_seconds, version, active,
                          severity, max_run, min_spread, exclude_value, max_gap_seconds, resolution,
                          method, reason)
SELECT c.test, c.element_id, c.station_id, c.month, c.duration_seconds, c.version + 1, c.active,
       c.severity, c.max_run, c.min_spread, c.exclude_value, c.max_gap_seconds, r.resolution,
       :method, 'states the recording resolution the run limit assumes'
FROM current AS c
JOIN element AS e ON e.id = c.element_id
JOIN resolution AS r ON r.code = e.code
WHERE c.active AND c.station_id IS NULL
  AND (c.method = :seeded OR (c.method = :method AND c.resolution IS NULL))
"""

SEED_MIN_DIFFERENCE = """
WITH floor (code, min_difference) AS (SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:floors AS float8[]))),
current AS (
    SELECT DISTINCT ON (test, element_id, station_id, month, duration_seconds) q.*
    FROM qc_threshold AS q
    WHERE q.test = 'spatial'
    ORDER BY test, element_id, station_id, month, duration_seconds, version DESC
)
INSERT INTO qc_threshold (test, element_id, station_id, month, duration_seconds, version, active,
                          severity, radius_km, min_neighbours, max_z, min_difference, method, reason)
SELECT c.test, c.element_id, c.station_id, c.month, c.duration_seconds, c.version + 1, c.active,
       c.severity, c.radius_km, c.min_neighbours, c.max_z, f.min_difference,
       :method, 'a z-score alone flags differences of a local shower where neighbours agree closely'
FROM current AS c
JOIN element AS e ON e.id = c.element_id
JOIN floor AS f ON f.code = e.code
WHERE c.active AND c.station_id IS NULL
  AND (c.method = :seeded OR (c.method = :method AND c.min_difference IS NULL))
"""

DOWNGRADE = """
ALTER TABLE qc_run DROP COLUMN fallbacks;
ALTER TABLE qc_threshold DROP COLUMN history_values, DROP COLUMN min_difference, DROP COLUMN resolution;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.get_bind().execute(sa.text(SEED_RESOLUTION), {
        "codes": list(RESOLUTIONS), "resolutions": list(RESOLUTIONS.values()),
        "method": SEED_METHOD, "seeded": SEED_0002,
    })
    op.get_bind().execute(sa.text(SEED_MIN_DIFFERENCE), {
        "codes": list(MIN_DIFFERENCE), "floors": list(MIN_DIFFERENCE.values()),
        "method": SEED_METHOD, "seeded": SEED_0002,
    })


def downgrade() -> None:
    # Rule rows are immutable (a trigger refuses DELETE): the seeded versions stay, and the
    # columns that held their resolution and minimum difference go.
    op.execute(DOWNGRADE)
