"""Unit conversion of ingested values to the element's own units (pint)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import pint

# UDUNITS/CF spellings ("m s-1", "%") that pint does not read as they are.
_EXPONENT = re.compile(r"(?<=[A-Za-z])(-?\d+)")


@dataclass(frozen=True)
class LinearConversion:
    """``converted = value * scale + offset`` (an offset only for temperatures)."""

    scale: float
    offset: float

    @property
    def is_identity(self) -> bool:
        """True when converting changes nothing."""
        return self.scale == 1.0 and self.offset == 0.0


@lru_cache(maxsize=1)
def _registry() -> pint.UnitRegistry:
    return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


def _pint_units(units: str) -> str:
    if units.strip() == "%":
        return "percent"
    return " * ".join(_EXPONENT.sub(r"**\1", part) for part in units.split())


def conversion(from_units: str, to_units: str) -> LinearConversion:
    """The linear conversion from ``from_units`` to ``to_units``.

    Raises ValueError naming both units when they are unknown or not convertible.
    """
    if from_units == to_units:
        return LinearConversion(1.0, 0.0)
    registry = _registry()
    try:
        zero = registry.Quantity(0.0, _pint_units(from_units)).to(_pint_units(to_units)).magnitude
        one = registry.Quantity(1.0, _pint_units(from_units)).to(_pint_units(to_units)).magnitude
    except (pint.errors.UndefinedUnitError, pint.errors.DimensionalityError) as exc:
        raise ValueError(f"cannot convert {from_units!r} to {to_units!r}: {exc}") from exc
    except (AttributeError, TypeError, AssertionError) as exc:  # pint's parser on odd input
        raise ValueError(f"cannot read units {from_units!r}: {exc}") from exc
    return LinearConversion(scale=float(one - zero), offset=float(zero))
