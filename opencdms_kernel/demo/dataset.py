"""The demo dataset: the files of the demo network, written into a folder, and read back.

:func:`generate_demo_data` writes ``stations.csv``, the daily climate stations' files
(TMAX, TMIN, PRCP in long form: ``daily/<wigos_id>.csv``), the hourly automatic weather
stations' files (wide form, in "foreign" units: ``aws/<wigos_id>_hourly.csv``) with their
ingest mapping (``aws/mapping.yaml``), and ``manifest.json``: the spec, the number of values
written and the errors injected into the daily files (:mod:`.injected_errors`).  The same
spec always yields byte-identical files (:mod:`.streams`).  :func:`read_demo_dataset` finds
a dataset written earlier from its manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.demo.aws import AWS_DECIMALS, AWS_HEADER, AWS_MAPPING_YAML, aws_series
from opencdms_kernel.demo.climate import DAILY_ELEMENTS, daily_station_values, regional_weather
from opencdms_kernel.demo.files import STATIONS_HEADER, format_scaled, scaled_integers, write_csv
from opencdms_kernel.demo.injected_errors import apply_errors, inject_errors, manifest_entries
from opencdms_kernel.demo.network import STATUS, TERRITORY, TIMEZONE, WMO_REGION, DemoSpec, Station, station_network
from opencdms_kernel.demo.streams import STREAM_MISSING, daily_dates, stream

MISSING_RATE = 0.002  # genuinely missing daily values per station and element


@dataclass(frozen=True)
class DemoDataset:
    """Paths of the files written by :func:`generate_demo_data`."""

    folder: Path
    stations_csv: Path  # folder/stations.csv
    daily_files: tuple[Path, ...]  # folder/daily/<wigos_id>.csv (long form)
    aws_files: tuple[Path, ...]  # folder/aws/<wigos_id>_hourly.csv (wide form)
    aws_mapping: Path  # folder/aws/mapping.yaml
    manifest: Path  # folder/manifest.json
    observation_count: int  # number of non-empty values written in all files


def _missing_mask(n_days: int, seed: int, station: int) -> np.ndarray:
    """Genuinely missing days, shape (elements, days): a fixed small number per element, >= 1."""
    mask = np.zeros((len(DAILY_ELEMENTS), n_days), dtype=bool)
    count = min(n_days, max(1, round(MISSING_RATE * n_days)))
    for e in range(len(DAILY_ELEMENTS)):
        rng = stream(seed, STREAM_MISSING, station, e)
        mask[e, rng.choice(n_days, size=count, replace=False)] = True
    return mask


def _stations_csv(daily: tuple[Station, ...], aws: tuple[Station, ...], daily_open: str, aws_open: str) -> bytes:
    """stations.csv content (names are comma-free by construction, so no quoting needed)."""
    lines = [",".join(STATIONS_HEADER)]
    for stations, opened in ((daily, daily_open), (aws, aws_open)):
        for st in stations:
            lines.append(",".join([
                st.wigos_id, st.name, f"{st.latitude:.5f}", f"{st.longitude:.5f}", f"{st.elevation:.1f}",
                TERRITORY, WMO_REGION, TIMEZONE, STATUS, opened, "",
            ]))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _manifest_json(spec: DemoSpec, observation_count: int, errors: list[dict[str, object]]) -> bytes:
    """manifest.json with one error entry per line (valid JSON, diff- and grep-friendly)."""
    head = json.dumps({"spec": asdict(spec), "observation_count": observation_count})[:-1]
    body = ",\n".join("  " + json.dumps(entry) for entry in errors)
    return (head + ', "errors": [\n' + body + ("\n" if errors else "") + "]}\n").encode("utf-8")


def _dataset(folder: Path, spec: DemoSpec, observation_count: int) -> DemoDataset:
    """The paths of the demo files of ``spec`` in ``folder`` (the layout of generate_demo_data)."""
    daily_stations, aws_stations = station_network(spec)
    return DemoDataset(
        folder=folder,
        stations_csv=folder / "stations.csv",
        daily_files=tuple(folder / "daily" / f"{st.wigos_id}.csv" for st in daily_stations),
        aws_files=tuple(folder / "aws" / f"{st.wigos_id}_hourly.csv" for st in aws_stations),
        aws_mapping=folder / "aws" / "mapping.yaml",
        manifest=folder / "manifest.json",
        observation_count=observation_count,
    )


def read_demo_dataset(folder: Path) -> tuple[DemoDataset, DemoSpec] | None:
    """The dataset :func:`generate_demo_data` wrote into ``folder`` and its spec, read from the
    manifest without writing anything; None when the folder holds none."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return None
    content = json.loads(manifest.read_text())
    spec = DemoSpec(**content["spec"])
    return _dataset(Path(folder), spec, content["observation_count"]), spec


def generate_demo_data(
    folder: Path, spec: DemoSpec = DemoSpec(), progress: Callable[[int, int], None] | None = None
) -> DemoDataset:
    """Write the demo network into ``folder`` and return the paths written.

    Files: ``stations.csv``, ``daily/<wigos_id>.csv``, ``aws/<wigos_id>_hourly.csv``,
    ``aws/mapping.yaml`` and ``manifest.json`` (see the module docstring for the
    error representation).  Existing files of the same name are overwritten; other
    files in ``folder`` are left alone.  ``progress(done, total)`` is called after
    each file is written.
    """
    folder = Path(folder)
    daily_stations, aws_stations = station_network(spec)
    layout = _dataset(folder, spec, 0)
    for subfolder in (folder / "daily", folder / "aws"):
        subfolder.mkdir(parents=True, exist_ok=True)
    total = 1 + len(daily_stations) + len(aws_stations) + 2
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    dates = daily_dates(spec.start_year, spec.years)
    aws_dates = daily_dates(spec.start_year + spec.years - spec.aws_years, spec.aws_years)
    n_days = dates.size

    aws_open = str(aws_dates[0]) if aws_dates.size else str(dates[0])
    layout.stations_csv.write_bytes(_stations_csv(daily_stations, aws_stations, str(dates[0]), aws_open))
    tick()

    # All true daily values in memory (50 x 3 x 11k int64 is ~13 MB) because error
    # placement needs the whole network at once.
    regional = regional_weather(spec, dates)
    values = np.stack([daily_station_values(st, i, dates, spec, regional) for i, st in enumerate(daily_stations)])
    missing = np.stack([_missing_mask(n_days, spec.seed, i) for i in range(len(daily_stations))])
    errors = inject_errors(values, missing, dates, spec)
    recorded = apply_errors(values, errors)

    date_text = pa.array(np.datetime_as_string(dates, unit="D"))
    time_column = pa.concat_arrays([date_text] * len(DAILY_ELEMENTS))
    element_column = pa.array(np.repeat(np.array(DAILY_ELEMENTS), n_days))
    observation_count = 0
    for i, (st, path) in enumerate(zip(daily_stations, layout.daily_files)):
        write_csv(path, {
            "station": pa.array(np.full(len(DAILY_ELEMENTS) * n_days, st.wigos_id)),
            "element": element_column,
            "time": time_column,
            "value": format_scaled(recorded[i].ravel(), 1, missing[i].ravel()),
        })
        observation_count += int((~missing[i]).sum())
        tick()

    datetime_column = pa.array([], pa.string())
    if aws_dates.size:
        hours = np.arange(aws_dates[0].astype("datetime64[m]"), (aws_dates[-1] + 1).astype("datetime64[m]"),
                          np.timedelta64(60, "m"))
        datetime_column = pc.replace_substring(pa.array(np.datetime_as_string(hours, unit="m")), "T", " ")
    for j, (st, path) in enumerate(zip(aws_stations, layout.aws_files)):
        series = aws_series(st, aws_dates, spec.start_year, spec.seed, j)
        columns = {"datetime": datetime_column}
        for name in AWS_HEADER[1:]:
            columns[name] = format_scaled(scaled_integers(series[name], AWS_DECIMALS[name]), AWS_DECIMALS[name])
        write_csv(path, columns)
        observation_count += len(series["air_temp"]) * (len(AWS_HEADER) - 1)
        tick()

    layout.aws_mapping.write_bytes(AWS_MAPPING_YAML.encode("utf-8"))
    tick()

    entries = manifest_entries(errors, daily_stations, dates)
    layout.manifest.write_bytes(_manifest_json(spec, observation_count, entries))
    tick()
    return replace(layout, observation_count=observation_count)
