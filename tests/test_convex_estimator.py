from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from losslab.convex import ConvexReLU
from losslab.errors import ConvexProblemError
from tests.convex_reference import clarabel_objective, relu_teacher


def data(n=40, d=3, seed=0):
    X, y = relu_teacher(n, d, seed)
    return X.numpy(), y.numpy()


@pytest.mark.parametrize("formulation", ["relu", "gated"])
@pytest.mark.parametrize("bias", [False, True])
def test_fit_matches_clarabel_and_recovers_the_network(formulation, bias):
    X, y = data()
    model = ConvexReLU(lam=0.05, formulation=formulation, n_gates=20, bias=bias, tol=1e-8).fit(X, y)
    features = torch.as_tensor(np.c_[X, np.ones(len(X))] if bias else X)
    reference = clarabel_objective(
        features, torch.as_tensor(y), torch.as_tensor(model.patterns_), 0.05, formulation
    )
    assert model.objective_ == pytest.approx(reference, rel=1e-6)
    assert model.solution_.converged
    active = int((model.solution_.blocks.norm(dim=1) > 0).sum())
    assert model.n_neurons_ == active > 0
    if formulation == "relu":
        assert model.network_.n_neurons == active
    else:  # each gated neuron becomes up to two ReLU neurons
        assert active <= model.network_.n_neurons <= 2 * active
    net = model.to_torch()
    with torch.no_grad():
        output = net(torch.as_tensor(X))[:, 0].numpy()
    penalty = sum(float(p.detach().square().sum()) for p in net.parameters())
    nonconvex = float(np.square(output - y).sum()) / (2 * len(y)) + 0.05 / 2 * penalty
    if formulation == "relu":
        assert nonconvex == pytest.approx(model.objective_, rel=1e-9)
        np.testing.assert_allclose(model.predict(X), output, rtol=1e-10, atol=1e-12)
    else:  # the cone split keeps the training fit; its objective is the ReLU form's
        np.testing.assert_allclose(output, model.predict(X), rtol=1e-9, atol=1e-10)
        assert nonconvex == pytest.approx(
            model.network_.objective(features, torch.as_tensor(y), 0.05), rel=1e-9
        )
        # the gated program relaxes the ReLU one: the split's objective is not below it
        # (how close the split comes to the least one is checked against Clarabel in
        # test_convex_solvers::test_split_gated_block_reproduces_the_gated_fit_at_near_least_cost)
        assert nonconvex >= model.objective_ * (1 - 1e-9)


def test_certificate_is_global_on_enumerable_data():
    X, y = data(n=12, d=2, seed=3)
    model = ConvexReLU(lam=0.05, n_gates=2000, tol=1e-9, max_iter=50_000).fit(X, y)
    assert model.certificate_.global_check == "enumerated"
    assert model.certificate_.is_global, model.certificate_.message


def test_explicit_gates_and_their_shape():
    X, y = data()
    gates = np.random.default_rng(0).standard_normal((3, 15))
    model = ConvexReLU(lam=0.05, gates=gates, check_global=False).fit(X, y)
    assert model.gates_.shape[1] == model.patterns_.shape[1] <= 15
    np.testing.assert_array_equal(model.patterns_, X @ model.gates_ >= 0)
    with pytest.raises(
        ConvexProblemError, match=r"gates must have shape \(4, n_gates\) \(d \+ 1 rows"
    ):
        ConvexReLU(gates=gates, bias=True).fit(X, y)


def test_params_clone_and_score():
    X, y = data()
    model = ConvexReLU(lam=0.01, n_gates=30, check_global=False)
    assert clone(model).get_params() == model.get_params()
    model.set_params(lam=0.02)
    assert model.fit(X, y).lam == 0.02
    assert model.score(X, y) > 0.9  # the teacher is a small ReLU network


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lam": 0.0}, "lam must be"),
        ({"lam": -1.0}, "lam must be"),
        ({"n_gates": 0}, "n_gates must be"),
        ({"max_iter": 0, "formulation": "gated"}, "max_iter must be"),
        ({"max_iter": 0, "formulation": "relu"}, "max_iter must be"),
        ({"tol": -1.0}, "tol must be"),
        ({"device": "banana"}, "device must be 'cpu', 'cuda'"),
        ({"device": "meta"}, "run in float64, on 'cpu' or 'cuda'"),
        ({"device": "mps"}, "run in float64, on 'cpu' or 'cuda'"),
        ({"device": "cuda:99"}, "CUDA device"),
    ],
)
def test_bad_parameters(params, match):
    X, y = data()
    with pytest.raises(ConvexProblemError, match=match):
        ConvexReLU(**params).fit(X, y)


def test_torch_tensors_fit_as_their_arrays_and_the_model_lives_on_the_cpu():
    X, y = data()
    reference = ConvexReLU(lam=0.05, n_gates=20).fit(X, y)
    X_t = torch.tensor(X, requires_grad=True)  # numpy() alone refuses a tensor with grad
    model = ConvexReLU(lam=0.05, n_gates=20).fit(X_t, torch.tensor(y))
    assert model.objective_ == reference.objective_
    assert model.solution_.blocks.device.type == "cpu"
    np.testing.assert_array_equal(model.predict(X_t), reference.predict(X))
    assert model.score(X_t, torch.tensor(y)) == reference.score(X, y)
    explicit = ConvexReLU(lam=0.05, n_gates=20, device=torch.device("cpu")).fit(X, y)
    assert explicit.objective_ == reference.objective_


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    X, y = data()
    with pytest.raises(ConvexProblemError, match="sees no CUDA device"):
        ConvexReLU(device="cuda").fit(X, y)


def test_bad_data():
    X, y = data()
    with pytest.raises(ValueError, match="NaN"):
        ConvexReLU().fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        ConvexReLU().fit(X, y[:-1])
    with pytest.raises(ConvexProblemError, match="constant"):
        ConvexReLU().fit(np.ones((10, 2)), np.arange(10.0))
    with pytest.raises(ConvexProblemError, match="ConvexReLUClassifier"):
        ConvexReLU().fit(X, np.where(y > 0, "up", "down"))
    with pytest.raises(ConvexProblemError, match="NaN or inf"):
        ConvexReLU(gates=np.full((3, 4), np.nan)).fit(X, y)


def test_arrays_with_negative_strides_fit_and_predict_as_their_copies():
    X, y = data()
    flipped = ConvexReLU(lam=0.05, n_gates=20).fit(X[:, ::-1], y[::-1])
    copied = ConvexReLU(lam=0.05, n_gates=20).fit(X[:, ::-1].copy(), y[::-1].copy())
    assert flipped.objective_ == copied.objective_
    np.testing.assert_array_equal(
        flipped.predict(X[::-1, ::-1]), copied.predict(X[::-1, ::-1].copy())
    )


def test_optimal_member_checks_its_input():
    from sklearn.exceptions import NotFittedError

    X, y = data()
    with pytest.raises(NotFittedError):
        ConvexReLU().optimal_member()
    model = ConvexReLU(lam=0.05, n_gates=20, formulation="gated").fit(X, y)
    with pytest.raises(ConvexProblemError, match="y has NaN"):
        model.optimal_member("validation", X, np.where(y > 0, np.nan, y))
    with pytest.raises(ConvexProblemError, match="y must have shape"):
        model.optimal_member("validation", X, y[:-1])


def test_max_iter_marks_not_converged():
    X, y = data()
    model = ConvexReLU(lam=0.01, max_iter=5, tol=1e-12, check_global=False).fit(X, y)
    assert not model.solution_.converged
    assert "max_iter=5" in model.solution_.reason


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_a_float32_lam_gives_the_float64_answer(formulation):
    # NumPy 2 keeps np.float32 * float in float32: an unconverted lam rounded the
    # objective and the dual bound to float32 and hid the duality gap.
    from losslab.convex import certify_network

    X, y = relu_teacher(30, 3, seed=2)
    lam32 = np.logspace(-2, -1, 3, dtype=np.float32)[0]
    params = {"formulation": formulation, "n_gates": 20, "tol": 1e-9}
    narrow = ConvexReLU(lam=lam32, **params).fit(X, y)
    wide = ConvexReLU(lam=float(lam32), **params).fit(X, y)
    assert type(narrow.objective_) is float
    assert narrow.objective_ == wide.objective_
    assert narrow.solution_.dual_objective == wide.solution_.dual_objective
    net = wide.to_torch()
    assert (
        certify_network(net, X, y, lam32).objective
        == certify_network(net, X, y, float(lam32)).objective
    )


def test_a_gated_fit_on_small_uniform_data_splits_every_block():
    # scikit-learn's check data (10 x 3 uniform, +-1 labels): the l1 split left violations
    # of 5e-17 on entries near 3, and the repair step (1e-16 g) was lost to rounding.
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(10, 3))
    y = np.where(np.arange(10) < 5, -1.0, 1.0)
    model = ConvexReLU(lam=1e-2, formulation="gated", n_gates=20, check_global=False).fit(X, y)
    net = model.to_torch()
    with torch.no_grad():
        output = net(torch.as_tensor(X))[:, 0].numpy()
    np.testing.assert_allclose(output, model.predict(X), rtol=1e-9, atol=1e-10)


def test_a_failed_or_interrupted_refit_leaves_the_fitted_model_as_it_was(monkeypatch):
    import losslab.convex.estimator as estimator_module

    X, y = data()
    model = ConvexReLU(lam=0.05, n_gates=20).fit(X, y)
    before = model.predict(X)
    wide = np.random.default_rng(0).normal(size=(40, 7))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(estimator_module, "solve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(wide, y)
    assert model.n_features_in_ == 3
    np.testing.assert_array_equal(model.predict(X), before)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="NaN"):
        model.fit(wide, np.full(len(y), np.nan))  # fails in the checks, after n_features_in_
    assert model.n_features_in_ == 3
    np.testing.assert_array_equal(model.predict(X), before)
