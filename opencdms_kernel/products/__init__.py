"""Climate products computed with DuckDB over the Parquet archive.

- :func:`daily_summaries` (sub-daily → station-local days) and :func:`monthly_summaries`
  (daily → months, WMO-No. 1203 3/5 rule) in :mod:`.summaries`;
- :func:`climate_normals` (30-year climatological standard normals) in :mod:`.normals`;
- :func:`climate_indices` (ETCCDI indices through xclim) in :mod:`.indices`;
- :func:`write_product` / :func:`read_product` (``products/<kind>/…`` in the bucket) in :mod:`.store`.

Every product function takes a DuckDB connection with an ``observations`` view (from
:func:`opencdms_kernel.archive.connect_archive`, or any folder in the same layout) and returns
a :class:`Product`.  They share one definition of the day and one rule for choosing between
sources (:mod:`.days`, :mod:`.sql`), one implementation of the completeness rules
(:mod:`.completeness`) and one QC policy (:class:`QcPolicy`, passed as ``qc``).  CLIMAT and
DAYCLI take their values from these and keep only their encoders (:mod:`.climat`,
:mod:`.daycli`).
"""

from opencdms_kernel.products.indices import INDICES, Frequency, climate_indices
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    DEFAULT_THRESHOLDS,
    EVERY_VALUE,
    STANDARD_NORMAL_PERIOD,
    SUB_DAILY_RULE,
    WMO_MONTHLY_RULE,
    Comparison,
    CompletenessRule,
    Element,
    NormalsRule,
    Period,
    Product,
    ProductKind,
    ProductParameterError,
    ProductReferenceError,
    QcPolicy,
    Station,
    Statistic,
    Threshold,
)
from opencdms_kernel.products.days import station_days
from opencdms_kernel.products.normals import Extreme, ExtremeKind, NormalsSpec, climate_normals
from opencdms_kernel.products.store import StoredProduct, list_products, product_key, read_product, write_product
from opencdms_kernel.products.summaries import daily_summaries, monthly_summaries

__all__ = [
    "DEFAULT_QC_POLICY",
    "DEFAULT_THRESHOLDS",
    "EVERY_VALUE",
    "INDICES",
    "STANDARD_NORMAL_PERIOD",
    "SUB_DAILY_RULE",
    "WMO_MONTHLY_RULE",
    "Comparison",
    "CompletenessRule",
    "Element",
    "Extreme",
    "ExtremeKind",
    "Frequency",
    "NormalsRule",
    "NormalsSpec",
    "Period",
    "Product",
    "ProductKind",
    "ProductParameterError",
    "ProductReferenceError",
    "QcPolicy",
    "Station",
    "Statistic",
    "StoredProduct",
    "Threshold",
    "climate_indices",
    "daily_summaries",
    "list_products",
    "monthly_summaries",
    "climate_normals",
    "product_key",
    "read_product",
    "station_days",
    "write_product",
]
