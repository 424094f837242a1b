"""Tables, plots and HTML reports shared by the notebooks in ``notebooks/``.

The notebooks are the processes; this package keeps them short.  It holds what several of
them need and what is not a climate computation of its own (those live in
:mod:`opencdms_kernel.products` and :mod:`opencdms_kernel.qc`).  Import from here, the one
entry point: ``from opencdms_kernel.reports import Report, daily_table, …``.

- :mod:`.parameters` — the parameters people type that the vocabulary has no word for (a day
  ``"2020-01-31"`` that may be left empty, a list where empty means all), with errors that
  name the parameter; months and periods are :class:`~opencdms_kernel.vocabulary.Month` and
  :class:`~opencdms_kernel.vocabulary.Period` (``Month.parse("2020-07")``);
- :mod:`.tables` — small read-only tables for display: a station's days, station labels and
  time zones, flagged values and their counts, the monthly data availability, annual values
  and cycles, monthly and normals products laid out for reading;
- :mod:`.figures` — plots made with matplotlib's object API (never pyplot; matplotlib is
  imported on the first plot only);
- :mod:`.page` — :class:`Report`: a self-contained HTML page (tables, PNG images inline, no
  scripts, fonts or styles from elsewhere) that opens offline and is written whole to the
  bucket;
- :mod:`.files` — the media types of what a notebook writes, CSV to the bucket, reading text
  back.

Nothing here writes to the datastore.
"""

from opencdms_kernel.reports.figures import (
    AVAILABILITY_CLASSES,
    ELEMENT_COLOURS,
    FLAG_COLOURS,
    annual_cycle_figure,
    availability_class,
    availability_heatmap,
    climographs,
    counts_figure,
    daily_figure,
    figure_png,
    monthly_series_figure,
    new_figure,
    station_bars_figure,
    station_map_figure,
)
from opencdms_kernel.reports.files import (
    BUFR_MEDIA_TYPE,
    CSV_MEDIA_TYPE,
    HTML_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    PARQUET_MEDIA_TYPE,
    TEXT_MEDIA_TYPE,
    read_text,
    write_csv,
)
from opencdms_kernel.reports.page import Picture, Report
from opencdms_kernel.reports.parameters import optional_list, parse_day
from opencdms_kernel.reports.tables import (
    FLAGGED_STATUSES,
    annual_values,
    availability,
    daily_table,
    daily_values,
    describe_entries,
    flag_counts,
    flagged_values,
    month_overview,
    monthly_cycle,
    normals_cycles,
    normals_table,
    station_names,
    station_timezones_of,
)

__all__ = [
    "AVAILABILITY_CLASSES",
    "BUFR_MEDIA_TYPE",
    "CSV_MEDIA_TYPE",
    "ELEMENT_COLOURS",
    "FLAGGED_STATUSES",
    "FLAG_COLOURS",
    "HTML_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "PARQUET_MEDIA_TYPE",
    "TEXT_MEDIA_TYPE",
    "Picture",
    "Report",
    "annual_cycle_figure",
    "annual_values",
    "availability",
    "availability_class",
    "availability_heatmap",
    "climographs",
    "counts_figure",
    "daily_figure",
    "daily_table",
    "daily_values",
    "describe_entries",
    "figure_png",
    "flag_counts",
    "flagged_values",
    "month_overview",
    "monthly_cycle",
    "monthly_series_figure",
    "new_figure",
    "normals_cycles",
    "normals_table",
    "optional_list",
    "parse_day",
    "read_text",
    "station_bars_figure",
    "station_map_figure",
    "station_names",
    "station_timezones_of",
    "write_csv",
]
