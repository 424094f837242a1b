"""Station metadata import/export: upsert by WIGOS id, errors naming line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import IngestFileError
from opencdms_kernel.stations import export_stations, import_stations, parse_stations


def test_import_updates_by_wigos_id_and_export_reads_back(datastore: Datastore, tmp_path: Path) -> None:
    path = tmp_path / "stations.csv"
    path.write_text("wigos_id,name,latitude,longitude,elevation\n0-20000-0-60001,Alpha,-1.5,36.25,1650\n")
    assert import_stations(datastore, path) == 1
    path.write_text(
        "wigos_id,name,latitude,longitude,elevation,timezone\n"
        "0-20000-0-60001,Alpha Met,-1.5,36.25,1651,Africa/Nairobi\n"
        "0-20000-0-60002,Bravo,0.5,37.0,,\n"
    )
    assert import_stations(datastore, path) == 2
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT wigos_id, name, elevation, timezone FROM station ORDER BY 1")).all()
    assert [tuple(r) for r in rows] == [
        ("0-20000-0-60001", "Alpha Met", 1651.0, "Africa/Nairobi"),
        ("0-20000-0-60002", "Bravo", None, "UTC"),
    ]
    exported = tmp_path / "out.csv"
    exported.write_text(export_stations(datastore))
    assert [r["wigos_id"] for r in parse_stations(str(exported), exported.read_text())] == [
        "0-20000-0-60001", "0-20000-0-60002"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wigos_id,name,latitude\n", "missing required column(s) longitude"),
        ("wigos_id,name,latitude,longitude\n60001,Alpha,0,0\n", "line 2: column 'wigos_id'"),
        ("wigos_id,name,latitude,longitude\n0-20000-0-1,A,0,0\n0-20000-0-2,B,95,0\n", "line 3: column 'latitude'"),
        ("wigos_id,name,latitude,longitude\n0-20000-0-1,A,north,0\n", "'north' is not a number"),
    ],
)
def test_bad_station_files_name_line_and_column(text: str, message: str) -> None:
    with pytest.raises(IngestFileError) as error:
        parse_stations("stations.csv", text)
    assert message in str(error.value)
    assert str(error.value).startswith("stations.csv")
