"""Reading the parameters people type into a notebook, with errors that name the parameter.

Months and periods are the vocabulary's (:meth:`opencdms_kernel.vocabulary.Month.parse`,
:meth:`opencdms_kernel.vocabulary.Period.parse`); what is left here has no word of its own
there: a day that may be left empty, and a list where empty means "all".
"""

from __future__ import annotations

import re
from datetime import date
from typing import Sequence

from opencdms_kernel.errors import ParameterError


def parse_day(text: str | None, parameter: str) -> date | None:
    """``"2020-01-31"`` as a date, None or ``""`` as None (no limit); errors name ``parameter``."""
    if not text or not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ParameterError(parameter, f"{text!r} is not a day like 2020-01-31") from None


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
