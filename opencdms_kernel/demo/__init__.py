"""Demonstration and test data: not domain code.

Nothing in the domain library imports this package; the CLI (`opencdms demo-data`,
`opencdms up`), the tests and the benchmarks do.  Everything is deterministic: the same spec
and seed give byte-identical files.

- :mod:`.network` — the demo network of a fictional East-African-like territory: where its
  daily and hourly stations stand (:class:`DemoSpec`, :func:`station_network`), with a dense
  cluster of twelve stations for the buddy check;
- :mod:`.climate` — the climate model behind their true daily values;
- :mod:`.aws` — the hourly automatic weather stations' series, in a logger's units;
- :mod:`.injected_errors` — the errors written into the daily files and listed in the
  manifest, so QC can be scored against ground truth;
- :mod:`.dataset` — the files: :func:`generate_demo_data`, :func:`read_demo_dataset`;
- :mod:`.airport` — a real-data-like airport record without errors
  (:func:`generate_airport_data`);
- :mod:`.gridded` — a synthetic gridded daily analysis of the territory (NetCDF-4);
- :mod:`.synthetic_archive` — observation tables written straight into the archive's
  Parquet layout, without PostgreSQL;
- :mod:`.load` — the demo in an installation: what `opencdms up` loads and the notebook
  pipeline it runs;
- :mod:`.streams` and :mod:`.files` — the seeded random streams, time axes, AR(1) noise and
  CSV writing the generators share.

This module re-exports the network, dataset and airport generators (numpy and pyarrow only);
the others are imported from their modules (they bring xarray, the archive or the ingest).
"""

from opencdms_kernel.demo.airport import AirportDataset, AirportSpec, airport_weather, generate_airport_data
from opencdms_kernel.demo.dataset import DemoDataset, generate_demo_data, read_demo_dataset
from opencdms_kernel.demo.network import DemoSpec, Station, cluster_indices, station_network

__all__ = [
    "AirportDataset",
    "AirportSpec",
    "DemoDataset",
    "DemoSpec",
    "Station",
    "airport_weather",
    "cluster_indices",
    "generate_airport_data",
    "generate_demo_data",
    "read_demo_dataset",
    "station_network",
]
