from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.convex import ConvexReLU, ConvexReLUClassifier, activation_patterns
from losslab.data import load
from losslab.errors import ConvexProblemError
from tests.convex_reference import clarabel_objective


def _iris(n_per_class: int = 15):
    data = load("iris", standardize=True)
    rows = torch.cat([torch.nonzero(data.y == k).flatten()[:n_per_class] for k in range(3)])
    return data.X[rows, :2].numpy(), data.y[rows].numpy()


def test_one_vs_all_solves_one_certified_program_per_class():
    X, y = _iris()
    gates = np.random.default_rng(0).standard_normal((2, 12))
    model = ConvexReLUClassifier(lam=0.05, formulation="gated", gates=gates, tol=1e-8)
    model.fit(X, y)
    assert len(model.estimators_) == 3
    patterns = activation_patterns(torch.tensor(X), torch.tensor(gates))
    references = [
        clarabel_objective(torch.tensor(X), torch.tensor(np.where(y == k, 1.0, -1.0)),
                           patterns, 0.05, "gated")
        for k in model.classes_
    ]  # fmt: skip
    assert model.objective_ == pytest.approx(sum(references), rel=1e-6)
    scores = model.decision_function(X)
    assert scores.shape == (len(y), 3)
    np.testing.assert_array_equal(model.predict(X), model.classes_[scores.argmax(axis=1)])
    assert model.score(X, y) > 0.6


def test_binary_labels_become_minus_and_plus_one():
    X, y = _iris()
    keep = y > 0
    labels = np.where(y[keep] == 2, "virginica", "versicolor")
    model = ConvexReLUClassifier(lam=0.05, n_gates=20, check_global=False).fit(X[keep], labels)
    assert len(model.estimators_) == 1
    signed = np.where(labels == "virginica", 1.0, -1.0)
    reference = ConvexReLU(lam=0.05, n_gates=20, check_global=False).fit(X[keep], signed)
    assert model.objective_ == pytest.approx(reference.objective_, rel=1e-12)
    expected = np.where(reference.predict(X[keep]) > 0, "virginica", "versicolor")
    np.testing.assert_array_equal(model.predict(X[keep]), expected)


def test_one_class_is_an_error():
    X, _ = _iris()
    with pytest.raises(ConvexProblemError, match="at least 2 classes"):
        ConvexReLUClassifier(n_gates=5).fit(X[:10], np.zeros(10))


@pytest.mark.parametrize("bias", [False, True])
def test_the_classifier_as_one_torch_network(bias):
    X, y = _iris()
    model = ConvexReLUClassifier(lam=0.05, n_gates=20, bias=bias, tol=1e-8).fit(X, y)
    assert [c.is_global for c in model.certificates_] == [
        e.certificate_.is_global for e in model.estimators_
    ]
    net = model.to_torch()
    widths = [e.to_torch()[0].out_features for e in model.estimators_]
    assert net[0].out_features == sum(widths)
    assert net[2].out_features == 3
    with torch.no_grad():
        outputs = net(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(outputs, model.decision_function(X), rtol=1e-9, atol=1e-10)
    # hidden units of network k feed output k only
    blocks = np.split(np.arange(sum(widths)), np.cumsum(widths)[:-1])
    weight = net[2].weight.detach().numpy()
    for k, units in enumerate(blocks):
        assert np.count_nonzero(np.delete(weight[:, units], k, axis=0)) == 0
