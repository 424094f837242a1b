"""Files a notebook writes to the bucket beside its report, and their media types.

The media types are the ones a notebook gives :func:`opencdms_kernel.notebooks.record_output`
for what it wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from opencdms_kernel.bucket import Bucket

HTML_MEDIA_TYPE = "text/html"
CSV_MEDIA_TYPE = "text/csv"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
JSON_MEDIA_TYPE = "application/json"
BUFR_MEDIA_TYPE = "application/bufr"
TEXT_MEDIA_TYPE = "text/plain"


def write_csv(bucket: "Bucket", key: str, frame: pd.DataFrame) -> str:
    """Write ``frame`` as CSV (UTF-8, no index) to ``key``; returns the key."""
    bucket.write_bytes(key, frame.to_csv(index=False).encode("utf-8"))
    return key


def read_text(bucket: "Bucket", key: str) -> str:
    """An object of the bucket as text (for tests and notebooks showing what they wrote)."""
    return bucket.fs.cat_file(bucket.path(key)).decode("utf-8")
