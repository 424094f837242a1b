"""How the demo's CSV files are written: fixed-point text from scaled integers, unquoted CSV.

Values are held as integers (value × 10**decimals) until they are written, so the text in a
file round-trips exactly to the value the manifest of injected errors records, and no float
is formatted in a Python loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# The header of every demo stations.csv: the columns `opencdms stations import` reads.
STATIONS_HEADER = (
    "wigos_id", "name", "latitude", "longitude", "elevation", "territory",
    "wmo_region", "timezone", "status", "opened", "closed",
)
# The header of every daily file in long form (one value per line).
DAILY_HEADER = ("station", "element", "time", "value")


def scaled_integers(values: np.ndarray, decimals: int) -> np.ndarray:
    """Round floats to ``decimals`` and return them as scaled integers (value × 10**decimals)."""
    return np.rint(np.asarray(values) * 10**decimals).astype(np.int64)


def format_scaled(scaled: np.ndarray, decimals: int, missing: np.ndarray | None = None) -> pa.Array:
    """Format integers holding value * 10**decimals as fixed-point strings ("%.Nf").

    Working on integers avoids float formatting in a Python loop and guarantees the
    text round-trips to the value recorded in the manifest.  ``missing`` entries
    become nulls, which the CSV writer emits as empty fields.
    """
    scaled = np.asarray(scaled, dtype=np.int64)
    magnitude = np.abs(scaled)
    unit = 10**decimals
    sign = pc.if_else(pa.array(scaled < 0), "-", "")
    whole = pc.cast(pa.array(magnitude // unit), pa.string())
    if decimals:
        fraction = pc.utf8_lpad(pc.cast(pa.array(magnitude % unit), pa.string()), decimals, "0")
        text = pc.binary_join_element_wise(sign, whole, ".", fraction, "")
    else:
        text = pc.binary_join_element_wise(sign, whole, "")
    if missing is not None and missing.any():
        text = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text)
    return text


def write_csv(path: Path, columns: dict[str, pa.Array]) -> None:
    """Write string columns as an unquoted CSV with a plain header and ``\\n`` line ends."""
    options = pacsv.WriteOptions(quoting_style="none", quoting_header="none", eol="\n", batch_size=1 << 16)
    pacsv.write_csv(pa.table(columns), path, options)
