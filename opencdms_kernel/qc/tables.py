"""SQLAlchemy Core description of the quality-control tables (created by migration 0002).

They join the datastore's ``metadata`` so that the schema-versus-migration test sees them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from opencdms_kernel.db.schema import metadata


def _rule_columns() -> list[sa.Column]:
    """Columns every versioned rule has: version, activity, severity, provenance."""
    return [
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("severity", sa.Text, nullable=False, server_default="suspect"),
    ]


def _provenance_columns() -> list[sa.Column]:
    return [
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("created_by", sa.Text, nullable=False, server_default=sa.func.opencdms_writer()),
    ]


qc_threshold = sa.Table(
    "qc_threshold",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("test", sa.Text, nullable=False),
    sa.Column("element_id", sa.SmallInteger, sa.ForeignKey("element.id"), nullable=False),
    sa.Column("station_id", sa.Integer, sa.ForeignKey("station.id")),
    sa.Column("month", sa.SmallInteger),
    sa.Column("duration_seconds", sa.Integer),
    *_rule_columns(),
    sa.Column("low", sa.Double),
    sa.Column("high", sa.Double),
    sa.Column("max_change", sa.Double),
    sa.Column("max_gap_seconds", sa.Integer),
    sa.Column("max_run", sa.Integer),
    sa.Column("min_spread", sa.Double),
    sa.Column("exclude_value", sa.Double),
    sa.Column("radius_km", sa.Double),
    sa.Column("min_neighbours", sa.Integer),
    sa.Column("max_z", sa.Double),
    sa.Column("resolution", sa.Double),
    sa.Column("min_difference", sa.Double),
    sa.Column("history_values", sa.Integer),
    *_provenance_columns(),
    sa.UniqueConstraint(
        "test", "element_id", "station_id", "month", "duration_seconds", "version",
        name="qc_threshold_scope_version", postgresql_nulls_not_distinct=True,
    ),
)

qc_relation = sa.Table(
    "qc_relation",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("left_element_id", sa.SmallInteger, sa.ForeignKey("element.id"), nullable=False),
    sa.Column("operator", sa.Text, nullable=False),
    sa.Column("right_element_id", sa.SmallInteger, sa.ForeignKey("element.id")),
    sa.Column("right_value", sa.Double),
    sa.Column("tolerance", sa.Double, nullable=False, server_default="0"),
    *_rule_columns(),
    *_provenance_columns(),
    sa.UniqueConstraint(
        "left_element_id", "operator", "right_element_id", "right_value", "version",
        name="qc_relation_scope_version", postgresql_nulls_not_distinct=True,
    ),
)

qc_run = sa.Table(
    "qc_run",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("status", sa.Text, nullable=False, server_default="running"),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("tests", ARRAY(sa.Text), nullable=False),
    sa.Column("station_ids", ARRAY(sa.Integer)),
    sa.Column("element_ids", ARRAY(sa.SmallInteger)),
    sa.Column("period_start", sa.DateTime(timezone=True)),
    sa.Column("period_end", sa.DateTime(timezone=True)),
    sa.Column("threshold_as_of", sa.BigInteger),
    sa.Column("relation_as_of", sa.BigInteger),
    sa.Column("data_as_of", sa.DateTime(timezone=True)),
    sa.Column("checked", sa.BigInteger),
    sa.Column("written", sa.BigInteger),
    sa.Column("stale", sa.BigInteger),
    sa.Column("counts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("skipped", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("fallbacks", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("error", sa.Text),
    sa.Column("seconds", sa.Double),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)
