"""Loss-landscape slices (Li et al. 2018) and linear interpolation (Goodfellow et al. 2015),
checked against closed forms and against explicit loops over cloned models."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from losslab.critical.slices import (
    Slice1D,
    Slice2D,
    filter_normalized_direction,
    interpolate,
    plot_slice_1d,
    plot_slice_2d,
    slice_1d,
    slice_2d,
)
from losslab.errors import CurvatureError
from losslab.linalg.model_loss import parameter_layout

MSE = nn.MSELoss()


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _data(n: int = 20, seed: int = 1, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=dtype)
    y = torch.randn(n, 3, generator=gen, dtype=dtype)
    return x, y


def _reference_loss(model: nn.Module, theta: torch.Tensor, x, y) -> float:
    """Copy ``theta`` into a clone of the model and evaluate the loss the plain way."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        vector_to_parameters(theta.clone(), clone.parameters())
        return float(MSE(clone(x), y))


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each slice along dim 0, one slice at a time."""
    return torch.stack([torch.sqrt((weight[i] ** 2).sum()) for i in range(weight.shape[0])])


def _pieces(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    return parameter_layout(model).unflatten(flat)


# ------------------------------------------------------------------------- directions


def test_filter_normalised_rows_of_linear_layers():
    model = _mlp()
    d = filter_normalized_direction(model, seed=3)
    assert d.shape == (sum(p.numel() for p in model.parameters()),)
    assert d.dtype == torch.float64
    pieces = _pieces(model, d)
    for name, p in model.named_parameters():
        if p.ndim == 2:
            torch.testing.assert_close(_row_norms(pieces[name]), _row_norms(p.detach()))
        else:
            assert bool((pieces[name] == 0).all()), name


def test_filter_normalised_output_channels_of_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 2))
    d = filter_normalized_direction(model, seed=0)
    pieces = _pieces(model, d)
    conv_w = model[0].weight.detach()
    assert pieces["0.weight"].shape == (5, 2, 3, 3)
    torch.testing.assert_close(_row_norms(pieces["0.weight"]), _row_norms(conv_w))
    torch.testing.assert_close(_row_norms(pieces["3.weight"]), _row_norms(model[3].weight.detach()))
    assert bool((pieces["0.bias"] == 0).all())
    # a random direction, not the weights themselves
    assert not torch.allclose(pieces["0.weight"], conv_w)


def test_include_bias_scales_biases_to_their_norm():
    model = _mlp()
    plain = filter_normalized_direction(model, seed=1)
    with_bias = filter_normalized_direction(model, seed=1, include_bias=True)
    a, b = _pieces(model, plain), _pieces(model, with_bias)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert bool((b[name] != 0).all())
            assert math.isclose(
                float(b[name].norm()), float(p.detach().norm()), rel_tol=1e-12, abs_tol=0
            )
        else:  # the weight part does not depend on the flags
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_norm_layer_parameters_follow_include_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 6), nn.LayerNorm(6))
    with torch.no_grad():
        for m in (model[1], model[3]):
            m.weight.uniform_(0.5, 2.0)
            m.bias.uniform_(-1.0, 1.0)
    norm_names = ["1.weight", "1.bias", "3.weight", "3.bias"]
    default = _pieces(model, filter_normalized_direction(model, seed=0, include_bias=True))
    for name in norm_names:
        assert bool((default[name] == 0).all()), name
    assert bool((default["0.bias"] != 0).all())  # a plain bias is governed by include_bias
    with_norm = _pieces(model, filter_normalized_direction(model, seed=0, include_norm=True))
    params = dict(model.named_parameters())
    for name in norm_names:
        expected = float(params[name].detach().norm())
        assert math.isclose(float(with_norm[name].norm()), expected, rel_tol=1e-6), name
    assert bool((with_norm["0.bias"] == 0).all())


def test_direction_is_deterministic_per_seed_and_differs_across_seeds():
    model = _mlp()
    a1 = filter_normalized_direction(model, seed=5)
    a2 = filter_normalized_direction(model, seed=5)
    b = filter_normalized_direction(model, seed=6)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert not torch.allclose(a1, b)


def test_direction_follows_dtype_and_zero_filters_stay_zero():
    model = _mlp(dtype=torch.float32)
    with torch.no_grad():
        model[0].weight[2].zero_()
    d = filter_normalized_direction(model, seed=0)
    assert d.dtype == torch.float32
    pieces = _pieces(model, d)
    assert bool((pieces["0.weight"][2] == 0).all())
    torch.testing.assert_close(_row_norms(pieces["0.weight"]), _row_norms(model[0].weight.detach()))
    # float32 and float64 copies get the same direction up to rounding
    d64 = filter_normalized_direction(copy.deepcopy(model).double(), seed=0)
    torch.testing.assert_close(d.double(), d64, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- 1-D slices


def test_slice_1d_of_linear_least_squares_is_the_hand_computed_quadratic():
    """Linear model f(x) = W x + b with MSE: L(theta0 + a d) = c0 + 2 a c01 + a^2 c1 where
    r0 = X W^T + b - Y, r1 = X D_W^T + D_b and c.. are means of r0*r0, r0*r1, r1*r1."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = _data()
    gen = torch.Generator().manual_seed(9)
    d = torch.randn(4 * 3 + 3, generator=gen, dtype=torch.float64)
    result = slice_1d(model, MSE, (x, y), direction=d, span=(-2.0, 3.0), n_points=11)

    X, Y = x.numpy(), y.numpy()
    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    DW, Db = d[:12].numpy().reshape(3, 4), d[12:].numpy()
    r0 = X @ W.T + b - Y
    r1 = X @ DW.T + Db
    c0, c01, c1 = (r0 * r0).mean(), (r0 * r1).mean(), (r1 * r1).mean()
    alphas = np.linspace(-2.0, 3.0, 11)
    expected = c0 + 2 * alphas * c01 + alphas**2 * c1

    np.testing.assert_allclose(result.alphas.numpy(), alphas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.losses.numpy(), expected, rtol=1e-10)
    assert math.isclose(result.center_loss, c0, rel_tol=1e-12)
    torch.testing.assert_close(result.direction, d)


def test_slice_1d_matches_an_explicit_loop_over_cloned_models():
    model = _mlp()
    x, y = _data(n=20)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]  # sample-weighted mean over batches
    result = slice_1d(model, MSE, batches, n_points=9, span=(-1.5, 1.0), seed=2)
    theta0 = parameters_to_vector(model.parameters()).detach()
    d = filter_normalized_direction(model, seed=2)
    torch.testing.assert_close(result.direction, d, rtol=0, atol=0)
    expected = [_reference_loss(model, theta0 + a * d, x, y) for a in result.alphas.tolist()]
    np.testing.assert_allclose(result.losses.numpy(), expected, rtol=1e-10)
    # one point at a time (no vmap) gives the same numbers
    looped = slice_1d(model, MSE, batches, n_points=9, span=(-1.5, 1.0), seed=2, chunk_size=1)
    torch.testing.assert_close(looped.losses, result.losses, rtol=1e-12, atol=0)


def test_centre_is_the_models_loss_and_the_model_is_unchanged():
    model = _mlp(dtype=torch.float32)
    x, y = _data(dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = slice_1d(model, MSE, (x, y), n_points=21)
    with torch.no_grad():
        own = float(MSE(model(x), y))
    assert math.isclose(result.center_loss, own, rel_tol=1e-6)
    assert result.alphas[10] == 0
    assert math.isclose(float(result.losses[10]), own, rel_tol=1e-5)
    assert result.losses.dtype == torch.float32
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_batch_norm_buffers_are_restored_in_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slice_1d(model, MSE, (x, y), n_points=5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


class _ItemModel(nn.Module):
    """A model that calls ``.item()`` (data-dependent Python), which vmap cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out * 2.0 if out.sum().item() > -1e9 else out


def test_models_vmap_cannot_trace_fall_back_to_a_loop():
    torch.manual_seed(0)
    model = _ItemModel()
    x, y = _data()
    result = slice_1d(model, MSE, (x, y), n_points=6, include_bias=True)
    theta0 = parameters_to_vector(model.parameters()).detach()
    expected = [
        _reference_loss(model, theta0 + a * result.direction, x, y) for a in result.alphas.tolist()
    ]
    np.testing.assert_allclose(result.losses.numpy(), expected, rtol=1e-12)


def test_non_finite_losses_off_centre_are_kept():
    model = nn.Linear(4, 3).double()
    x, y = _data()
    with torch.no_grad():
        level = float(MSE(model(x), y))

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log(level + 0.5 - ((outputs - targets) ** 2).mean())

    result = slice_1d(model, loss_fn, (x, y), span=(-5.0, 5.0), n_points=11, include_bias=True)
    assert math.isfinite(result.center_loss)
    assert bool(torch.isnan(result.losses[0]))
    assert bool(torch.isnan(result.losses[-1]))
    assert bool(torch.isfinite(result.losses[5]))
    record = result.to_dict()
    assert math.isnan(record["losses"][0])


# ------------------------------------------------------------------------- 2-D slices


def test_slice_2d_matches_an_explicit_loop_and_has_shape_m_by_n():
    model = _mlp()
    x, y = _data()
    result = slice_2d(model, MSE, (x, y), n_points=(5, 3), span=((-1.0, 2.0), (-0.5, 0.5)), seed=4)
    assert result.alphas.shape == (5,)
    assert result.betas.shape == (3,)
    assert result.losses.shape == (3, 5)
    d1 = filter_normalized_direction(model, seed=4)
    d2 = filter_normalized_direction(model, seed=5)
    torch.testing.assert_close(result.directions[0], d1, rtol=0, atol=0)
    torch.testing.assert_close(result.directions[1], d2, rtol=0, atol=0)
    np.testing.assert_allclose(result.alphas.numpy(), np.linspace(-1.0, 2.0, 5), atol=1e-12)
    np.testing.assert_allclose(result.betas.numpy(), np.linspace(-0.5, 0.5, 3), atol=1e-12)
    theta0 = parameters_to_vector(model.parameters()).detach()
    for j, i in [(0, 0), (0, 4), (2, 1), (1, 3), (2, 4)]:
        a, b = float(result.alphas[i]), float(result.betas[j])
        expected = _reference_loss(model, theta0 + a * d1 + b * d2, x, y)
        assert math.isclose(float(result.losses[j, i]), expected, rel_tol=1e-10), (j, i)
    with torch.no_grad():
        assert math.isclose(result.center_loss, float(MSE(model(x), y)), rel_tol=1e-12)


def test_slice_2d_with_given_directions_on_a_quadratic():
    """Linear least squares on the plane: L = mean((r0 + a r1 + b r2)^2)."""
    torch.manual_seed(3)
    model = nn.Linear(4, 3).double()
    x, y = _data()
    gen = torch.Generator().manual_seed(0)
    d1 = torch.randn(15, generator=gen, dtype=torch.float64)
    d2 = torch.randn(15, generator=gen, dtype=torch.float64)
    result = slice_2d(model, MSE, (x, y), directions=(d1, d2), n_points=4, chunk_size=5)
    X, Y = x.numpy(), y.numpy()
    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    r0 = X @ W.T + b - Y
    r1 = X @ d1[:12].numpy().reshape(3, 4).T + d1[12:].numpy()
    r2 = X @ d2[:12].numpy().reshape(3, 4).T + d2[12:].numpy()
    grid = np.linspace(-1.0, 1.0, 4)
    expected = np.array([[((r0 + a * r1 + bb * r2) ** 2).mean() for a in grid] for bb in grid])
    np.testing.assert_allclose(result.losses.numpy(), expected, rtol=1e-10)
    record = result.to_dict()
    json.dumps(record)
    assert len(record["losses"]) == 4
    assert len(record["losses"][0]) == 4


# ------------------------------------------------------------------------- interpolation


def test_interpolate_endpoints_and_midpoint():
    model_a, model_b = _mlp(seed=0), _mlp(seed=1)
    x, y = _data()
    result = interpolate(model_a, model_b, MSE, (x, y), n_points=9, span=(-0.5, 1.5))
    assert result.kind == "interpolation"
    ts = result.alphas.tolist()
    assert ts[2] == 0.0
    assert ts[6] == 1.0
    assert ts[4] == 0.5
    with torch.no_grad():
        loss_a, loss_b = float(MSE(model_a(x), y)), float(MSE(model_b(x), y))
    assert math.isclose(float(result.losses[2]), loss_a, rel_tol=1e-12)
    assert math.isclose(float(result.losses[6]), loss_b, rel_tol=1e-12)
    assert math.isclose(result.center_loss, loss_a, rel_tol=1e-12)
    theta_a = parameters_to_vector(model_a.parameters()).detach()
    theta_b = parameters_to_vector(model_b.parameters()).detach()
    mid = _reference_loss(model_a, 0.5 * theta_a + 0.5 * theta_b, x, y)
    assert math.isclose(float(result.losses[4]), mid, rel_tol=1e-10)
    torch.testing.assert_close(result.direction, theta_b - theta_a)


def test_interpolate_rejects_mismatched_or_identical_models():
    x, y = _data()
    wide = nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3)).double()
    with pytest.raises(CurvatureError, match=r"0\.weight"):
        interpolate(_mlp(), wide, MSE, (x, y))
    other = nn.Sequential(nn.Linear(4, 3)).double()
    with pytest.raises(CurvatureError, match="only in model_a"):
        interpolate(_mlp(), other, MSE, (x, y))
    with pytest.raises(CurvatureError, match="identical"):
        interpolate(_mlp(), _mlp(), MSE, (x, y))
    frozen_a, frozen_b = _mlp(seed=1), _mlp(seed=2)
    for model in (frozen_a, frozen_b):
        model[0].requires_grad_(False)
    with pytest.raises(CurvatureError, match=r"frozen parameters \['0.weight', '0.bias'\]"):
        interpolate(frozen_a, frozen_b, MSE, (x, y))
    shared = _mlp(seed=2)
    shared[0].load_state_dict(frozen_a[0].state_dict())
    shared[0].requires_grad_(False)
    ends = interpolate(frozen_a, shared, MSE, (x, y), n_points=2, span=(0.0, 1.0))
    assert math.isclose(float(ends.losses[1]), float(MSE(shared(x), y).detach()), rel_tol=1e-12)


# ------------------------------------------------------------------------- bad input


def test_bad_input_raises_curvature_error():
    model = _mlp()
    x, y = _data()
    dim = sum(p.numel() for p in model.parameters())
    with pytest.raises(CurvatureError, match="n_points"):
        slice_1d(model, MSE, (x, y), n_points=1)
    with pytest.raises(CurvatureError, match="low < high"):
        slice_1d(model, MSE, (x, y), span=(1.0, -1.0))
    with pytest.raises(CurvatureError, match="low < high"):
        slice_1d(model, MSE, (x, y), span=(0.0, 0.0))
    with pytest.raises(CurvatureError, match="all zero"):
        slice_1d(model, MSE, (x, y), direction=torch.zeros(dim, dtype=torch.float64))
    with pytest.raises(CurvatureError, match="shape"):
        slice_1d(model, MSE, (x, y), direction=torch.ones(dim + 1, dtype=torch.float64))
    bad = torch.ones(dim, dtype=torch.float64)
    bad[0] = float("nan")
    with pytest.raises(CurvatureError, match="NaN"):
        slice_1d(model, MSE, (x, y), direction=bad)
    with pytest.raises(CurvatureError, match="n_points"):
        slice_2d(model, MSE, (x, y), n_points=(5, 1))
    d = torch.ones(dim, dtype=torch.float64)
    with pytest.raises(CurvatureError, match="parallel"):
        slice_2d(model, MSE, (x, y), directions=(d, -2 * d))
    with pytest.raises(CurvatureError, match="n_points"):
        interpolate(model, _mlp(seed=1), MSE, (x, y), n_points=1)
    with torch.no_grad():
        zero_model = copy.deepcopy(model)
        for p in zero_model.parameters():
            p.zero_()
    with pytest.raises(CurvatureError, match="all zero"):
        slice_1d(zero_model, MSE, (x, y))


def test_non_finite_loss_at_the_centre_raises():
    model = _mlp()
    x, y = _data()

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log(-((outputs - targets) ** 2).mean())

    with pytest.raises(CurvatureError, match="not finite"):
        slice_1d(model, loss_fn, (x, y), n_points=3)


# ------------------------------------------------------------------------- figures


def test_plot_helpers_return_figures():
    model = _mlp()
    x, y = _data()
    s1 = slice_1d(model, MSE, (x, y), n_points=7)
    s1b = slice_1d(model, MSE, (x, y), n_points=7, seed=1)
    figure = plot_slice_1d(s1)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 1
    figure = plot_slice_1d([s1, s1b], label=["seed 0", "seed 1"])
    assert len(figure.axes) == 1
    assert len(figure.axes[0].get_legend().get_texts()) == 2
    host = Figure()
    ax = host.add_subplot(1, 2, 2)
    assert plot_slice_1d(s1, ax=ax, label="mine") is host
    s2 = slice_2d(model, MSE, (x, y), n_points=(6, 5))
    contour = plot_slice_2d(s2, kind="contour", levels=10)
    assert isinstance(contour, Figure)
    assert len(contour.axes) == 1
    surface = plot_slice_2d(s2, kind="surface", log=True)
    assert isinstance(surface, Figure)
    assert len(surface.axes) == 1
    assert surface.axes[0].name == "3d"
    contour.canvas.draw()  # renders with the Agg canvas
    surface.canvas.draw()
    with pytest.raises(CurvatureError, match="kind"):
        plot_slice_2d(s2, kind="heatmap")  # type: ignore[arg-type]


def test_results_to_dict_hold_no_tensors():
    model = _mlp()
    x, y = _data()
    s1 = slice_1d(model, MSE, (x, y), n_points=4)
    s2 = slice_2d(model, MSE, (x, y), n_points=3)
    assert isinstance(s1, Slice1D)
    assert isinstance(s2, Slice2D)
    for record in (s1.to_dict(), s2.to_dict()):
        text = json.dumps(record)
        assert "tensor" not in text
    assert s1.to_dict()["n_points"] == 4
    assert abs(s2.to_dict()["direction_cosine"]) < 1


def test_interpolate_refuses_other_activations_and_other_buffers():
    x, y = _data()
    tanh, relu = _mlp(seed=0), _mlp(seed=1)
    relu[1] = nn.ReLU()
    with pytest.raises(CurvatureError, match="different architectures"):
        interpolate(tanh, relu, MSE, (x, y))

    # batch norm with other running statistics: t = 1 would not be model_b's loss
    def normed(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
        model.double().train()
        with torch.no_grad():
            model(x + seed)  # running statistics of other data
        return model.eval()

    model_a, model_b = normed(0), normed(1)
    with pytest.raises(CurvatureError, match=r"buffers \['1.running_mean', '1.running_var'\]"):
        interpolate(model_a, model_b, MSE, (x, y))
    ends = interpolate(
        model_a, model_b, MSE, (x, y), n_points=2, span=(0.0, 1.0), buffers="model_a"
    )
    with torch.no_grad():
        loss_b, loss_b_with_a_statistics = float(MSE(model_b(x), y)), None
        model_b.load_state_dict({**model_b.state_dict(), **{
            k: v for k, v in model_a.state_dict().items() if "running" in k}})  # fmt: skip
        loss_b_with_a_statistics = float(MSE(model_b(x), y))
    assert not math.isclose(float(ends.losses[1]), loss_b, rel_tol=1e-6)
    assert math.isclose(float(ends.losses[1]), loss_b_with_a_statistics, rel_tol=1e-12)
