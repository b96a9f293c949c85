"""Datasets from user files: CSV, NPZ and Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from losslab.data.dataset import Dataset, Task, dataset_from_arrays
from losslab.errors import DatasetError

#: File suffixes :func:`read_file` understands.
SUPPORTED_SUFFIXES = (".csv", ".npz", ".parquet")


def read_file(path: Path, *, target: str | None = None) -> Dataset:
    """Read a dataset from ``path``.

    - ``.csv`` and ``.parquet``: one column per feature; the target is the column named
      ``target``, or the last column. Feature columns must be numeric (booleans count
      as 0/1). A non-numeric target is read as class labels ``0..K-1`` in sorted order
      of its values (kept in ``meta["target_names"]``).
    - ``.npz``: arrays ``X`` of shape (n, d) and ``y`` of shape (n,).
    """
    if not path.is_file():
        raise DatasetError(f"no such data file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if target is not None:
            raise DatasetError(f"{path.name}: target= applies to CSV and Parquet files only")
        return _read_npz(path)
    if suffix == ".csv":
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise DatasetError(f"{path.name} is empty: no header and no rows") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DatasetError(f"{path.name} is not a readable CSV file: {error}") from None
        return _from_frame(frame, name=path.name, target=target)
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several unrelated types
            raise DatasetError(f"{path.name} is not a readable Parquet file: {error}") from None
        return _from_frame(frame, name=path.name, target=target)
    raise DatasetError(
        f"{path.name}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _read_npz(path: Path) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path.name} is not a readable .npz archive: {error}") from None
    with archive:
        missing = [key for key in ("X", "y") if key not in archive.files]
        if missing:
            raise DatasetError(
                f"{path.name} lacks array(s) {missing}; it holds {archive.files}. "
                "Save with numpy.savez(path, X=features, y=target)"
            )
        X, y = archive["X"], archive["y"]
    for key, array in (("X", X), ("y", y)):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DatasetError(f"{path.name}: array {key} is not numeric (dtype {array.dtype})")
    return dataset_from_arrays(X, y, name=path.name, meta={"source": str(path)})


def _from_frame(frame: pd.DataFrame, *, name: str, target: str | None) -> Dataset:
    if frame.shape[0] == 0:
        raise DatasetError(f"{name} has a header but no rows")
    if frame.shape[1] < 2:
        raise DatasetError(f"{name} needs at least one feature column and one target column")
    columns = [str(c) for c in frame.columns]
    frame.columns = pd.Index(columns)
    target_name = target if target is not None else columns[-1]
    if target_name not in columns:
        raise DatasetError(f"{name} has no column {target_name!r}; its columns are {columns}")
    features = frame.drop(columns=[target_name])
    non_numeric = [c for c in features.columns if not _is_numeric(features[c])]
    if non_numeric:
        raise DatasetError(
            f"{name}: feature column(s) {non_numeric} are not numeric; encode them as numbers "
            "or drop them"
        )
    meta: dict[str, Any] = {"source": name, "target_name": target_name}
    target_column = frame[target_name]
    task: Task | None = None
    if _is_numeric(target_column):
        y = target_column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        if target_column.isna().any():
            rows = np.flatnonzero(target_column.isna().to_numpy())[:5].tolist()
            raise DatasetError(f"{name}: target column {target_name!r} is empty in rows {rows}")
        codes, classes = pd.factorize(target_column.astype(str), sort=True)
        y = codes.astype(np.float64)
        meta["target_names"] = [str(c) for c in classes]
        task = "classification"
    X = features.to_numpy(dtype=np.float64, na_value=np.nan)
    return dataset_from_arrays(
        X, y, name=name, task=task, feature_names=list(features.columns), meta=meta
    )


def _is_numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))
