"""Products in the bucket: ``products/<kind>/<period>/<name>.parquet`` plus ``<name>.json``.

The JSON says what the Parquet holds: kind, period, parameters, rules, QC policy and counts,
row count, columns, a human note ("no data for …" when empty), when and with what it was made,
and its version.  It is written after the Parquet file, each object whole
(:meth:`Bucket.write_bytes`), so a product whose JSON is present is complete.  The default name
is derived from the parameters, so the same product computed again lands on the same key.

**Versions.**  A run never writes silently over an earlier one: before a product (or a CLIMAT
or DAYCLI file, :func:`write_versioned`) is written where one already is, the earlier files are
kept under ``<folder>/_versions/<name>/v<n>.<ext>``; the new one is version n + 1, its metadata
says which version it replaced and where that is kept, and so does the result the caller
prints.  :func:`list_products` lists the current versions only.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products.model import Product, ProductKind, ProductParameterError

PRODUCTS_PREFIX = "products"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")


def is_product_name(name: object) -> bool:
    """Whether ``name`` can name a stored product: letters, digits, '.', '_', '-', no '..'."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and ".." not in name


VERSIONS_FOLDER = "_versions"


@dataclass(frozen=True)
class Replaced:
    """An earlier version a write replaced: its number and where its files are kept."""

    version: int
    kept: tuple[str, ...]

    def describe(self) -> str:
        return f"replaced version {self.version} (kept as {', '.join(self.kept)})"


@dataclass(frozen=True)
class StoredProduct:
    """Where a product was written and what its metadata says; ``replaced``: the earlier
    version this write replaced (None for the first)."""

    parquet_key: str
    metadata_key: str
    rows: int
    metadata: dict[str, Any]
    replaced: Replaced | None = None

    @property
    def version(self) -> int:
        return int(self.metadata["version"])


@dataclass(frozen=True)
class WrittenFile:
    """A message file written to the bucket: its key, its version, the version it replaced."""

    key: str
    version: int
    replaced: Replaced | None = None


def _versions_prefix(key: str) -> str:
    """``products/x/a.txt`` -> ``products/x/_versions/a`` (where a's earlier versions are kept)."""
    folder, _, file_name = key.rpartition("/")
    stem = file_name.split(".", 1)[0]
    return f"{folder}/{VERSIONS_FOLDER}/{stem}" if folder else f"{VERSIONS_FOLDER}/{stem}"


def _kept_versions(bucket: Bucket, key: str) -> int:
    """How many earlier versions of ``key`` are kept (they are numbered 1 … n)."""
    folder = bucket.path(_versions_prefix(key))
    bucket.fs.invalidate_cache(folder)
    if not bucket.fs.exists(folder):
        return 0
    numbers = [
        int(match.group(1))
        for path in bucket.fs.ls(folder, detail=False)
        if (match := re.fullmatch(r"v(\d+)\..+", path.rstrip("/").rsplit("/", 1)[-1]))
    ]
    return max(numbers, default=0)


def _exists(bucket: Bucket, key: str) -> bool:
    path = bucket.path(key)
    bucket.fs.invalidate_cache(path.rsplit("/", 1)[0])
    return bucket.fs.exists(path)


def keep_previous(bucket: Bucket, keys: tuple[str, ...]) -> Replaced | None:
    """Keep the objects at ``keys`` (one version: a file, or a product's Parquet and JSON) as
    the next earlier version of ``keys[0]``, before they are replaced; None when nothing is
    there yet.  Copies, not moves: a reader of the current key never finds it missing."""
    present = [key for key in keys if _exists(bucket, key)]
    if not present:
        return None
    number = _kept_versions(bucket, keys[0]) + 1
    prefix = _versions_prefix(keys[0])
    kept = []
    for key in present:
        target = f"{prefix}/v{number}.{key.rsplit('/', 1)[-1].split('.', 1)[1]}"
        bucket.write_bytes(target, bucket.read_bytes(key))
        kept.append(target)
    return Replaced(number, tuple(kept))


def write_versioned(bucket: Bucket, files: Mapping[str, bytes]) -> WrittenFile:
    """Write one version of a message (a CLIMAT report, a DAYCLI BUFR file, and the JSON
    beside them): its files, the first one the main file, keeping any earlier version of
    them first (see the module's note on versions)."""
    keys = tuple(files)
    replaced = keep_previous(bucket, keys)
    for key, data in files.items():
        bucket.write_bytes(key, data)
    return WrittenFile(keys[0], 1 if replaced is None else replaced.version + 1, replaced)


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
    """Write the product's Parquet file, then its JSON metadata; return their keys.

    A product already at the key is kept as an earlier version first; the result's
    ``replaced`` (and the metadata's ``replaces``) say which and where.
    """
    key = product_key(product, name)
    buffer = io.BytesIO()
    pq.write_table(product.table, buffer, compression="zstd")
    replaced = keep_previous(bucket, (f"{key}.json", f"{key}.parquet"))
    metadata = product.metadata() | {
        "parquet": f"{key}.parquet",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": _software(),
        "version": 1 if replaced is None else replaced.version + 1,
        "replaces": None if replaced is None else {"version": replaced.version, "kept": list(replaced.kept)},
    }
    bucket.write_bytes(f"{key}.parquet", buffer.getvalue())
    bucket.write_bytes(f"{key}.json", (json.dumps(metadata, indent=2, default=str) + "\n").encode("utf-8"))
    return StoredProduct(f"{key}.parquet", f"{key}.json", product.rows, metadata, replaced)


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
    """Keys of the complete products (those with metadata) in the bucket, sorted; current
    versions only (earlier ones are under ``_versions/``)."""
    folder = bucket.path(PRODUCTS_PREFIX if kind is None else f"{PRODUCTS_PREFIX}/{ProductKind(kind).value}")
    bucket.fs.invalidate_cache(folder)
    root = bucket.path("").rstrip("/") + "/"
    found = bucket.fs.glob(f"{folder}/**/*.json")
    keys = (path[len(root):] if path.startswith(root) else path for path in found)
    return sorted(key for key in keys if f"/{VERSIONS_FOLDER}/" not in f"/{key}")


def _software() -> dict[str, str]:
    found = {}
    for package in ("opencdms-workbench", "duckdb", "pyarrow", "xclim"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
