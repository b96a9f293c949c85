"""Datasets from user files: CSV, NPZ and Parquet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from losslab.data.dataset import Dataset, dataset_from_arrays
from losslab.errors import DatasetError

#: File suffixes :func:`read_file` understands.
SUPPORTED_SUFFIXES = (".csv", ".npz", ".parquet")


def read_file(path: Path, *, target: str | None = None, task: str | None = None) -> Dataset:
    """Read a dataset from ``path``.

    - ``.csv`` and ``.parquet``: one column per feature; the target is the column named
      ``target``, or the last column. Feature columns must be numeric (booleans count
      as 0/1). A non-numeric target is read as class labels ``0..K-1`` in sorted order
      of its values (kept in ``meta["target_names"]``). A column whose values are
      mostly numbers but not all (say one ``"?"`` marking a missing value) is an error
      naming the offending rows, never class labels.
    - ``.csv`` only: the first line must be a header naming the columns; a file whose
      first line is all numbers (``numpy.savetxt`` output) is refused rather than losing
      its first sample to the column names (pandas' default names ``0, 1, ..., k-1`` are
      a header). An unnamed first column of strictly increasing integers (the row index
      written by pandas' ``DataFrame.to_csv``) is dropped.
    - ``.npz``: arrays ``X`` of shape (n, d) and ``y`` of shape (n,).

    ``task`` is ``"regression"``, ``"classification"`` or ``None``: inferred from the
    target (a non-numeric target is classification; a numeric one by
    :func:`~losslab.data.dataset.infer_task`). ``"regression"`` needs a numeric target.
    """
    if not path.is_file():
        raise DatasetError(f"no such data file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if target is not None:
            raise DatasetError(f"{path.name}: target= applies to CSV and Parquet files only")
        return _read_npz(path, task=task)
    if suffix == ".csv":
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise DatasetError(f"{path.name} is empty: no header and no rows") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DatasetError(f"{path.name} is not a readable CSV file: {error}") from None
        _check_header(frame, name=path.name)
        frame = _drop_row_index(frame)
        return _from_frame(frame, name=path.name, target=target, task=task)
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several unrelated types
            raise DatasetError(f"{path.name} is not a readable Parquet file: {error}") from None
        return _from_frame(frame, name=path.name, target=target, task=task)
    raise DatasetError(
        f"{path.name}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _check_header(frame: pd.DataFrame, *, name: str) -> None:
    """Refuse a CSV whose column names are all numbers: its first line is a data row.

    pandas renames a repeated name ``"1.0"`` to ``"1.0.1"``, so that suffix is ignored.
    """
    columns = [str(c) for c in frame.columns]
    if columns == [str(j) for j in range(len(columns))]:  # pandas' default names, 0..k-1
        return
    if not all(_is_number(c) or _is_number(re.sub(r"\.\d+$", "", c)) for c in columns):
        return
    k = len(columns)
    if k <= 6:
        example = ",".join([f"x{j}" for j in range(1, k)] + ["y"])
    else:
        example = f"x1,x2,...,x{k - 1},y"
    shown = ", ".join(columns[:4]) + (", ..." if k > 4 else "")
    raise DatasetError(
        f"{name} seems to have no header row: its first line ({shown}) is all numbers, "
        "which would be read as column names and lose the first sample. Add a first line "
        f"naming the {k} columns, e.g. {example!r}; the loader expects a header row and "
        "takes the last column (or the one named by target=/--target) as the target"
    )


def _drop_row_index(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop an unnamed first column of strictly increasing integers: the row index that
    pandas' ``DataFrame.to_csv(path)`` writes by default (read back as ``"Unnamed: 0"``;
    ``0..n-1``, or increasing with gaps for a filtered frame)."""
    if frame.shape[1] == 0 or str(frame.columns[0]) != "Unnamed: 0":
        return frame
    first = frame.iloc[:, 0]
    if not pd.api.types.is_integer_dtype(first):
        return frame
    if not bool((np.diff(first.to_numpy()) > 0).all()):
        return frame
    return frame.drop(columns=frame.columns[0])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npz(path: Path, *, task: str | None) -> Dataset:
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
    return dataset_from_arrays(X, y, name=path.name, task=task, meta={"source": str(path)})


def _from_frame(frame: pd.DataFrame, *, name: str, target: str | None, task: str | None) -> Dataset:
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
    for column in features.columns:
        _check_mostly_numeric(features[column], name=name, what=f"feature column {column!r}")
    non_numeric = [c for c in features.columns if not _is_numeric(features[c])]
    if non_numeric:
        raise DatasetError(
            f"{name}: feature column(s) {non_numeric} are not numeric; encode them as numbers "
            "or drop them"
        )
    meta: dict[str, Any] = {"source": name, "target_name": target_name}
    target_column = frame[target_name]
    if _is_numeric(target_column):
        y = target_column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        _check_mostly_numeric(target_column, name=name, what=f"target column {target_name!r}")
        if task == "regression":
            example = target_column.dropna().iloc[0] if target_column.notna().any() else None
            raise DatasetError(
                f"{name}: target column {target_name!r} is not numeric (values such as "
                f"{example!r}); task 'regression' needs numbers"
            )
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


def _check_mostly_numeric(column: pd.Series, *, name: str, what: str) -> None:
    """Refuse a text column whose values are mostly numbers but not all.

    Such a column is a numeric column with a few bad cells, typically a missing-value
    marker such as ``"?"``; read as text it would turn a regression target into one
    class per value. Raises :class:`DatasetError` naming the first offending rows
    (0-based data rows) and their values. Numeric columns and columns that are mostly
    text pass.
    """
    if _is_numeric(column):
        return
    present = column.notna().to_numpy()
    parsed = pd.to_numeric(column.astype(str), errors="coerce").notna().to_numpy()
    bad = np.flatnonzero(present & ~parsed)
    n_present = int(present.sum())
    if bad.size == 0 or 2 * bad.size >= n_present:
        return
    values = column.to_numpy()
    shown = ", ".join(f"row {i}: {values[i]!r}" for i in bad[:5])
    more = ", ..." if bad.size > 5 else ""
    raise DatasetError(
        f"{name}: {what} holds numbers except in {bad.size} of {n_present} row(s) "
        f"(0-based: {shown}{more}); a missing-value marker? Replace those cells by numbers, "
        "or leave them empty and drop or impute those rows"
    )
