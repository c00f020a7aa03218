"""Checks for values read from outside (settings files, profiles, CSV cells): each returns
the value or raises ``ConfigError`` naming the field, what it got and what would be right.

JSON and TOML give ``true`` where a number belongs, strings where a number belongs and
``NaN`` or infinities where a finite number belongs; Python's comparisons let all of them
through (``nan < 1`` is simply false), so every number read from a file passes one of these.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from supernet.errors import ConfigError


def is_int(value: Any) -> bool:
    """A whole number (``bool`` excluded; numpy integers included)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (``bool`` excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def check_int(value: Any, name: str, low: int = 0) -> int:
    """``value`` as an ``int`` >= ``low``."""
    if not is_int(value) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_number(value: Any, name: str, low: float = -math.inf, *, above: bool = False) -> float:
    """``value`` as a finite ``float`` >= ``low`` (> ``low`` with ``above``)."""
    ok = is_number(value) and (float(value) > low if above else float(value) >= low)
    if not ok:
        bound = "" if low == -math.inf else f" {'>' if above else '>='} {low:g}"
        raise ConfigError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_type(value: Any, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is an instance of ``kind`` (``what`` says so in words)."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return value
