from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from losslab.errors import FixedPointError
from losslab.nets import SquareNet, sample_entries, weight_factor


def test_forward_is_the_composition_of_layers_and_batches():
    net = SquareNet(3, 2, activation="tanh", init="cauchy", seed=4)
    x = torch.rand(5, 2, 3, dtype=torch.float64)
    expected = x
    for W, b in net.weights():
        expected = torch.tanh(expected @ W.T + b)
    torch.testing.assert_close(net(x), expected)
    assert net(x[0, 0]).shape == (3,)
    sigmoid = SquareNet(3, 4, seed=1)
    out = sigmoid(torch.randn(100, 3, dtype=torch.float64) * 10)
    assert bool(((out > 0) & (out < 1)).all())
    assert sigmoid.output_box == (0.0, 1.0)


def test_same_seed_same_weights_and_other_seed_differs():
    first, again = (
        SquareNet(4, 3, init="student_t", seed=7),
        SquareNet(4, 3, init="student_t", seed=7),
    )
    other = SquareNet(4, 3, init="student_t", seed=8)
    for (W1, b1), (W2, b2), (W3, _) in zip(
        first.weights(), again.weights(), other.weights(), strict=True
    ):
        assert torch.equal(W1, W2)
        assert torch.equal(b1, b2)
        assert not torch.equal(W1, W3)


@pytest.mark.parametrize(("init", "df", "law"), [
    ("gaussian", 3.0, stats.norm()),
    ("cauchy", 3.0, stats.cauchy()),
    ("student_t", 1.5, stats.t(1.5)),
    ("student_t", 5.0, stats.t(5.0, scale=math.sqrt(3 / 5))),
])  # fmt: skip
def test_entries_follow_their_law(init, df, law):
    draws = sample_entries((20_000,), init, torch.Generator().manual_seed(0), df=df)
    result = stats.kstest(draws.numpy(), law.cdf)
    assert result.pvalue > 1e-3, result


def test_scalings_keep_preactivations_of_order_one():
    assert weight_factor(100, "gaussian") == pytest.approx(0.1)
    assert weight_factor(100, "cauchy") == pytest.approx(0.01)
    assert weight_factor(100, "student_t", df=1.5) == pytest.approx(100 ** (-1 / 1.5))
    net = SquareNet(400, 1, init="cauchy", weight_scale=2.0, bias_scale=0.0, seed=0)
    W, b = net.weights()[0]
    # A row sum of N Cauchy(0, 2/N) entries is Cauchy(0, 2): its median |.| is 2.
    assert float(W.sum(dim=1).abs().median()) == pytest.approx(2.0, rel=0.25)
    assert bool((b == 0).all())


@pytest.mark.parametrize("kwargs", [
    {"N": 0, "L": 1}, {"N": 2, "L": 0}, {"N": 2, "L": 1, "activation": "relu"},
    {"N": 2, "L": 1, "init": "uniform"}, {"N": 2, "L": 1, "weight_scale": float("nan")},
    {"N": 2, "L": 1, "df": 0.0},
])  # fmt: skip
def test_bad_parameters(kwargs):
    with pytest.raises(FixedPointError):
        SquareNet(**kwargs)


def test_wrong_input_width():
    with pytest.raises(FixedPointError, match=r"\(\.\.\., 3\)"):
        SquareNet(3, 1)(torch.zeros(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_activation_slopes_match_autograd_and_stay_accurate_when_saturated(activation):
    from losslab.nets.square import ACTIVATION_SLOPES, ACTIVATIONS

    slope = ACTIVATION_SLOPES[activation]
    z = torch.linspace(-8, 8, 41, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ACTIVATIONS[activation](z).sum(), z)
    torch.testing.assert_close(slope(z.detach()), grad, rtol=1e-14, atol=1e-15)
    # saturated: sigmoid'(40) = e^-40 / (1 + e^-40)^2, tanh'(20) = 4 / (e^20 + e^-20)^2,
    # where h (1 - h) and 1 - h^2 round to 0
    far = torch.tensor([40.0, -40.0] if activation == "sigmoid" else [20.0, -20.0])
    exact = (
        [math.exp(-40) / (1 + math.exp(-40)) ** 2] * 2
        if activation == "sigmoid"
        else [4 / (math.exp(20) + math.exp(-20)) ** 2] * 2
    )
    torch.testing.assert_close(
        slope(far.double()), torch.tensor(exact, dtype=torch.float64), rtol=1e-14, atol=0.0
    )
