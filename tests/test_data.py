from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn import datasets as skd

from losslab.data import BUILTIN_DATASETS, Dataset, dataset_from_arrays, load
from losslab.data.dataset import MAX_CLASSES, infer_task
from losslab.errors import DatasetError, LosslabError


@pytest.mark.parametrize(
    ("name", "loader", "task"),
    [
        ("iris", skd.load_iris, "classification"),
        ("wine", skd.load_wine, "classification"),
        ("breast_cancer", skd.load_breast_cancer, "classification"),
        ("diabetes", skd.load_diabetes, "regression"),
        ("digits", skd.load_digits, "classification"),
    ],
)
def test_sklearn_builtins_match_sklearn(name, loader, task):
    dataset = load(name)
    bunch = loader()
    assert dataset.X.dtype == torch.float64
    assert dataset.y.dtype == torch.float64
    np.testing.assert_array_equal(dataset.X.numpy(), bunch.data)
    np.testing.assert_array_equal(dataset.y.numpy(), bunch.target)
    assert dataset.task == task
    assert dataset.feature_names == [str(f) for f in bunch.feature_names]


def test_lfw_faces_is_the_skimage_subset():
    from skimage.data import lfw_subset

    dataset = load("lfw_faces")
    images = lfw_subset()
    assert dataset.X.shape == (200, 625)
    np.testing.assert_array_equal(dataset.X.numpy(), images.reshape(200, -1))
    assert dataset.y.sum() == 100
    assert dataset.y[:100].eq(1).all()
    assert dataset.task == "classification"
    assert dataset.meta["image_shape"] == [25, 25]


def test_every_builtin_loads_and_lists_a_description():
    for name, spec in BUILTIN_DATASETS.items():
        dataset = load(name)
        assert dataset.name == name
        assert dataset.n_samples > 0
        assert spec.description


def test_teacher_relu_target_recomputes_from_teacher():
    dataset = load("teacher_relu", n=64, d=4, width=3, seed=5)
    W = torch.tensor(dataset.meta["teacher"]["W"], dtype=torch.float64)
    alpha = torch.tensor(dataset.meta["teacher"]["alpha"], dtype=torch.float64)
    expected = (dataset.X @ W.T).clamp(min=0) @ alpha
    torch.testing.assert_close(dataset.y, expected, rtol=0, atol=1e-14)
    assert set(alpha.tolist()) <= {-1.0, 1.0}


def test_teacher_quadratic_target_is_x_m_x():
    dataset = load("teacher_quadratic", n=50, d=6, width=2, seed=1)
    W = torch.tensor(dataset.meta["teacher"]["W"], dtype=torch.float64)
    v = torch.tensor(dataset.meta["teacher"]["v"], dtype=torch.float64)
    M = W.T @ torch.diag(v) @ W
    expected = torch.einsum("ni,ij,nj->n", dataset.X, M, dataset.X)
    torch.testing.assert_close(dataset.y, expected, rtol=1e-12, atol=1e-14)
    # x ~ N(0, I/d): the average squared norm is close to 1.
    assert abs(dataset.X.square().sum(1).mean().item() - 1) < 0.3


def test_gaussian_regression_residual_is_the_noise():
    dataset = load("gaussian_regression", n=4000, d=3, noise=0.5, seed=2)
    beta = torch.tensor(dataset.meta["teacher"]["beta"], dtype=torch.float64)
    residual = dataset.y - dataset.X @ beta
    assert abs(residual.std().item() - 0.5) < 0.03


def test_synthetic_is_seeded():
    a = load("teacher_relu", n=20, seed=3)
    b = load("teacher_relu", n=20, seed=3)
    c = load("teacher_relu", n=20, seed=4)
    assert torch.equal(a.X, b.X)
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.X, c.X)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n": 0}, "n must be an integer >= 1"),
        ({"d": 2.5}, "d must be an integer"),
        ({"noise": -1.0}, "noise must be a number >= 0"),
        ({"depth": 3}, "unknown parameter"),
    ],
)
def test_synthetic_bad_parameters(params, match):
    with pytest.raises(DatasetError, match=match):
        load("teacher_relu", **params)


def test_builtin_rejects_parameters_and_target():
    with pytest.raises(DatasetError, match="takes no parameters"):
        load("iris", n=3)
    with pytest.raises(DatasetError, match="target= applies to files"):
        load("iris", target="species")


def test_unknown_name_lists_builtins():
    with pytest.raises(DatasetError, match=r"unknown dataset 'irs'.*iris.*digits"):
        load("irs")


def test_errors_are_losslab_errors():
    with pytest.raises(LosslabError):
        load("irs")


def test_csv_roundtrip_last_column_is_target(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, -1.0, 2.0], "label": [0, 1, 0]})
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    dataset = load(path)
    np.testing.assert_array_equal(dataset.X.numpy(), frame[["a", "b"]].to_numpy())
    np.testing.assert_array_equal(dataset.y.numpy(), [0, 1, 0])
    assert dataset.task == "classification"
    assert dataset.feature_names == ["a", "b"]


def test_csv_named_target_and_string_labels(tmp_path):
    frame = pd.DataFrame(
        {"kind": ["cat", "dog", "ant", "dog"], "a": [1, 2, 3, 4], "b": [4, 3, 2, 1]}
    )
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    dataset = load(str(path), target="kind")
    assert dataset.meta["target_names"] == ["ant", "cat", "dog"]
    np.testing.assert_array_equal(dataset.y.numpy(), [1, 2, 0, 2])
    np.testing.assert_array_equal(dataset.X.numpy(), [[1, 4], [2, 3], [3, 2], [4, 1]])


def test_parquet_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(30, 4)), columns=["p", "q", "r", "t"])
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    dataset = load(path, target="q")
    np.testing.assert_array_equal(dataset.y.numpy(), frame["q"].to_numpy())
    np.testing.assert_array_equal(dataset.X.numpy(), frame[["p", "r", "t"]].to_numpy())
    assert dataset.task == "regression"


def test_npz_roundtrip(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    y = np.array([[0.1], [0.2], [0.3], [0.4]])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    dataset = load(tmp_path / "d.npz")
    np.testing.assert_array_equal(dataset.X.numpy(), X)
    np.testing.assert_array_equal(dataset.y.numpy(), y[:, 0])


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.ones((2, 2)), y=np.ones(2))
    with pytest.raises(DatasetError, match=r"lacks array\(s\) \['X'\]"):
        load(tmp_path / "d.npz")


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such data file"):
        load(tmp_path / "absent.csv")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.txt'"):
        load(tmp_path / "d.txt")


def test_nan_is_located(tmp_path):
    frame = pd.DataFrame(
        {"a": [1.0, np.nan, 3.0, 4.0], "b": [1.0, 2.0, np.inf, 4.0], "y": [0, 1, 2, 3]}
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(
        DatasetError, match=r"2 row\(s\) \(0-based: 1, 2\) in column\(s\) \['a', 'b'\]"
    ):
        load(tmp_path / "d.csv")


def test_nan_in_target_is_located():
    with pytest.raises(DatasetError, match=r"<target>"):
        dataset_from_arrays(np.ones((3, 2)), [1.0, np.nan, 0.0], name="t")


def test_empty_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    with pytest.raises(DatasetError, match="no rows"):
        load(tmp_path / "header.csv")


def test_missing_target_column(tmp_path):
    pd.DataFrame({"a": [1, 2], "b": [3, 4]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DatasetError, match=r"no column 'y'; its columns are \['a', 'b'\]"):
        load(tmp_path / "d.csv", target="y")


def test_non_numeric_feature(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "city": ["x", "y"], "y": [0.5, 1.5]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DatasetError, match=r"feature column\(s\) \['city'\] are not numeric"):
        load(tmp_path / "d.csv")


def test_shape_mismatch():
    with pytest.raises(DatasetError, match="X has 3 rows but y has 2"):
        dataset_from_arrays(np.ones((3, 2)), np.ones(2), name="t")
    with pytest.raises(DatasetError, match="no rows"):
        dataset_from_arrays(np.ones((0, 2)), np.ones(0), name="t")


def test_dataset_requires_float64():
    with pytest.raises(DatasetError, match="float64"):
        Dataset(torch.ones(2, 2), torch.ones(2), "t", "regression")


def test_standardize_matches_numpy():
    raw = load("wine")
    dataset = load("wine", standardize=True)
    X = raw.X.numpy()
    expected = (X - X.mean(0)) / X.std(0)
    np.testing.assert_allclose(dataset.X.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(dataset.y, raw.y)  # class labels are left alone
    assert dataset.meta["standardization"]["x_mean"] == pytest.approx(X.mean(0).tolist())


def test_standardize_regression_target_and_constant_column():
    X = np.c_[np.arange(5.0), np.full(5, 7.0)]
    dataset = dataset_from_arrays(X, np.linspace(0, 10, 5) + 0.5, name="t").standardized()
    np.testing.assert_allclose(dataset.X[:, 1].numpy(), 0.0)
    assert dataset.y.mean().abs() < 1e-12
    assert abs(dataset.y.std(correction=0).item() - 1) < 1e-12
    stats = dataset.meta["standardization"]
    assert stats["x_scale"][1] == 1.0
    y_back = dataset.y * stats["y_scale"] + stats["y_mean"]
    np.testing.assert_allclose(y_back.numpy(), np.linspace(0, 10, 5) + 0.5)


def test_describe_matches_numpy():
    dataset = load("iris")
    summary = dataset.describe()
    X = dataset.X.numpy()
    assert [f.mean for f in summary.features] == pytest.approx(X.mean(0).tolist())
    assert [f.std for f in summary.features] == pytest.approx(X.std(0).tolist())
    assert summary.class_counts == {0.0: 50, 1.0: 50, 2.0: 50}
    assert summary.to_dict()["n_features"] == 4


@given(st.lists(st.integers(-5, 5), min_size=1, max_size=50))
def test_small_integer_targets_are_classes(labels):
    assert infer_task(np.array(labels, dtype=float)) == "classification"


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50))
def test_a_fractional_target_is_regression(values):
    y = np.array([*values, 0.5])
    assert infer_task(y) == "regression"


def test_many_integer_values_are_regression():
    assert infer_task(np.arange(MAX_CLASSES + 1.0)) == "regression"
    assert infer_task(np.arange(float(MAX_CLASSES))) == "classification"


def test_a_headerless_csv_is_refused_rather_than_losing_its_first_row(tmp_path):
    rng = np.random.default_rng(3)
    table = np.column_stack([rng.normal(size=(12, 2)), rng.integers(0, 2, 12)])
    path = tmp_path / "noheader.csv"
    np.savetxt(path, table, delimiter=",")
    with pytest.raises(DatasetError, match=r"no header row.*e\.g\. 'x1,x2,y'"):
        load(path)
    # a first row with repeated values (pandas renames the second "1.0" to "1.0.1")
    repeated = tmp_path / "repeated.csv"
    np.savetxt(repeated, np.vstack([[1.0, 1.0, 0.0], table]), delimiter=",")
    with pytest.raises(DatasetError, match="no header row"):
        load(repeated)
    # with a header line every row of the file is a sample
    named = tmp_path / "named.csv"
    np.savetxt(named, table, delimiter=",", header="x1,x2,y", comments="")
    dataset = load(named)
    assert dataset.n_samples == np.loadtxt(path, delimiter=",").shape[0] == 12
    np.testing.assert_array_equal(dataset.X.numpy(), table[:, :2])
    # pandas' default names 0, 1, 2 are a header
    default_names = tmp_path / "default_names.csv"
    pd.DataFrame(table).to_csv(default_names, index=False)
    assert load(default_names).n_samples == 12


def test_a_missing_value_marker_in_a_numeric_column_is_located(tmp_path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(12, 3)).round(3), columns=["a", "b", "y"])
    target = frame.astype({"y": object})
    target.loc[4, "y"] = "?"
    target.to_csv(tmp_path / "target.csv", index=False)
    with pytest.raises(DatasetError, match=r"target column 'y' .* 1 of 12 row\(s\) .*row 4: '\?'"):
        load(tmp_path / "target.csv")
    feature = frame.astype({"b": object})
    feature.loc[[2, 7], "b"] = ["?", "-"]
    feature.to_csv(tmp_path / "feature.csv", index=False)
    with pytest.raises(DatasetError, match=r"feature column 'b' .*row 2: '\?', row 7: '-'"):
        load(tmp_path / "feature.csv")


def test_task_overrides_the_inferred_task(tmp_path):
    counts = np.array([2, 2, 0, 1, 1, 2, 1, 0, 2, 1, 2, 1], dtype=float)
    frame = pd.DataFrame({"a": np.arange(12.0), "b": np.sin(np.arange(12.0)), "n": counts})
    path = tmp_path / "counts.csv"
    frame.to_csv(path, index=False)
    assert load(path).task == "classification"
    dataset = load(path, task="regression")
    assert dataset.task == "regression"
    np.testing.assert_array_equal(dataset.y.numpy(), counts)
    scaled = load(path, task="regression", standardize=True)
    np.testing.assert_allclose(scaled.y.numpy(), (counts - counts.mean()) / counts.std())
    np.savez(tmp_path / "d.npz", X=frame[["a", "b"]].to_numpy(), y=counts)
    assert load(tmp_path / "d.npz", task="regression").task == "regression"
    assert load("iris", task="regression").task == "regression"
    assert load("teacher_relu", n=20, d=2, task="regression").task == "regression"
    with pytest.raises(DatasetError, match=r"needs integer class labels.*0\.841471 in row 1"):
        load(path, target="b", task="classification")
    with pytest.raises(DatasetError, match="task must be 'regression', 'classification'"):
        load(path, task="counts")
    labels = pd.DataFrame({"a": [1.0, 2.0, 3.0], "kind": ["x", "y", "x"]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DatasetError, match=r"not numeric.*task 'regression' needs numbers"):
        load(tmp_path / "labels.csv", task="regression")


def test_the_row_index_written_by_to_csv_is_dropped(tmp_path):
    frame = pd.DataFrame({"a": [0.5, 1.5, -2.0, 3.0], "b": [1.0, 0.0, 2.0, 5.0], "y": [1, 0, 1, 0]})
    frame.to_csv(tmp_path / "d.csv")  # pandas' default: the index as an unnamed first column
    dataset = load(tmp_path / "d.csv")
    assert dataset.feature_names == ["a", "b"]
    np.testing.assert_array_equal(dataset.X.numpy(), frame[["a", "b"]].to_numpy())
    filtered = frame[frame["b"] > 0.5]  # index 0, 2, 3: increasing, with a gap
    filtered.to_csv(tmp_path / "filtered.csv")
    dataset = load(tmp_path / "filtered.csv")
    assert dataset.feature_names == ["a", "b"]
    np.testing.assert_array_equal(dataset.X.numpy(), filtered[["a", "b"]].to_numpy())
