"""JSON that other tools can read: non-finite floats (NaN, inf) become null."""

from __future__ import annotations

import math
from typing import Any


def finite_or_null(x: Any) -> Any:
    """``x`` with every non-finite float, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_null(v) for v in x]
    return x
