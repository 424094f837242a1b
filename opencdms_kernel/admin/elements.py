"""The elements as the datastore keeps them, for the administration's read-only list.

Elements are seeded from ``db/elements.csv`` by migration 0001 (the vocabulary's element list);
the kernel has no writer for them yet, so the administration shows them and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import element


@dataclass(frozen=True)
class ElementRow:
    """One row of the ``element`` table: code, names, cell method, units, physical range."""

    code: str
    name: str
    standard_name: str
    cell_method: str | None
    units: str
    valid_min: float | None
    valid_max: float | None


def list_elements(datastore: Datastore) -> list[ElementRow]:
    """Every element of the datastore, by code."""
    columns = [element.c[name] for name in ElementRow.__dataclass_fields__]
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.select(*columns).order_by(element.c.code)).all()
    return [ElementRow(*row) for row in rows]
