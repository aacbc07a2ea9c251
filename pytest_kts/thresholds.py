"""Thresholds and percentiles, checked where they enter: ``assert_df(...) < t``, ``slo=``,
``kts run --slo`` / ``kts report --slo`` and ``p=``.

A threshold that is NaN, infinite, zero or negative can never decide a gate (``DF < nan`` is
never true or false on evidence, ``DF < -1`` is false whatever was measured), so it is a
:class:`~pytest_kts.errors.ConfigError` in one line before anything runs, not a verdict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pytest_kts.errors import ConfigError

__all__ = ["check_percentile", "check_threshold"]


def _number(value: object) -> float | None:
    """A real number as a float; text (parse it first), a bool (``df < True`` is a mistake,
    not a threshold of 1) and anything else, None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


def check_threshold(value: Any, what: str = "DF threshold") -> float:
    """``value`` as a float, or a ConfigError when no DF can be judged against it."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ConfigError(
            f"{what} {value!r} is not a usable threshold: give a finite number above 0 "
            "(e.g. 1.3: the shared tail may be at most 1.3 times the solo one)"
        )
    return number


def check_percentile(value: Any, what: str = "percentile p") -> float:
    """``value`` as a float strictly between 0 and 100, or a ConfigError."""
    number = _number(value)
    if number is None or not 0 < number < 100:
        raise ConfigError(
            f"{what}={value!r} is not a percentile: give a number between 0 and 100, "
            "both excluded (e.g. p=99)"
        )
    return number
