"""Numbers for JSON documents (summaries, API responses): JSON has no NaN or Inf, so they become ``null``.

Examples:
    >>> finite_or_none(float("nan")), finite_or_none(2), finite_or_none("x")
    (None, 2.0, None)
    >>> json_numbers({"loss": float("inf"), "final_loss": {"0": 0.5, "1": float("nan")}, "runs": 3})
    {'loss': None, 'final_loss': {'0': 0.5, '1': None}, 'runs': 3}
"""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def json_numbers(value: Any) -> Any:
    """``value`` with every non-finite float, also inside dicts, replaced by ``None``; other values as they are."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    return value
