"""Corruptions, restoration by iteration to attractors, PSNR, autoencoder training (P5)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from matplotlib.figure import Figure

from losslab.errors import FixedPointError
from losslab.fixedpoints.restore import (
    gaussian_noise,
    mask_block,
    mean_psnr,
    psnr,
    restoration_accuracy,
    restoration_figure,
    restore,
    salt_and_pepper,
)
from losslab.fixedpoints.training import (
    digits_unit,
    faces_unit,
    layer_tails,
    train_autoencoder,
)
from losslab.nets.square import SquareNet


def hebbian_net(patterns: torch.Tensor, beta: float = 8.0) -> SquareNet:
    """A one-layer sigmoid net whose attractors are the given binary patterns:
    ``f(x) = sigmoid(beta C (2x - 1))``, ``C = S^T S / N``, ``S = 2 P - 1`` (Hopfield)."""
    n = patterns.shape[1]
    s = 2 * patterns - 1
    C = s.T @ s / n
    net = SquareNet(n, 1)
    with torch.no_grad():
        net.layers[0].weight.copy_(2 * beta * C)
        net.layers[0].bias.copy_(-beta * C.sum(dim=1))
    return net


@pytest.fixture
def patterns() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(3, 64, generator=gen, dtype=torch.float64) < 0.5).double()


# ------------------------------------------------------------------ corruptions


def test_mask_block_hits_exactly_one_square_block():
    images = torch.full((20, 64), 0.5, dtype=torch.float64)
    out = mask_block(images, 3, seed=4)
    changed = (out != images).reshape(20, 8, 8)
    assert torch.all(changed.sum(dim=(1, 2)) == 9)
    for k in range(20):
        rows = changed[k].any(dim=1).nonzero().flatten()
        cols = changed[k].any(dim=0).nonzero().flatten()
        assert rows.numel() == 3
        assert cols.numel() == 3
        assert rows.max() - rows.min() == 2
        assert cols.max() - cols.min() == 2
    assert torch.all(out[out != images] == 0)
    assert torch.equal(out, mask_block(images, 3, seed=4))
    assert not torch.equal(out, mask_block(images, 3, seed=5))
    assert torch.equal(images, torch.full((20, 64), 0.5, dtype=torch.float64))  # a copy
    # non-square images need a shape; the whole image is a valid block
    rect = torch.full((2, 12), 0.5, dtype=torch.float64)
    out = mask_block(rect, 3, seed=0, shape=(3, 4), value=1.0)
    assert torch.all((out == 1.0).sum(dim=1) == 9)
    with pytest.raises(FixedPointError, match="shape"):
        mask_block(rect, 2)
    with pytest.raises(FixedPointError, match="size"):
        mask_block(images, 9)


def test_salt_and_pepper_hits_exactly_the_fraction():
    images = torch.full((30, 64), 0.5, dtype=torch.float64)
    for fraction in (0.0, 0.1, 0.25, 1.0):
        out = salt_and_pepper(images, fraction, seed=1)
        changed = out != images
        assert torch.all(changed.sum(dim=1) == round(fraction * 64))
        assert torch.all((out[changed] == 0) | (out[changed] == 1))
    out = salt_and_pepper(images, 0.5, seed=2)
    salt = (out == 1).sum().item() / (30 * 32)
    assert 0.4 < salt < 0.6
    with pytest.raises(FixedPointError, match="fraction"):
        salt_and_pepper(images, 1.5)


def test_gaussian_noise_is_clipped_and_has_the_requested_scale():
    images = torch.full((100, 64), 0.5, dtype=torch.float64)
    raw = gaussian_noise(images, 0.1, seed=3, clip=False)
    assert (raw - images).std().item() == pytest.approx(0.1, rel=0.05)
    clipped = gaussian_noise(images, 2.0, seed=3)
    assert clipped.min() >= 0
    assert clipped.max() <= 1
    assert torch.equal(gaussian_noise(images, 0.0, seed=0), images)
    with pytest.raises(FixedPointError, match="sigma"):
        gaussian_noise(images, -1.0)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda x: mask_block(x, 2),
        lambda x: salt_and_pepper(x, 0.1),
        lambda x: gaussian_noise(x, 0.1),
    ],
)
def test_corruptions_reject_nan_and_bad_shapes(corrupt):
    bad = torch.full((2, 64), 0.5, dtype=torch.float64)
    bad[0, 3] = math.nan
    with pytest.raises(FixedPointError, match="NaN"):
        corrupt(bad)
    with pytest.raises(FixedPointError, match="shape"):
        corrupt(torch.zeros(64, dtype=torch.float64))


# ------------------------------------------------------------------ restoration


def test_restore_recovers_stored_patterns(patterns):
    net = hebbian_net(patterns)
    with torch.no_grad():
        assert (net(patterns) - patterns).abs().max() < 0.01  # near-fixed points
    clean = patterns.repeat(10, 1)
    for corrupted in (
        salt_and_pepper(clean, 0.15, seed=1),
        mask_block(clean, 4, seed=1),
        gaussian_noise(clean, 0.3, seed=1),
    ):
        result = restore(net, corrupted)
        assert result.converged.all()
        assert result.reason == "all images converged"
        assert (result.images - clean).abs().max() < 0.01
        assert psnr(clean, result.images).mean() > psnr(clean, corrupted).mean() + 20
        with torch.no_grad():  # a fixed point to the tolerance
            assert (net(result.images) - result.images).abs().max() < 1e-7
    summary = result.to_dict()
    assert summary["converged_fraction"] == 1.0


def test_restore_counts_iterations_per_image():
    # x <- x/2 + 1/4 contracts to 1/2; from distance d the k-th step is d / 2^k
    f = lambda x: 0.5 * x + 0.25  # noqa: E731
    start = torch.tensor([[0.5 + 2.0**-3], [0.5 + 2.0**-10], [0.5]], dtype=torch.float64)
    tol = 2.0**-20
    result = restore(f, start, tol=tol)
    # step k from distance 2^-e is 2^-(e+k); it is <= 2^-20 first at k = 20 - e
    assert result.iterations.tolist() == [17, 10, 1]
    assert result.converged.all()
    short = restore(f, start, max_iter=5, tol=tol)
    assert short.converged.tolist() == [False, False, True]
    assert short.iterations.tolist() == [5, 5, 1]
    assert "2 of 3 images hit max_iter=5" in short.reason
    assert short.residual[0].item() == pytest.approx(2.0**-8)


def test_restore_rejects_bad_input():
    f = lambda x: x  # noqa: E731
    good = torch.full((2, 4), 0.5, dtype=torch.float64)
    nan = good.clone()
    nan[1, 2] = math.nan
    with pytest.raises(FixedPointError, match="NaN"):
        restore(f, nan)
    with pytest.raises(FixedPointError, match="max_iter"):
        restore(f, good, max_iter=0)
    with pytest.raises(FixedPointError, match="tol"):
        restore(f, good, tol=-1.0)
    with pytest.raises(FixedPointError, match="must map"):
        restore(lambda x: x[:, :2], good)
    with pytest.raises(FixedPointError, match="NaN"):
        restore(lambda x: x / 0.0 * 0.0, good)
    with pytest.raises(FixedPointError, match="shape"):
        restore(f, torch.zeros(4, dtype=torch.float64))


def test_psnr_matches_hand_computation():
    clean = torch.zeros(2, 4, dtype=torch.float64)
    other = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.2]], dtype=torch.float64)
    # MSE 0.01 -> 20 dB; MSE 0.04 / 4 = 0.01 -> 20 dB as well
    torch.testing.assert_close(psnr(clean, other), torch.tensor([20.0, 20.0], dtype=torch.float64))
    x = torch.tensor([0.0, 0.5, 1.0, 0.25], dtype=torch.float64)
    y = torch.tensor([0.5, 0.5, 0.0, 0.25], dtype=torch.float64)
    mse = (0.25 + 0.0 + 1.0 + 0.0) / 4
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / mse))
    assert psnr(x, x).item() == math.inf
    with pytest.raises(FixedPointError, match="same shape"):
        psnr(clean, other[:, :3])
    with pytest.raises(FixedPointError, match="NaN"):
        psnr(x, torch.full((4,), math.nan, dtype=torch.float64))
    with pytest.raises(FixedPointError, match="floating point"):
        psnr(torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8))


def test_restoration_accuracy_and_figure(patterns):
    X, y = digits_unit(400)
    scores = restoration_accuracy(
        X[:300], y[:300], y[300:], clean=X[300:], corrupted=salt_and_pepper(X[300:], 0.3)
    )
    assert set(scores) == {"clean", "corrupted"}
    assert scores["clean"] > 0.85
    assert scores["clean"] > scores["corrupted"]
    with pytest.raises(FixedPointError, match="test set"):
        restoration_accuracy(X[:300], y[:300], y[300:])
    net = hebbian_net(patterns)
    bad = salt_and_pepper(patterns, 0.2)
    figure = restoration_figure(patterns, bad, restore(net, bad).images, n_show=3)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 9


# ------------------------------------------------------------------ training and data


def test_data_helpers_are_unit_images():
    X, y = digits_unit(50)
    assert X.shape == (50, 64)
    assert y.shape == (50,)
    assert X.min() >= 0
    assert X.max() <= 1
    assert X.max() == 1.0
    faces, labels = faces_unit(5)
    assert faces.shape == (200, 25)
    assert labels.sum() == 100
    from losslab.data import load

    raw = load("lfw_faces").X.reshape(200, 25, 25)
    block = raw[:, :5, :5].mean(dim=(1, 2))  # exact 5x5 block average
    torch.testing.assert_close(faces[:, 0], block)
    assert faces_unit()[0].shape == (200, 64)
    with pytest.raises(FixedPointError, match="side"):
        faces_unit(30)


def test_training_reduces_loss_and_is_deterministic():
    X, _ = digits_unit(200)
    calls: list[tuple[int, float]] = []

    def run(callback=None):
        net = SquareNet(64, 1, seed=1)
        return train_autoencoder(
            net, X, epochs=3, lr=1e-2, batch_size=32, seed=5, callback=callback
        )

    first = run(lambda e, loss: calls.append((e, loss)))
    second = run()
    assert len(first.loss) == 4
    assert first.loss[-1] < 0.5 * first.loss[0]
    assert first.loss == second.loss
    assert [e for e, _ in calls] == [1, 2, 3]
    assert len(first.tails) == 4
    assert len(first.tails[0]) == 1
    assert first.to_dict()["final_loss"] == first.loss[-1]
    assert len(first.esd_alpha()) == 4


def test_layer_tails_see_cauchy_heavier_than_gaussian():
    gauss = layer_tails(SquareNet(64, 2, seed=0))
    cauchy = layer_tails(SquareNet(64, 2, init="cauchy", seed=0))
    assert len(gauss) == 2
    for g, c in zip(gauss, cauchy, strict=True):
        assert abs(g.kurtosis) < 1.0
        assert c.kurtosis > 10.0
        assert c.esd.alpha < g.esd.alpha
        assert c.max_abs_over_std > g.max_abs_over_std


def test_a_net_narrower_than_ten_trains_with_nan_tail_fits():
    # 3 eigenvalues of W^T W are too few for a power-law fit (min_tail = 10): NaN, not a crash
    tails = layer_tails(SquareNet(3, 2, seed=0))
    assert all(math.isnan(t.esd.alpha) and t.esd.n == 3 for t in tails)
    assert all(math.isnan(t.entries.alpha) and t.entries.n == 9 for t in tails)
    X = torch.rand(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = train_autoencoder(SquareNet(3, 2, seed=0), X, epochs=2, lr=1e-2, batch_size=5, seed=0)
    assert len(result.tails) == 3
    assert result.loss[-1] < result.loss[0]


def test_training_rejects_bad_input():
    net = SquareNet(4, 1)
    X = torch.full((5, 4), 0.5, dtype=torch.float64)
    kw = {"epochs": 1, "lr": 1e-2, "batch_size": 2, "seed": 0}
    with pytest.raises(FixedPointError, match=r"\[0, 1\]"):
        train_autoencoder(net, 3 * X, **kw)
    with pytest.raises(FixedPointError, match="NaN"):
        train_autoencoder(net, X / 0.0 * 0.0, **kw)
    with pytest.raises(FixedPointError, match="shape"):
        train_autoencoder(net, torch.full((5, 3), 0.5, dtype=torch.float64), **kw)
    with pytest.raises(FixedPointError, match="epochs"):
        train_autoencoder(net, X, **(kw | {"epochs": 0}))
    with pytest.raises(FixedPointError, match="lr"):
        train_autoencoder(net, X, **(kw | {"lr": -1.0}))


def test_trained_denoising_autoencoder_restores_its_stored_digits():
    X, y = digits_unit(30)
    stored = X[torch.stack([torch.nonzero(y == c)[0, 0] for c in range(5)])]
    net = SquareNet(64, 2, seed=0)
    result = train_autoencoder(
        net, stored, epochs=600, lr=1e-2, batch_size=5, seed=0, input_noise=0.3, record_tails=False
    )
    assert result.loss[-1] < 0.01 * result.loss[0]
    assert result.tails[-1] == []
    clean = stored.repeat(4, 1)
    corrupted = salt_and_pepper(clean, 0.15, seed=2)
    restored = restore(net, corrupted)
    assert restored.converged.all()
    assert psnr(clean, restored.images).mean() > psnr(clean, corrupted).mean() + 10
    # each damaged copy comes back to its own stored digit, not to another one
    nearest = torch.cdist(restored.images, stored).argmin(dim=1)
    assert nearest.tolist() == list(range(5)) * 4
    assert float((restored.images - clean).abs().max()) < 0.25


def test_mean_psnr_leaves_out_unchanged_images():
    clean = torch.zeros(3, 4, dtype=torch.float64)
    other = clean.clone()
    other[0] = 0.1  # MSE 1e-2: 20 dB
    other[1, 0] = 0.2  # MSE 1e-2: 20 dB
    assert mean_psnr(clean, other) == pytest.approx(20.0, rel=1e-12)  # row 2 is unchanged
    other[1] = 0.01  # MSE 1e-4: 40 dB
    assert mean_psnr(clean, other) == pytest.approx(30.0, rel=1e-12)
    assert mean_psnr(clean, clean) == math.inf


def test_float32_images_follow_a_float64_net():
    net = SquareNet(4, 1, seed=0)
    images = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))  # float32
    result = restore(net, images, max_iter=500)
    assert result.images.dtype == torch.float64
    assert bool(result.converged.all())
    torch.testing.assert_close(net(result.images), result.images, atol=1e-7, rtol=0)


def test_standard_corruptions_are_the_documented_ones():
    from losslab.fixedpoints.restore import standard_corruptions

    images = torch.full((2, 64), 0.5, dtype=torch.float64)
    damage = standard_corruptions(seed=3)
    assert set(damage) == {"mask", "salt_pepper", "noise"}
    assert int((damage["mask"](images) == 0).sum(dim=1)[0]) == 16  # one 4x4 block
    flipped = damage["salt_pepper"](images) != 0.5
    assert int(flipped.sum(dim=1)[0]) == round(0.2 * 64)
    noisy = damage["noise"](images)
    assert 0.1 < float((noisy - images).std()) < 0.3
    torch.testing.assert_close(
        damage["noise"](images), standard_corruptions(seed=3)["noise"](images)
    )


def test_a_diverging_training_puts_back_the_last_finite_weights():
    images = torch.rand(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net = SquareNet(8, 2, seed=0).double()
    first = train_autoencoder(net, images, epochs=2, lr=1e-2, batch_size=8, seed=0)
    trained = copy.deepcopy(net.state_dict())
    with pytest.raises(FixedPointError, match="back at the end of epoch 0"):
        train_autoencoder(net, images, epochs=3, lr=1e308, batch_size=8, seed=0)
    for name, value in net.state_dict().items():
        assert torch.equal(value, trained[name]), name
    again = train_autoencoder(net, images, epochs=1, lr=1e-2, batch_size=8, seed=1)
    assert again.loss[0] == pytest.approx(first.loss[-1], rel=1e-12)
