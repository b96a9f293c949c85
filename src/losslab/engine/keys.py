"""Stable identities of experiment cells."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from losslab.errors import ExperimentError


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ExperimentError(
            f"cell {value!r} is not plain JSON (str, number, bool, None, list, dict): {error}"
        ) from None


def cell_key(experiment: str, version: int, cell: dict[str, Any]) -> str:
    """SHA-256 (first 32 hex digits) of the experiment name, its version and the cell.

    The key does not depend on the order of the cell's keys, on the preset, or on the
    position of the cell in the grid, so a cell shared by two presets runs once.
    """
    text = canonical_json({"experiment": experiment, "version": version, "cell": cell})
    return hashlib.sha256(text.encode()).hexdigest()[:32]
