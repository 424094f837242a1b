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
    assert [r.wigos_id for r in parse_stations(str(exported), exported.read_text())] == [
        "0-20000-0-60001", "0-20000-0-60002"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wigos_id,name,latitude\n", "missing required column(s) longitude"),
        ("wigos_id,name,latitude,longitude\n60001,Alpha,0,0\n", "line 2: column 'wigos_id'"),
        ("wigos_id,name,latitude,longitude\n0-20000-0-1,A,0,0\n0-20000-0-2,B,95,0\n", "line 3: column 'latitude'"),
        ("wigos_id,name,latitude,longitude\n0-20000-0-1,A,north,0\n", "line 2: column 'latitude': 'north'"),
        ("wigos_id,name,latitude,longitude,timezone\n0-20000-0-1,A,0,0,Africa/Nairobbi\n",
         "line 2: column 'timezone': 'Africa/Nairobbi'"),
        ("wigos_id,name,latitude,longitude\n0-70000-0-1,A,0,0\n", "the issuer and the issue number go from 0 to 65534"),
        ("wigos_id,name,latitude,longitude,opened,closed\n0-20000-0-1,A,0,0,2020-01-01,2019-01-01\n",
         "closed 2019-01-01 is before opened 2020-01-01"),
    ],
)
def test_bad_station_files_name_line_and_column(text: str, message: str) -> None:
    with pytest.raises(IngestFileError) as error:
        parse_stations("stations.csv", text)
    assert message in str(error.value)
    assert str(error.value).startswith("stations.csv")


WIS2BOX_LIST = """station_name,wigos_station_identifier,traditional_station_identifier,facility_type,latitude,longitude,elevation,barometer_height,territory_name,wmo_region
BALAKA,0-454-2-AWSBALAKA,AWSBALAKA,landFixed,-14.983333,34.966666,618,,MWI,africa
BENI-ABBES,0-20000-0-60602,60602,landFixed,30.12846,-2.14953,510,505.0,DZA,africa
"""


def test_wis2box_station_lists_import_and_export(datastore: Datastore, tmp_path: Path) -> None:
    from opencdms_kernel.stations import StationFormat

    path = tmp_path / "station_list.csv"
    path.write_text(WIS2BOX_LIST)
    assert import_stations(datastore, path) == 2
    with datastore.engine.connect() as connection:
        row = connection.execute(sa.text(
            "SELECT name, latitude, elevation, territory, wmo_region, timezone FROM station "
            "WHERE wigos_id = '0-454-2-AWSBALAKA'")).one()
    assert tuple(row) == ("BALAKA", -14.983333, 618.0, "MWI", "africa", "UTC")
    exported = export_stations(datastore, StationFormat.WIS2BOX)
    assert exported.splitlines()[0] == WIS2BOX_LIST.splitlines()[0]
    assert "BENI-ABBES,0-20000-0-60602,60602,landFixed,30.12846,-2.14953,510.0,,DZA,africa" in exported
    again = tmp_path / "again.csv"
    again.write_text(exported)
    assert [s.wigos_id for s in parse_stations(str(again), exported)] == ["0-20000-0-60602", "0-454-2-AWSBALAKA"]


def test_a_bad_wis2box_row_names_the_wis2box_column() -> None:
    text = WIS2BOX_LIST.replace("-14.983333", "south")
    with pytest.raises(IngestFileError, match="line 2: column 'latitude'"):
        parse_stations("station_list.csv", text)
    with pytest.raises(IngestFileError, match="line 2: column 'wigos_station_identifier'"):
        parse_stations("station_list.csv", WIS2BOX_LIST.replace("0-454-2-AWSBALAKA", "AWSBALAKA"))


def test_every_change_of_a_station_keeps_the_row_before_with_who_and_why(datastore: Datastore, tmp_path: Path) -> None:
    """Station metadata is audited like observations: an edit, a close and a changed import each
    leave the superseded row in the append-only history; an unchanged import leaves nothing."""
    from datetime import date

    from opencdms_kernel.stations import close_station, create_station, update_station

    create_station(datastore, {"wigos_id": "0-20000-0-77001", "name": "Kisumu", "latitude": -0.1,
                               "longitude": 34.8, "timezone": "Africa/Nairobi"}, user="ana")
    update_station(datastore, "0-20000-0-77001", {"name": "Kisumu Airport"}, user="ana", reason="renamed")
    close_station(datastore, "0-20000-0-77001", date(2024, 12, 31), user="ben", reason="moved")
    csv = tmp_path / "stations.csv"
    csv.write_text("wigos_id,name,latitude,longitude,timezone\n0-20000-0-77002,Eldoret,0.5,35.3,Africa/Nairobi\n")
    import_stations(datastore, csv)
    import_stations(datastore, csv)  # the same again: no change, no entry
    csv.write_text("wigos_id,name,latitude,longitude,timezone\n0-20000-0-77002,Eldoret Intl,0.5,35.3,Africa/Nairobi\n")
    import_stations(datastore, csv)
    with datastore.engine.connect() as connection:
        history = connection.execute(sa.text(
            "SELECT wigos_id, operation, old_row ->> 'name' AS name, superseded_by, reason "
            "FROM station_history ORDER BY id")).all()
        assert [tuple(row) for row in history] == [
            ("0-20000-0-77001", "UPDATE", "Kisumu", "ana", "renamed"),
            ("0-20000-0-77001", "UPDATE", "Kisumu Airport", "ben", "moved"),
            ("0-20000-0-77002", "UPDATE", "Eldoret", history[2].superseded_by, None),
        ]
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            connection.execute(sa.text("DELETE FROM station_history"))
