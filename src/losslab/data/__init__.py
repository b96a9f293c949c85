"""Datasets: scikit-learn and scikit-image built-ins, seeded synthetic teachers, user
files (CSV / NPZ / Parquet), validation and standardisation."""

from losslab.data.dataset import Dataset, DatasetSummary, FeatureStats, dataset_from_arrays
from losslab.data.files import SUPPORTED_SUFFIXES, read_file
from losslab.data.load import BUILTIN_DATASETS, BuiltinDataset, load
from losslab.data.synthetic import gaussian_regression, teacher_quadratic, teacher_relu

__all__ = [
    "BUILTIN_DATASETS",
    "SUPPORTED_SUFFIXES",
    "BuiltinDataset",
    "Dataset",
    "DatasetSummary",
    "FeatureStats",
    "dataset_from_arrays",
    "gaussian_regression",
    "load",
    "read_file",
    "teacher_quadratic",
    "teacher_relu",
]
