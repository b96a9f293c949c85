"""losslab: global optima, critical points and fixed points of neural networks.

The library turns five theory papers into tools and checked experiments; see the
README for a tour. Subpackages are imported on demand (``losslab.data``,
``losslab.engine``, ...) so that ``import losslab`` stays light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from losslab.errors import (
    ConvexProblemError,
    DatasetError,
    EngineError,
    ExperimentError,
    LosslabError,
    StoreError,
)

try:
    __version__ = version("losslab")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ConvexProblemError",
    "DatasetError",
    "EngineError",
    "ExperimentError",
    "LosslabError",
    "StoreError",
    "__version__",
]
