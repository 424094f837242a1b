"""ETCCDI climate indices per station through xclim, from the daily values of the archive.

The daily TMAX, TMIN and PRCP values are the products' days (:func:`~.days.station_days`: the
station-local day, the one rule for choosing between sources, days made from sub-daily values,
the QC policy), laid out as dense station x day arrays (NaN where a day has no value) — the
shape xarray and xclim want — with numpy index arithmetic, not a loop over rows.

Missing data: the product's :class:`CompletenessRule` is handed to xclim as its own
missing-value check (:func:`~.completeness.xclim_missing`: ``MissingWMO`` with the rule's
numbers, ``MissingAny`` where a month must be complete), so indices follow the same rule as
the monthly summaries: a monthly index is given when its month meets the rule (for
multi-input indices, counting a day missing when any input is), an annual index when all
twelve months do; counts of days, totals and spell lengths need complete months when
``totals_require_complete`` (a missing day could have been frost or rain).  Each row says how
many suspect values its days used and how many values the QC policy excluded.

Indices (ETCCDI definitions, thresholds fixed by the definitions): TXx, TXn, TNx, TNn, DTR,
FD, ID, SU, TR, R10mm, R20mm, CDD, CWD, PRCPTOT, SDII, Rx1day, Rx5day.  Percentile-based
indices (TX90p, WSDI …) need a base-period climatology and are not computed here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.products.completeness import xclim_missing
from opencdms_kernel.products.days import station_days
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    SUB_DAILY_RULE,
    WMO_MONTHLY_RULE,
    CompletenessRule,
    Element,
    Period,
    Product,
    ProductKind,
    ProductParameterError,
    QcPolicy,
    check_period,
)
from opencdms_kernel.products.sql import Selection, select
from opencdms_kernel.products.summaries import check_rule, qc_note, qc_summary
from opencdms_kernel.vocabulary import elements

DAY_US = 86_400_000_000


class Frequency(StrEnum):
    ANNUAL = "annual"
    MONTHLY = "monthly"

    @property
    def xclim(self) -> str:
        return "YS" if self is Frequency.ANNUAL else "MS"


class IndexKind(StrEnum):
    """How missing days affect an index: extremes and means follow the 3/5-style rule;
    counts, totals and spells need complete months when the rule says totals do."""

    EXTREME = "extreme"
    MEAN = "mean"
    COUNT = "count"
    TOTAL = "total"

    @property
    def strict(self) -> bool:
        return self in (IndexKind.COUNT, IndexKind.TOTAL)


TX, TN, PR = Element.TMAX, Element.TMIN, Element.PRCP
Inputs = Mapping[Element, "object"]  # element -> xarray.DataArray


@dataclass(frozen=True)
class IndexDefinition:
    """One climate index: ETCCDI name, inputs, frequencies it is defined at, kind, units."""

    name: str
    description: str
    inputs: tuple[Element, ...]
    frequencies: tuple[Frequency, ...]
    kind: IndexKind
    units: str
    compute: Callable[[Inputs, str], "object"]
    # What xclim's result is converted to before it is labelled ``units``: the same, except
    # that a highest daily rate (mm/day) is the amount of that day (mm).
    xclim_units: str | None = None


def _atmos():
    """xclim's indicators, imported when first needed (importing xclim takes seconds)."""
    with warnings.catch_warnings():
        # cf_xarray warns that matplotlib is missing; plotting is not used here.
        warnings.simplefilter("ignore")
        from xclim import atmos

    return atmos


BOTH = (Frequency.ANNUAL, Frequency.MONTHLY)
ANNUAL = (Frequency.ANNUAL,)

INDICES: dict[str, IndexDefinition] = {
    d.name: d
    for d in (
        IndexDefinition("TXx", "highest daily maximum temperature", (TX,), BOTH, IndexKind.EXTREME, "degC",
                        lambda x, f: _atmos().tx_max(tasmax=x[TX], freq=f)),
        IndexDefinition("TXn", "lowest daily maximum temperature", (TX,), BOTH, IndexKind.EXTREME, "degC",
                        lambda x, f: _atmos().tx_min(tasmax=x[TX], freq=f)),
        IndexDefinition("TNx", "highest daily minimum temperature", (TN,), BOTH, IndexKind.EXTREME, "degC",
                        lambda x, f: _atmos().tn_max(tasmin=x[TN], freq=f)),
        IndexDefinition("TNn", "lowest daily minimum temperature", (TN,), BOTH, IndexKind.EXTREME, "degC",
                        lambda x, f: _atmos().tn_min(tasmin=x[TN], freq=f)),
        IndexDefinition("DTR", "mean daily temperature range (TX - TN)", (TX, TN), BOTH, IndexKind.MEAN, "K",
                        lambda x, f: _atmos().daily_temperature_range(tasmin=x[TN], tasmax=x[TX], freq=f)),
        IndexDefinition("FD", "frost days: TN < 0 degC", (TN,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().frost_days(tasmin=x[TN], thresh="0 degC", freq=f)),
        IndexDefinition("ID", "icing days: TX < 0 degC", (TX,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().ice_days(tasmax=x[TX], thresh="0 degC", freq=f)),
        IndexDefinition("SU", "summer days: TX > 25 degC", (TX,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().tx_days_above(tasmax=x[TX], thresh="25 degC", op=">", freq=f)),
        IndexDefinition("TR", "tropical nights: TN > 20 degC", (TN,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().tropical_nights(tasmin=x[TN], thresh="20 degC", op=">", freq=f)),
        IndexDefinition("R10mm", "days with PRCP >= 10 mm", (PR,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().wetdays(pr=x[PR], thresh="10 mm/day", op=">=", freq=f)),
        IndexDefinition("R20mm", "days with PRCP >= 20 mm", (PR,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().wetdays(pr=x[PR], thresh="20 mm/day", op=">=", freq=f)),
        IndexDefinition("CDD", "longest spell of days with PRCP < 1 mm", (PR,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().maximum_consecutive_dry_days(pr=x[PR], thresh="1 mm/day", op="<", freq=f)),
        IndexDefinition("CWD", "longest spell of days with PRCP >= 1 mm", (PR,), ANNUAL, IndexKind.COUNT, "days",
                        lambda x, f: _atmos().maximum_consecutive_wet_days(pr=x[PR], thresh="1 mm/day", op=">=", freq=f)),
        IndexDefinition("PRCPTOT", "total PRCP on days with PRCP >= 1 mm", (PR,), ANNUAL, IndexKind.TOTAL, "mm",
                        lambda x, f: _atmos().wet_precip_accumulation(pr=x[PR], thresh="1 mm/day", freq=f)),
        IndexDefinition("SDII", "mean PRCP on days with PRCP >= 1 mm", (PR,), ANNUAL, IndexKind.MEAN, "mm d-1",
                        lambda x, f: _atmos().daily_pr_intensity(pr=x[PR], thresh="1 mm/day", freq=f)),
        IndexDefinition("Rx1day", "highest 1-day PRCP", (PR,), BOTH, IndexKind.EXTREME, "mm",
                        lambda x, f: _atmos().max_1day_precipitation_amount(pr=x[PR], freq=f), "mm d-1"),
        IndexDefinition("Rx5day", "highest 5-day PRCP (window ending in the period)", (PR,), BOTH, IndexKind.EXTREME, "mm",
                        lambda x, f: _atmos().max_n_day_precipitation_amount(pr=x[PR], window=5, freq=f)),
    )
}


def _input_attrs(element: Element, **changed: str) -> dict[str, str]:
    """The CF attributes xclim checks on an input, from the element's vocabulary entry."""
    known = elements()[element.value]
    return {"units": known.units, "standard_name": known.standard_name,
            "cell_methods": f"{known.cell_method} within days"} | changed


# xclim takes precipitation as a flux: each day's amount per day.
_INPUT_ATTRS = {
    TX: _input_attrs(TX),
    TN: _input_attrs(TN),
    PR: _input_attrs(PR, units=f"{elements()[PR.value].units} d-1", standard_name="precipitation_flux"),
}

INDEX_SCHEMA = pa.schema(
    [
        ("wigos_id", pa.string()),
        ("index", pa.string()),
        ("frequency", pa.string()),
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("value", pa.float64()),
        ("units", pa.string()),
        ("meets_rule", pa.bool_()),
        ("suspect_values", pa.int32()),
        ("excluded_values", pa.int32()),
    ]
)


def _check_indices(names: Sequence[str] | str | None) -> tuple[IndexDefinition, ...]:
    if names is None:
        return tuple(INDICES.values())
    if isinstance(names, str):
        names = (names,)
    by_lower = {name.lower(): d for name, d in INDICES.items()}
    chosen = []
    for name in names:
        found = by_lower.get(str(name).strip().lower())
        if found is None:
            raise ProductParameterError("indices", f"unknown index '{name}' (known: {', '.join(INDICES)})")
        if found not in chosen:
            chosen.append(found)
    if not chosen:
        raise ProductParameterError("indices", "no index given")
    return tuple(chosen)


def _check_frequencies(frequencies: Sequence[str] | str) -> tuple[Frequency, ...]:
    if isinstance(frequencies, str):
        frequencies = (frequencies,)
    try:
        chosen = tuple(dict.fromkeys(Frequency(str(f).lower()) for f in frequencies))
    except ValueError:
        raise ProductParameterError("frequencies", f"frequencies must be among {[f.value for f in Frequency]}, not {list(frequencies)}") from None
    if not chosen:
        raise ProductParameterError("frequencies", "no frequency given")
    return chosen


def climate_indices(
    connection: duckdb.DuckDBPyConnection,
    period: Period | str,
    *,
    indices: Sequence[str] | str | None = None,
    frequencies: Sequence[str] | str = (Frequency.ANNUAL, Frequency.MONTHLY),
    stations: Sequence[str] | str | None = None,
    rule: CompletenessRule = WMO_MONTHLY_RULE,
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
    sub_daily_rule: CompletenessRule = SUB_DAILY_RULE,
) -> Product:
    """ETCCDI indices per station: one row per station, index, frequency and year (and month).

    ``indices``: names from :data:`INDICES` (None: all); ``frequencies``: annual and/or
    monthly (an index is computed monthly only where ETCCDI defines it monthly).  Columns:
    ``wigos_id, index, frequency, year, month`` (NULL for annual), ``value, units, meets_rule,
    suspect_values, excluded_values`` (of the index's inputs in its period); ``value`` is NULL
    where the period does not meet ``rule``.  A station gets the indices whose inputs it has
    any counted value of in the period.
    """
    period = check_period(period)
    definitions = _check_indices(indices)
    wanted_frequencies = _check_frequencies(frequencies)
    rule = check_rule(rule)
    sub_daily_rule = check_rule(sub_daily_rule, "sub_daily_rule")
    elements = tuple(dict.fromkeys(e for d in definitions for e in d.inputs))
    selection = select(connection, period, [e.value for e in elements], stations, qc, timezones)

    daily = read_daily_arrays(connection, selection, sub_daily_rule)
    parts = []
    if daily.stations:
        parts = [
            _index_table(daily, definition, frequency, rule)
            for definition in definitions
            for frequency in wanted_frequencies
            if frequency in definition.frequencies
        ]
    table = pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table()
    table = table.sort_by([("wigos_id", "ascending"), ("index", "ascending"), ("frequency", "ascending"),
                           ("year", "ascending"), ("month", "ascending")]) if table.num_rows else table
    summary = qc_summary(table, selection, "station-index-period (the inputs' days)")
    if table.num_rows == 0:
        note = f"no data for {selection.describe()}"
    else:
        given = pc.sum(table["meets_rule"]).as_py() or 0
        note = (f"{table.num_rows} index values for {len(daily.stations)} stations in {period.label}; {given} meet the rule; "
                f"{qc_note(summary)}")
    return Product(
        kind=ProductKind.INDICES,
        table=table,
        period=period,
        parameters=selection.parameters()
        | {"indices": [d.name for d in definitions], "frequencies": [f.value for f in wanted_frequencies]},
        rules={"indices": rule.as_dict(), "sub_daily": sub_daily_rule.as_dict()},
        note=note,
        description="ETCCDI climate indices computed with xclim",
        extra={"xclim_version": _xclim_version()},
        qc=summary,
    )


def _xclim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("xclim")
    except PackageNotFoundError:  # only in a broken install: the product still says so
        return "unknown"


# --------------------------------------------------------------------------- daily arrays


@dataclass(frozen=True)
class DailyArrays:
    """Counted daily values as dense arrays: ``values[element]`` has shape (stations, days);
    ``suspect`` and ``excluded`` the same shape, the day's suspect values used and values
    excluded by the QC policy."""

    stations: tuple[str, ...]
    days: pd.DatetimeIndex
    values: Mapping[Element, np.ndarray]
    has_data: Mapping[Element, np.ndarray]  # (stations,) bool: any counted value of the element
    suspect: Mapping[Element, np.ndarray]
    excluded: Mapping[Element, np.ndarray]


def read_daily_arrays(
    connection: duckdb.DuckDBPyConnection, selection: Selection, sub_daily_rule: CompletenessRule = SUB_DAILY_RULE
) -> DailyArrays:
    """The selection's days (:func:`~.days.station_days`) as NaN-filled station x day arrays."""
    period = selection.period
    days = pd.date_range(period.first_day, period.last_day, freq="D")
    rows = station_days(connection, selection, sub_daily_rule=sub_daily_rule)
    if selection.stations is not None:
        stations = tuple(sorted(selection.stations))
    else:
        stations = tuple(sorted(pc.unique(rows["wigos_id"]).to_pylist()))
    station_index = pc.index_in(rows["wigos_id"], value_set=pa.array(stations, pa.string())).to_numpy(zero_copy_only=False)
    day_index = (rows["day"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
                 - np.datetime64(period.first_day, "D")).astype(np.int64)
    n_days = len(days)
    value = rows["value"].to_numpy(zero_copy_only=False)
    values: dict[Element, np.ndarray] = {}
    has_data: dict[Element, np.ndarray] = {}
    suspect: dict[Element, np.ndarray] = {}
    excluded: dict[Element, np.ndarray] = {}
    for element in selection.elements:
        mask = pc.equal(rows["element"], element.value).to_numpy(zero_copy_only=False)
        cells = station_index[mask].astype(np.int64) * n_days + day_index[mask]  # one row per cell (station_days)

        def grid(column: np.ndarray, fill: float) -> np.ndarray:
            out = np.full(len(stations) * n_days, fill)
            out[cells] = column[mask]
            return out.reshape(len(stations), n_days)

        values[element] = grid(value.astype(np.float64), np.nan)
        suspect[element] = grid(rows["suspect_values"].to_numpy().astype(np.float64), 0.0)
        excluded[element] = grid(rows["excluded_values"].to_numpy().astype(np.float64), 0.0)
        has_data[element] = (~np.isnan(values[element])).any(axis=1)
    return DailyArrays(stations, days, values, has_data, suspect, excluded)


# --------------------------------------------------------------------------- validity and indices


def period_validity(
    missing: np.ndarray, days: pd.DatetimeIndex, rule: CompletenessRule, strict: bool, frequency: "Frequency"
) -> np.ndarray:
    """(stations, periods) bool: the period meets ``rule`` (``strict``: no day missing), by
    xclim's own missing-value check (:func:`~.completeness.xclim_missing`)."""
    import xarray as xr  # noqa: PLC0415 - with xclim, only when indices are computed

    check = xclim_missing(rule, strict=strict)
    flags = xr.DataArray(np.where(missing, np.nan, 0.0), dims=("station", "time"), coords={"time": days})
    with warnings.catch_warnings():
        # xclim 0.62 reads pandas' deprecated offset.name while counting expected days.
        warnings.filterwarnings("ignore", message="The 'name' property is deprecated")
        masked = check(flags, freq=frequency.xclim, src_timestep="D")
    return ~np.asarray(masked.transpose("station", "time").values, dtype=bool)


def _index_table(daily: DailyArrays, definition: IndexDefinition, frequency: Frequency, rule: CompletenessRule) -> pa.Table:
    import xarray as xr

    atmos = _atmos()  # first, so that its import warnings are silenced
    import xclim
    from xclim.core.units import convert_units_to

    del atmos

    has_inputs = np.logical_and.reduce([daily.has_data[e] for e in definition.inputs])
    keep = np.flatnonzero(has_inputs)
    if keep.size == 0:
        return INDEX_SCHEMA.empty_table()
    stations = [daily.stations[i] for i in keep]
    inputs = {
        e: xr.DataArray(daily.values[e][keep], dims=("station", "time"),
                        coords={"station": stations, "time": daily.days}, attrs=dict(_INPUT_ATTRS[e]))
        for e in definition.inputs
    }
    with warnings.catch_warnings(), xclim.set_options(check_missing="skip", data_validation="log", cf_compliance="log"):
        warnings.simplefilter("ignore")
        result = definition.compute(inputs, frequency.xclim)
        result = convert_units_to(result, definition.xclim_units or definition.units, context="hydro")
    values = np.asarray(result.transpose("station", "time").values, dtype=np.float64)

    missing = np.logical_or.reduce([np.isnan(daily.values[e][keep]) for e in definition.inputs])
    strict = definition.kind.strict and rule.totals_require_complete
    valid = period_validity(missing, daily.days, rule, strict, frequency)
    years = np.arange(daily.days[0].year, daily.days[-1].year + 1)
    if frequency is Frequency.ANNUAL:
        months = None
        starts = np.flatnonzero(daily.days.is_year_start)
    else:
        years = np.repeat(years, 12)
        months = np.tile(np.arange(1, 13), len(years) // 12)
        starts = np.flatnonzero(daily.days.is_month_start)
    values = np.where(valid, values, np.nan)
    suspect = np.add.reduceat(sum(daily.suspect[e][keep] for e in definition.inputs), starts, axis=1)
    excluded = np.add.reduceat(sum(daily.excluded[e][keep] for e in definition.inputs), starts, axis=1)
    periods = values.shape[1]
    count = len(stations) * periods
    return pa.table(
        {
            "wigos_id": pa.array(np.repeat(np.array(stations, dtype=object), periods), pa.string()),
            "index": pa.repeat(pa.scalar(definition.name), count),
            "frequency": pa.repeat(pa.scalar(frequency.value), count),
            "year": pa.array(np.tile(years, len(stations)).astype(np.int32)),
            "month": pa.nulls(count, pa.int32()) if months is None else pa.array(np.tile(months, len(stations)).astype(np.int32)),
            "value": pa.array(values.ravel(), pa.float64(), from_pandas=True),
            "units": pa.repeat(pa.scalar(definition.units), count),
            "meets_rule": pa.array(valid.ravel()),
            "suspect_values": pa.array(suspect.ravel().astype(np.int32)),
            "excluded_values": pa.array(excluded.ravel().astype(np.int32)),
        },
        schema=INDEX_SCHEMA,
    )
