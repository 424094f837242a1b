"""BUFR through WMO's csv2bufr: the templates that travel with the project, and one encoder.

DAYCLI (sequence 3 07 075) and CLIMAT (3 07 073) are encoded the same way: the message module
builds one CSV row per message in the columns its mapping template reads, and csv2bufr (with
ecCodes underneath) writes the BUFR.  The templates live in
``opencdms_kernel/resources/csv2bufr-templates/templates`` and are loaded by path, after
csv2bufr's own schema check, so the running system depends on no folder outside the project.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.products.model import ProductParameterError, figure

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "resources" / "csv2bufr-templates" / "templates"


class BufrEncodingError(OpenCDMSError):
    """csv2bufr could not encode a message, or a template is missing or invalid; the message
    names the template and the message."""


@dataclass(frozen=True)
class Encoded:
    """BUFR messages, one per CSV row in order, and csv2bufr's warnings (prefixed by the row's label)."""

    messages: tuple[bytes, ...]
    warnings: tuple[str, ...] = ()


def template_file(name: str) -> Path:
    """The path of the template ``name`` (e.g. ``daycli-template``)."""
    return TEMPLATES_DIR / f"{name}.json"


@lru_cache(maxsize=1)
def csv2bufr() -> Any:
    """csv2bufr, imported on first use with its template search path set to our copy.

    csv2bufr reads ``CSV2BUFR_TEMPLATES`` once, when it is imported, and indexes the folder;
    without it, it indexes the current directory.  Templates are loaded by path
    (:func:`template`), so a different value set by the operator does no harm.
    """
    os.environ.setdefault("CSV2BUFR_TEMPLATES", str(TEMPLATES_DIR))
    import csv2bufr as module  # noqa: PLC0415 - heavy, and needs the variable above before import

    return module


@lru_cache(maxsize=None)
def template(name: str) -> dict[str, Any]:
    """The mapping template ``name``, checked against csv2bufr's template schema."""
    csv2bufr()
    import csv2bufr.templates as c2bt  # noqa: PLC0415

    path = template_file(name)
    if not path.is_file():
        raise BufrEncodingError(f"the csv2bufr template {name!r} is missing: {path}")
    loaded = c2bt.load_template(str(path), isFile=True)
    try:
        c2bt.validate_template(copy.deepcopy(loaded))
    except RuntimeError as exc:  # csv2bufr's way of saying the schema refused it
        raise BufrEncodingError(f"the csv2bufr template {name!r} does not validate against csv2bufr's schema") from exc
    return loaded


def template_metadata(name: str) -> dict[str, Any]:
    """The ``metadata`` block of a template (label, version, id …)."""
    return json.loads(template_file(name).read_text(encoding="utf-8"))["metadata"]


def template_columns(name: str) -> set[str]:
    """The CSV columns a template reads (its ``data:`` values)."""
    loaded = json.loads(template_file(name).read_text(encoding="utf-8"))
    return {entry["value"].removeprefix("data:") for entry in loaded["header"] + loaded["data"]
            if entry["value"].startswith("data:")}


def _template_for(name: str, originating_centre: int | None, originating_subcentre: int | None) -> dict[str, Any]:
    """The template with the BUFR originating centre set (csv2bufr's default is 'missing')."""
    chosen = copy.deepcopy(template(name))
    for key, value in (("bufrHeaderCentre", originating_centre), ("bufrHeaderSubCentre", originating_subcentre)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ProductParameterError(
                "originating_centre" if key == "bufrHeaderCentre" else "originating_subcentre",
                f"{value!r} is not a code figure 0..65535 (Common code table C-11/C-12)",
            )
        for entry in chosen["header"]:
            if entry["eccodes_key"] == key:
                entry["value"] = f"const:{value}"
    return chosen


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    """The CSV text csv2bufr reads: a header row then one row per message."""
    out = io.StringIO()
    # The templates say QUOTE_NONE; none of our fields can contain a comma or a quote.
    writer = csv.DictWriter(out, fieldnames=list(columns), quoting=csv.QUOTE_NONE, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def encode(
    name: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    labels: Sequence[str],
    *,
    originating_centre: int | None = None,
    originating_subcentre: int | None = None,
) -> Encoded:
    """One BUFR message per row with the template ``name``; ``labels`` name the rows in
    errors and warnings.  Raises :class:`BufrEncodingError` naming the row csv2bufr could not
    encode; a value outside the template's valid range is set to missing by csv2bufr and its
    warning returned, not dropped."""
    if not rows:
        return Encoded(())
    chosen = _template_for(name, originating_centre, originating_subcentre)
    results = csv2bufr().transform(csv_text(columns, rows), chosen)
    messages: list[bytes] = []
    warnings: list[str] = []
    for label, result in zip(labels, results, strict=True):
        status = result["_meta"]["result"]
        if result["bufr4"] is None:
            errors = "; ".join(status.get("errors") or []) or status.get("message", "unknown error")
            raise BufrEncodingError(f"{label}: csv2bufr failed with {name}: {errors}")
        messages.append(result["bufr4"])
        warnings.extend(f"{label}: {w}" for w in status.get("warnings") or [])
    return Encoded(tuple(messages), tuple(warnings))


def fixed(value: float | None, decimals: int, offset: Decimal = Decimal(0), scale: int = 0) -> str:
    """A number for the CSV at a template's precision, rounded as every product publishes
    figures (:func:`~opencdms_kernel.products.model.figure`); '' if missing.

    ``scale`` shifts the decimal point first (cm -> m is -2, hPa -> Pa is 2), then ``offset``
    is added (degC -> K: 273.15).
    """
    if value is None:
        return ""
    return format(figure(Decimal(repr(float(value))).scaleb(scale) + offset, decimals), "f")


def code(value: int | None) -> str:
    """A code figure or count for the CSV; '' if missing."""
    return "" if value is None else str(int(value))
