"""Reading the parameters people type into a notebook, with errors that name the parameter."""

from __future__ import annotations

import re
from datetime import date
from typing import Sequence

from opencdms_kernel.products.model import Period, ProductParameterError


def parse_month(text: str, parameter: str = "month") -> tuple[int, int]:
    """``"2020-07"`` as ``(2020, 7)``; anything else fails naming ``parameter``."""
    match = re.fullmatch(r"\s*(\d{4})-(\d{1,2})\s*", text or "")
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ProductParameterError(parameter, f"{text!r} is not a month like 2020-07")
    return int(match.group(1)), int(match.group(2))


def parse_period(text: str, parameter: str = "period") -> Period:
    """``"1991-2020"`` or ``"2020"`` as a :class:`Period`; errors name ``parameter``."""
    try:
        return Period.parse(text)
    except ProductParameterError as exc:
        raise ProductParameterError(parameter, exc.reason) from None


def parse_day(text: str | None, parameter: str) -> date | None:
    """``"2020-01-31"`` as a date, None or ``""`` as None (no limit); errors name ``parameter``."""
    if not text or not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ProductParameterError(parameter, f"{text!r} is not a day like 2020-01-31") from None


def optional_list(values: Sequence[str] | str | None) -> list[str] | None:
    """A list parameter where empty means "all": ``[]``/``""``/None become None.

    A single string is accepted as a one-item list (a person typing ``stations="0-20000-0-60001"``).
    """
    if values is None:
        return None
    if isinstance(values, str):
        values = [part for part in re.split(r"[,\s]+", values) if part]
    cleaned = [str(value).strip() for value in values if str(value).strip()]
    return cleaned or None


def month_label(year: int, month: int) -> str:
    """``2020-07``."""
    return f"{year:04d}-{month:02d}"
