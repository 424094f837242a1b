"""SQLAlchemy Core description of the datastore, used to build queries.

The database itself is created by the alembic migrations in ``migrations/``; a test compares
this metadata with a migrated database so that the two cannot drift apart.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = sa.MetaData()

station = sa.Table(
    "station",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("wigos_id", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("latitude", sa.Double, nullable=False),
    sa.Column("longitude", sa.Double, nullable=False),
    sa.Column("elevation", sa.Double),
    sa.Column("territory", sa.Text),
    sa.Column("wmo_region", sa.Text),
    sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("status", sa.Text, nullable=False, server_default="operational"),
    sa.Column("opened", sa.Date),
    sa.Column("closed", sa.Date),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

element = sa.Table(
    "element",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("code", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("standard_name", sa.Text, nullable=False),
    sa.Column("cell_method", sa.Text),
    sa.Column("units", sa.Text, nullable=False),
    sa.Column("valid_min", sa.Double),
    sa.Column("valid_max", sa.Double),
)

source = sa.Table(
    "source",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("description", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

OBSERVATION_KEY = (
    "station_id",
    "element_id",
    "phenomenon_time",
    "duration_seconds",
    "level",
    "source_id",
)


def _observation_columns() -> list[sa.Column]:
    """Columns shared by ``observation`` and ``observation_history`` (the versioned row)."""
    return [
        sa.Column("station_id", sa.Integer, nullable=False),
        sa.Column("element_id", sa.SmallInteger, nullable=False),
        sa.Column("phenomenon_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Integer, nullable=False),
        sa.Column("level", sa.REAL, nullable=False),
        sa.Column("source_id", sa.SmallInteger, nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("result_quality", JSONB, nullable=False),
        sa.Column("qc_status", sa.Text, nullable=False),
        sa.Column("final_flag", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("comment", sa.Text),
        # The ingest (ledger entry) that delivered this version's value, if one did (0004).
        sa.Column("ingest_id", sa.BigInteger),
    ]


observation = sa.Table(
    "observation",
    metadata,
    *_observation_columns(),
    sa.PrimaryKeyConstraint(*OBSERVATION_KEY),
    # References to station, element and source are enforced by statement-level triggers
    # (see the initial migration), not by FOREIGN KEY constraints.
)

observation_history = sa.Table(
    "observation_history",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("operation", sa.Text, nullable=False),
    *_observation_columns(),
    sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("superseded_by", sa.Text, nullable=False),
    # The database role that logged in (migration 0003; NULL in entries written before it).
    sa.Column("superseded_by_role", sa.Text),
    sa.Column("reason", sa.Text),
)

# The rows of ``station`` that an UPDATE or DELETE superseded (migration 0008), append-only.
station_history = sa.Table(
    "station_history",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("operation", sa.Text, nullable=False),
    sa.Column("station_id", sa.Integer, nullable=False),
    sa.Column("wigos_id", sa.Text, nullable=False),
    sa.Column("old_row", JSONB, nullable=False),
    sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("superseded_by", sa.Text, nullable=False),
    sa.Column("superseded_by_role", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
)

# The installation's database roles (migration 0003, db/roles.py).
database_role = sa.Table(
    "database_role",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("role_name", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Hub users and their own database login roles (migration 0007, db/roles.py).
hub_database_user = sa.Table(
    "hub_database_user",
    metadata,
    sa.Column("role_name", sa.Text, primary_key=True),
    sa.Column("hub_user", sa.Text, nullable=False, unique=True),
    sa.Column("hub_role", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

ingest_ledger = sa.Table(
    "ingest_ledger",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("checksum", sa.Text, nullable=False),
    sa.Column("mapping", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("rows_read", sa.Integer),
    sa.Column("rows_inserted", sa.Integer),
    sa.Column("rows_updated", sa.Integer),
    sa.Column("rows_unchanged", sa.Integer),
    sa.Column("rows_rejected", sa.Integer),
    sa.Column("reject_report", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("ingested_by", sa.Text, nullable=False),
    # 0004: the mapping's content, a unique id (report keys), when the load committed, what
    # the reader left out, and who undid the load.
    sa.Column("mapping_digest", sa.Text),
    sa.Column("load_uid", UUID(as_uuid=True), nullable=False, server_default=sa.func.gen_random_uuid()),
    sa.Column("loaded_at", sa.DateTime(timezone=True)),
    sa.Column("warnings", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("reverted_at", sa.DateTime(timezone=True)),
    sa.Column("reverted_by", sa.Text),
)

job = sa.Table(
    "job",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.func.gen_random_uuid()),
    sa.Column("process", sa.Text, nullable=False),
    sa.Column("parameters", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="accepted"),
    sa.Column("message", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("outputs", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # 0006: the job table is also the queue the workers claim from (notebooks/jobs.py).
    sa.Column("idempotency_key", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("worker", sa.Text),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("requested_by", "idempotency_key", name="job_idempotency_key"),
)

archive_export = sa.Table(
    "archive_export",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
    sa.Column("partitions", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Data entry (migration 0009, opencdms_kernel/keying/): a sheet is one form for one station and
# period; its keyings are held apart until they agree or a supervisor resolves each difference.
keying_sheet = sa.Table(
    "keying_sheet",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("form", sa.Text, nullable=False),
    sa.Column("station_id", sa.Integer, sa.ForeignKey("station.id"), nullable=False),
    sa.Column("period", sa.Text, nullable=False),
    sa.Column("period_start", sa.DateTime(timezone=False), nullable=False),
    sa.Column("row_step", sa.Interval, nullable=False),
    sa.Column("row_origin", sa.SmallInteger, nullable=False),
    sa.Column("row_numbers", ARRAY(sa.SmallInteger), nullable=False),
    sa.Column("time_zone", sa.Text, nullable=False),
    sa.Column("duration_seconds", sa.Integer, nullable=False),
    sa.Column("level", sa.REAL, nullable=False),
    sa.Column("elements", ARRAY(sa.Text), nullable=False),
    sa.Column("double_keying", sa.Boolean, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="keying"),
    sa.Column("committed_at", sa.DateTime(timezone=True)),
    sa.Column("committed_by", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.UniqueConstraint("form", "station_id", "period", name="keying_sheet_once"),
)

keying_entry = sa.Table(
    "keying_entry",
    metadata,
    sa.Column("sheet_id", sa.BigInteger, sa.ForeignKey("keying_sheet.id"), primary_key=True),
    sa.Column("keying", sa.SmallInteger, primary_key=True),
    sa.Column("keyed_by", sa.Text, nullable=False),
    sa.Column("keyed_by_role", sa.Text, nullable=False),
    sa.Column("cells", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("saved_by", sa.Text, nullable=False),
)

keying_resolution = sa.Table(
    "keying_resolution",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("sheet_id", sa.BigInteger, sa.ForeignKey("keying_sheet.id"), nullable=False),
    sa.Column("cell", sa.Text, nullable=False),
    sa.Column("first", JSONB),
    sa.Column("second", JSONB),
    sa.Column("resolved", JSONB),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("resolved_by", sa.Text, nullable=False),
    sa.Column("resolved_by_role", sa.Text, nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

keying_log = sa.Table(
    "keying_log",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("sheet_id", sa.BigInteger, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("keying", sa.SmallInteger),
    sa.Column("version", sa.Integer),
    sa.Column("cell", sa.Text),
    sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("done_by", sa.Text, nullable=False),
    sa.Column("done_by_role", sa.Text, nullable=False),
    sa.Column("done_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
