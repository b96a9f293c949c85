"""The :class:`Dataset` container and validation of arrays at the boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from losslab.errors import DatasetError

Task = Literal["regression", "classification"]

#: A target whose values are all integers with at most this many distinct values is
#: taken to be a classification target (labels); anything else is regression.
MAX_CLASSES = 20


@dataclass(frozen=True)
class FeatureStats:
    """Summary statistics of one column."""

    name: str
    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class DatasetSummary:
    """What ``losslab data show`` prints: shape, target type and per-column statistics."""

    name: str
    task: Task
    n_samples: int
    n_features: int
    features: list[FeatureStats]
    target: FeatureStats
    class_counts: dict[float, int] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "features": [vars(f) for f in self.features],
            "target": vars(self.target),
            "class_counts": self.class_counts,
        }


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` of shape (n, d) and target ``y`` of shape (n,), both float64.

    ``task`` is ``"classification"`` when ``y`` holds class labels (as floats:
    0.0, 1.0, ...) and ``"regression"`` otherwise. ``meta`` carries JSON-friendly
    facts about the source: feature names, class names, generator parameters, and
    the standardisation applied.
    """

    X: torch.Tensor
    y: torch.Tensor
    name: str
    task: Task
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.y.ndim != 1 or self.X.shape[0] != self.y.shape[0]:
            raise DatasetError(
                f"dataset {self.name!r}: X must be (n, d) and y (n,) with the same n; "
                f"got X {tuple(self.X.shape)} and y {tuple(self.y.shape)}"
            )
        if self.X.dtype != torch.float64 or self.y.dtype != torch.float64:
            raise DatasetError(f"dataset {self.name!r}: X and y must be float64 tensors")
        if self.task not in ("regression", "classification"):
            raise DatasetError(f"dataset {self.name!r}: unknown task {self.task!r}")

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def feature_names(self) -> list[str]:
        names = self.meta.get("feature_names")
        return list(names) if names else [f"x{j}" for j in range(self.n_features)]

    def standardized(self) -> Dataset:
        """Columns of ``X`` to mean 0 and standard deviation 1 (population std).

        A constant column is only centred (its std is recorded as 1). For regression the
        target is standardised too; class labels are left alone. The means and standard
        deviations used are recorded in ``meta["standardization"]`` so that predictions
        can be mapped back: ``y = y_std * y_scale + y_mean``.
        """
        x_mean, x_scale = _mean_and_scale(self.X)
        stats: dict[str, Any] = {"x_mean": x_mean.tolist(), "x_scale": x_scale.tolist()}
        y = self.y
        if self.task == "regression":
            y_mean, y_scale = _mean_and_scale(self.y[:, None])
            y = (self.y - y_mean[0]) / y_scale[0]
            stats |= {"y_mean": float(y_mean[0]), "y_scale": float(y_scale[0])}
        meta = dict(self.meta) | {"standardization": stats}
        return replace(self, X=(self.X - x_mean) / x_scale, y=y, meta=meta)

    def describe(self) -> DatasetSummary:
        """Per-column mean, std, min and max, and class counts for classification."""
        features = [_column_stats(name, self.X[:, j]) for j, name in enumerate(self.feature_names)]
        counts = None
        if self.task == "classification":
            values, freq = torch.unique(self.y, return_counts=True)
            counts = {float(v): int(c) for v, c in zip(values, freq, strict=True)}
        return DatasetSummary(
            name=self.name,
            task=self.task,
            n_samples=self.n_samples,
            n_features=self.n_features,
            features=features,
            target=_column_stats(str(self.meta.get("target_name", "y")), self.y),
            class_counts=counts,
        )

    def to_dict(self) -> dict[str, Any]:
        """Name, task, shape and meta (no arrays), for storing next to results."""
        return {
            "name": self.name,
            "task": self.task,
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "meta": self.meta,
        }


def _mean_and_scale(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = values.mean(dim=0)
    scale = values.std(dim=0, correction=0)
    return mean, torch.where(scale > 0, scale, torch.ones_like(scale))


def _column_stats(name: str, column: torch.Tensor) -> FeatureStats:
    return FeatureStats(
        name=name,
        mean=float(column.mean()),
        std=float(column.std(correction=0)),
        min=float(column.min()),
        max=float(column.max()),
    )


def infer_task(y: np.ndarray) -> Task:
    """``"classification"`` for integer-valued targets with at most ``MAX_CLASSES`` values."""
    is_integral = bool(np.all(np.equal(np.mod(y, 1), 0)))
    if is_integral and np.unique(y).size <= MAX_CLASSES:
        return "classification"
    return "regression"


def resolve_task(y: np.ndarray, task: str | None, *, name: str) -> Task:
    """The task of target ``y``: ``task`` when given, else :func:`infer_task`.

    ``task="regression"`` accepts any numeric target (an integer target such as counts
    included); ``task="classification"`` needs integer-valued labels, however many.

    Raises:
        DatasetError: ``task`` is not ``None``, ``"regression"`` or
            ``"classification"``, or it is ``"classification"`` and ``y`` holds a
            non-integer value.
    """
    if task is None:
        return infer_task(y)
    if task == "regression":
        return "regression"
    if task != "classification":
        raise DatasetError(
            f"dataset {name!r}: task must be 'regression', 'classification' or None "
            f"(inferred); got {task!r}"
        )
    fractional = np.flatnonzero(np.mod(y, 1) != 0)
    if fractional.size:
        row = int(fractional[0])
        raise DatasetError(
            f"dataset {name!r}: task 'classification' needs integer class labels, but the "
            f"target is {y[row]:g} in row {row} (0-based); use task 'regression'"
        )
    return "classification"


def dataset_from_arrays(
    X: Any,
    y: Any,
    *,
    name: str,
    task: str | None = None,
    feature_names: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """Validate array-likes and wrap them as a float64 :class:`Dataset`.

    ``task`` is ``"regression"``, ``"classification"`` or ``None`` (inferred from ``y``
    by :func:`infer_task`); see :func:`resolve_task`.

    Raises :class:`~losslab.errors.DatasetError` for no rows, mismatched shapes,
    NaN or inf (naming the rows and columns that hold them), an unknown task, and
    non-integer labels for ``task="classification"``.
    """
    X_np = np.asarray(X, dtype=np.float64)
    y_np = np.asarray(y, dtype=np.float64)
    if y_np.ndim == 2 and y_np.shape[1] == 1:
        y_np = y_np[:, 0]
    if X_np.ndim != 2:
        raise DatasetError(f"dataset {name!r}: X must be 2-D (n, d); got shape {X_np.shape}")
    if y_np.ndim != 1:
        raise DatasetError(f"dataset {name!r}: y must be 1-D (n,); got shape {y_np.shape}")
    if X_np.shape[0] == 0 or X_np.shape[1] == 0:
        raise DatasetError(f"dataset {name!r} has no rows or no feature columns: X {X_np.shape}")
    if X_np.shape[0] != y_np.shape[0]:
        raise DatasetError(
            f"dataset {name!r}: X has {X_np.shape[0]} rows but y has {y_np.shape[0]}"
        )
    names = list(feature_names) if feature_names is not None else None
    _check_finite(X_np, y_np, name=name, feature_names=names)
    meta = dict(meta or {})
    if names is not None:
        meta["feature_names"] = names
    return Dataset(
        X=torch.tensor(X_np, dtype=torch.float64),
        y=torch.tensor(y_np, dtype=torch.float64),
        name=name,
        task=resolve_task(y_np, task, name=name),
        meta=meta,
    )


def _check_finite(
    X: np.ndarray, y: np.ndarray, *, name: str, feature_names: list[str] | None
) -> None:
    bad_x = ~np.isfinite(X)
    bad_y = ~np.isfinite(y)
    bad_rows = np.flatnonzero(bad_x.any(axis=1) | bad_y)
    if bad_rows.size == 0:
        return
    names = feature_names or [f"x{j}" for j in range(X.shape[1])]
    columns = [names[j] for j in np.flatnonzero(bad_x.any(axis=0))]
    if bad_y.any():
        columns.append("<target>")
    first = ", ".join(str(i) for i in bad_rows[:5]) + (", ..." if bad_rows.size > 5 else "")
    raise DatasetError(
        f"dataset {name!r} has NaN or inf in {bad_rows.size} row(s) (0-based: {first}) "
        f"in column(s) {columns}; drop or impute those values first"
    )
