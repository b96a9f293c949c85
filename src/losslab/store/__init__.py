"""The results store (SQLite): one transaction per finished cell."""

from losslab.store.sqlite import (
    DEFAULT_STORE_PATH,
    CellRecord,
    ExperimentRecord,
    ResultStore,
    arrays_to_npz,
    npz_to_arrays,
    to_json,
    to_numpy_arrays,
)

__all__ = [
    "DEFAULT_STORE_PATH",
    "CellRecord",
    "ExperimentRecord",
    "ResultStore",
    "arrays_to_npz",
    "npz_to_arrays",
    "to_json",
    "to_numpy_arrays",
]
