"""Real datasets that ship inside scikit-learn and scikit-image (no download)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from losslab.data.dataset import Dataset, Task, dataset_from_arrays


def _sklearn(loader_name: str, name: str, task: Task) -> Dataset:
    from sklearn import datasets

    loader: Callable[..., Any] = getattr(datasets, loader_name)
    bunch = loader()
    names = [str(f) for f in bunch.feature_names] if "feature_names" in bunch else None
    meta: dict[str, Any] = {"source": f"sklearn.datasets.{loader_name}"}
    if "target_names" in bunch:
        meta["target_names"] = [str(t) for t in bunch.target_names]
    return dataset_from_arrays(
        bunch.data, bunch.target, name=name, task=task, feature_names=names, meta=meta
    )


def iris() -> Dataset:
    """Fisher's iris: 150 flowers, 4 measurements, 3 species."""
    return _sklearn("load_iris", "iris", "classification")


def wine() -> Dataset:
    """UCI wine recognition: 178 wines, 13 chemical features, 3 cultivars."""
    return _sklearn("load_wine", "wine", "classification")


def breast_cancer() -> Dataset:
    """Wisconsin diagnostic breast cancer: 569 samples, 30 features, 2 classes."""
    return _sklearn("load_breast_cancer", "breast_cancer", "classification")


def diabetes() -> Dataset:
    """Diabetes progression: 442 patients, 10 (scaled) features, regression target."""
    return _sklearn("load_diabetes", "diabetes", "regression")


def digits() -> Dataset:
    """Optical handwritten digits: 1797 images of 8x8 pixels (values 0..16), 10 classes."""
    return _sklearn("load_digits", "digits", "classification")


def lfw_faces() -> Dataset:
    """Faces and non-faces shipped with scikit-image: ``skimage.data.lfw_subset``.

    200 grey images of 25x25 pixels in [0, 1], flattened to 625 features: the first
    100 are faces (label 1), the last 100 are not (label 0).
    """
    from skimage import data

    images = np.asarray(data.lfw_subset(), dtype=np.float64)
    labels = np.r_[np.ones(100), np.zeros(100)]
    meta = {
        "source": "skimage.data.lfw_subset",
        "image_shape": list(images.shape[1:]),
        "target_names": ["non-face", "face"],
    }
    flat = images.reshape(images.shape[0], -1)
    return dataset_from_arrays(flat, labels, name="lfw_faces", task="classification", meta=meta)
