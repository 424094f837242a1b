"""Alembic environment: migrations run on the connection handed over by opencdms_kernel.db.migrate."""

from alembic import context

import opencdms_kernel.qc.tables  # noqa: F401  (the QC tables join the metadata)
from opencdms_kernel.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
