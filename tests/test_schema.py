"""The migrations and the SQLAlchemy description of the schema agree, on both servers."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from opencdms_kernel.db import migrate
from opencdms_kernel.db.engine import Datastore
import opencdms_kernel.qc.tables  # noqa: F401  (the QC tables join the metadata)
from opencdms_kernel.db.schema import metadata


def test_migrated_database_matches_the_metadata(datastore: Datastore) -> None:
    assert migrate.current_revision(datastore) == migrate.head_revision()
    with datastore.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    # Server defaults and index details are the migration's business; tables, columns and
    # their types must match what the code queries.
    significant = [d for d in differences if d[0] in ("add_table", "remove_table", "add_column", "remove_column")
                   or (isinstance(d, list) and d[0][0] in ("modify_type", "modify_nullable"))]
    assert significant == []


def test_elements_are_seeded_with_units_and_ranges(datastore: Datastore) -> None:
    with datastore.engine.connect() as connection:
        rows = {row.code: row for row in connection.execute(sa.text("SELECT * FROM element"))}
    expected = {"TMAX", "TMIN", "TMEAN", "PRCP", "WSPD", "WDIR", "WGUST", "PRES", "MSLP", "RH",
                "TDEW", "SUN", "SNWD", "EVAP", "TSOIL"}
    assert expected <= set(rows)
    assert rows["TMAX"].standard_name == "air_temperature" and rows["TMAX"].units == "degC"
    assert rows["PRCP"].valid_min == 0
    assert all(row.valid_min < row.valid_max for row in rows.values())


def test_upgrade_is_idempotent(datastore: Datastore) -> None:
    assert migrate.upgrade(datastore) == migrate.head_revision()
    assert migrate.upgrade(datastore) == migrate.head_revision()
