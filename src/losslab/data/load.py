"""One entry point for every dataset: built-in names, synthetic generators and files."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from losslab.data import builtin, synthetic
from losslab.data.dataset import Dataset, resolve_task
from losslab.data.files import SUPPORTED_SUFFIXES, read_file
from losslab.errors import DatasetError


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset available by name: where it comes from and how to make it."""

    name: str
    source: str
    make: Callable[..., Dataset]

    @property
    def description(self) -> str:
        """The generator's one-line title (its docstring up to the first colon)."""
        return (inspect.getdoc(self.make) or "").splitlines()[0].split(":")[0]

    @property
    def parameters(self) -> dict[str, Any]:
        """Keyword parameters and their defaults (synthetic generators only)."""
        signature = inspect.signature(self.make)
        return {name: p.default for name, p in signature.parameters.items()}


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    spec.name: spec
    for spec in [
        BuiltinDataset("iris", "scikit-learn", builtin.iris),
        BuiltinDataset("wine", "scikit-learn", builtin.wine),
        BuiltinDataset("breast_cancer", "scikit-learn", builtin.breast_cancer),
        BuiltinDataset("diabetes", "scikit-learn", builtin.diabetes),
        BuiltinDataset("digits", "scikit-learn", builtin.digits),
        BuiltinDataset("lfw_faces", "scikit-image", builtin.lfw_faces),
        BuiltinDataset("teacher_relu", "synthetic", synthetic.teacher_relu),
        BuiltinDataset("teacher_quadratic", "synthetic", synthetic.teacher_quadratic),
        BuiltinDataset("gaussian_regression", "synthetic", synthetic.gaussian_regression),
    ]
}


def load(
    name_or_path: str | Path,
    *,
    target: str | None = None,
    task: str | None = None,
    standardize: bool = False,
    **params: Any,
) -> Dataset:
    """Load a dataset by built-in name or from a ``.csv``, ``.npz`` or ``.parquet`` file.

    Args:
        name_or_path: a name from :data:`BUILTIN_DATASETS` (``losslab data list``) or a
            file path. A CSV file needs a header row naming its columns (see
            :func:`~losslab.data.files.read_file`).
        target: for CSV and Parquet files, the name of the target column (default: the
            last column).
        task: ``"regression"`` or ``"classification"`` to override the inferred task, e.g.
            ``"regression"`` for an integer target such as counts, which is otherwise
            read as class labels; ``None`` (default) infers it: a non-numeric target, or
            one of at most 20 distinct integers, is classification.
        standardize: centre and scale the features (and a regression target, including
            one made so by ``task``); see :meth:`Dataset.standardized`.
        **params: parameters of a synthetic generator, e.g. ``n=500, d=10, seed=1``.

    Returns:
        A :class:`Dataset` with float64 tensors ``X`` (n, d) and ``y`` (n,).

    Raises:
        DatasetError: unknown name, missing or unreadable file, a CSV without a header
            row, NaN or inf, no rows, missing target column, non-numeric features, a
            mostly numeric column with non-numeric cells (such as ``"?"``), a task that
            does not fit the target, unknown parameters.

    Example:
        >>> from losslab.data import load
        >>> load("iris").X.shape
        torch.Size([150, 4])
        >>> load("teacher_relu", n=50, d=3, seed=1).task
        'regression'
    """
    key = str(name_or_path)
    spec = BUILTIN_DATASETS.get(key)
    if spec is not None:
        if target is not None:
            raise DatasetError(f"target= applies to files; {key!r} is a built-in dataset")
        dataset = spec.make(**_check_params(spec, params))
        if task is not None:
            resolved = resolve_task(dataset.y.numpy(), task, name=dataset.name)
            dataset = replace(dataset, task=resolved)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists() and path.suffix.lower() not in SUPPORTED_SUFFIXES:
            names = ", ".join(BUILTIN_DATASETS)
            raise DatasetError(
                f"unknown dataset {key!r}: built-in names are {names}; "
                f"or give a path to a {', '.join(SUPPORTED_SUFFIXES)} file"
            )
        if params:
            raise DatasetError(f"parameters {sorted(params)} apply to synthetic datasets only")
        dataset = read_file(path, target=target, task=task)
    return dataset.standardized() if standardize else dataset


def _check_params(spec: BuiltinDataset, params: dict[str, Any]) -> dict[str, Any]:
    allowed = spec.parameters
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes no parameters"
        raise DatasetError(f"unknown parameter(s) {unknown} for dataset {spec.name!r}; {takes}")
    return params
