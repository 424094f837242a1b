"""What the products need from the datastore besides the archive: the stations' time zones.

The archive holds observations only; until it carries a ``stations`` view, the station-local
day comes from the ``station`` table (its ``timezone`` column), read here in one query.
"""

from __future__ import annotations

import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import station


def station_timezones(datastore: Datastore) -> dict[str, str]:
    """WIGOS id -> IANA time zone of every station (for the ``timezones`` parameter)."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.select(station.c.wigos_id, station.c.timezone)).all()
    return {wigos_id: zone for wigos_id, zone in rows if zone}
