"""Products in the bucket: ``products/<kind>/<period>/<name>.parquet`` plus ``<name>.json``.

The JSON says what the Parquet holds: kind, period, parameters, rules, row count, columns, a
human note ("no data for …" when empty), when and with what it was made.  It is written after
the Parquet file, each object whole (:meth:`Bucket.write_bytes`), so a product whose JSON is
present is complete.  The default name is derived from the parameters, so computing the same
product again replaces it instead of piling up copies.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products.model import Product, ProductKind, ProductParameterError

PRODUCTS_PREFIX = "products"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")


def is_product_name(name: object) -> bool:
    """Whether ``name`` can name a stored product: letters, digits, '.', '_', '-', no '..'."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and ".." not in name


@dataclass(frozen=True)
class StoredProduct:
    """Where a product was written and what its metadata says."""

    parquet_key: str
    metadata_key: str
    rows: int
    metadata: dict[str, Any]


def product_key(product: Product, name: str | None = None) -> str:
    """The bucket key of a product, without extension.

    ``name`` (letters, digits, ``.``, ``_``, ``-``) overrides the default
    ``<kind>-<period>-<12 hex digits of the parameters' hash>``.
    """
    if name is None:
        identity = json.dumps(
            {"kind": product.kind.value, "period": product.period.label,
             "parameters": product.parameters, "rules": product.rules},
            sort_keys=True, default=str,
        )
        name = f"{product.kind.value}-{product.period.label}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    elif not is_product_name(name):
        raise ProductParameterError("name", f"{name!r} is not a product name (letters, digits, '.', '_', '-')")
    return f"{PRODUCTS_PREFIX}/{product.kind.value}/{product.period.label}/{name}"


def write_product(bucket: Bucket, product: Product, *, name: str | None = None) -> StoredProduct:
    """Write the product's Parquet file, then its JSON metadata; return their keys."""
    key = product_key(product, name)
    buffer = io.BytesIO()
    pq.write_table(product.table, buffer, compression="zstd")
    metadata = product.metadata() | {
        "parquet": f"{key}.parquet",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": _software(),
    }
    bucket.write_bytes(f"{key}.parquet", buffer.getvalue())
    bucket.write_bytes(f"{key}.json", (json.dumps(metadata, indent=2, default=str) + "\n").encode("utf-8"))
    return StoredProduct(f"{key}.parquet", f"{key}.json", product.rows, metadata)


def read_product(bucket: Bucket, key: str) -> tuple[pa.Table, dict[str, Any]]:
    """A stored product's table and metadata, from either key (``.parquet`` or ``.json``)."""
    stem = key.removesuffix(".parquet").removesuffix(".json")
    with bucket.fs.open(bucket.path(f"{stem}.parquet"), "rb") as handle:
        table = pq.read_table(handle)
    return table, product_metadata(bucket, stem)


def product_metadata(bucket: Bucket, key: str) -> dict[str, Any]:
    """A stored product's JSON metadata, from either key (``.parquet`` or ``.json``)."""
    stem = key.removesuffix(".parquet").removesuffix(".json")
    with bucket.fs.open(bucket.path(f"{stem}.json"), "rb") as handle:
        return json.load(handle)


def list_products(bucket: Bucket, kind: ProductKind | str | None = None) -> list[str]:
    """Keys of the complete products (those with metadata) in the bucket, sorted."""
    folder = bucket.path(PRODUCTS_PREFIX if kind is None else f"{PRODUCTS_PREFIX}/{ProductKind(kind).value}")
    bucket.fs.invalidate_cache(folder)
    root = bucket.path("").rstrip("/") + "/"
    found = bucket.fs.glob(f"{folder}/**/*.json")
    return sorted(path[len(root):] if path.startswith(root) else path for path in found)


def _software() -> dict[str, str]:
    found = {}
    for package in ("opencdms-workbench", "duckdb", "pyarrow", "xclim"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
