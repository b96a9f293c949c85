from __future__ import annotations

import pytest
import torch

from losslab.linalg import general_eigenvalues, spectral_norms

DT = torch.float64


def _assert_same_spectrum(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    """Each eigenvalue of ``a`` is within ``atol`` of one of ``b`` and vice versa (per matrix;
    complex values compared, not only moduli)."""
    distance = (a.unsqueeze(-1) - b.unsqueeze(-2)).abs()
    assert float(distance.amin(-1).max()) <= atol
    assert float(distance.amin(-2).max()) <= atol


def _known_spectra(batch: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices ``Q B Q^T`` (random orthogonal ``Q``) with ``B`` block diagonal: two
    rotation-scalings ``[[a, -b], [b, a]]`` (eigenvalues ``a +- i b``) and two reals."""
    generator = torch.Generator().manual_seed(seed)
    re, im, real = (torch.randn(*batch, 2, generator=generator, dtype=DT) for _ in range(3))
    B = torch.zeros(*batch, 6, 6, dtype=DT)
    for k in range(2):
        B[..., 2 * k, 2 * k] = B[..., 2 * k + 1, 2 * k + 1] = re[..., k]
        B[..., 2 * k, 2 * k + 1], B[..., 2 * k + 1, 2 * k] = -im[..., k], im[..., k]
        B[..., 4 + k, 4 + k] = real[..., k]
    Q = torch.linalg.qr(torch.randn(*batch, 6, 6, generator=generator, dtype=DT)).Q
    values = torch.cat([torch.complex(re, im), torch.complex(re, -im), real + 0j], -1)
    return Q @ B @ Q.mT, values


@pytest.fixture
def eigvals_fails_once(monkeypatch):
    """``torch.linalg.eigvals`` raises on its first call: the fallback path runs."""
    eigvals = torch.linalg.eigvals
    calls = []

    def failing_once(matrices: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("forced")
        return eigvals(matrices)

    monkeypatch.setattr(torch.linalg, "eigvals", failing_once)
    return calls


def test_known_spectra_batches_and_scales():
    A, exact = _known_spectra((2, 3), seed=0)
    values = general_eigenvalues(A)
    assert values.shape == (2, 3, 6)
    assert values.dtype == torch.complex128
    _assert_same_spectrum(values, exact, atol=1e-12)
    # 1e-250 A: the eigenvalues scale with the matrix
    _assert_same_spectrum(general_eigenvalues(1e-250 * A) / 1e-250, exact, atol=1e-12)


def test_fallback_path_batches_dtypes_complex_zero_and_overflow(eigvals_fails_once):
    A, exact = _known_spectra((2, 3), seed=1)
    _assert_same_spectrum(general_eigenvalues(1e-200 * A) / 1e-200, exact, atol=1e-12)
    assert len(eigvals_fails_once) == 2  # the forced failure, then the scaled matrices
    eigvals_fails_once.clear()
    single = general_eigenvalues(A.float())
    assert single.dtype == torch.complex64
    _assert_same_spectrum(single.to(torch.complex128), exact, atol=1e-5)
    eigvals_fails_once.clear()
    C = torch.diag(torch.tensor([1 + 2j, -3j, 0.5], dtype=torch.complex128))
    C[0, 2] = 7.0  # upper triangular: the eigenvalues are the diagonal
    _assert_same_spectrum(general_eigenvalues(C), C.diagonal(), atol=1e-14)
    eigvals_fails_once.clear()
    assert bool((general_eigenvalues(torch.zeros(3, 4, 4, dtype=DT)) == 0).all())
    eigvals_fails_once.clear()
    # largest entry near the top of the range: the scale 2^(e - 1) stays finite
    T = torch.tensor([[1.7e308, 1.0], [0.0, 2.0]], dtype=DT)
    values = general_eigenvalues(T)
    assert bool((values.imag == 0).all())
    torch.testing.assert_close(
        values.real.sort().values, T.diagonal().sort().values, rtol=1e-14, atol=0
    )


def test_badly_scaled_matrix_keeps_lapack_balancing():
    # [[1e5, 1e9], [1e-7, 1]]: trace t = 1e5 + 1, determinant d = 1e5 - 1e2; the roots
    # (t + sqrt(t^2 - 4 d)) / 2 and d / (that), both accurate in float64.
    t, d = 1e5 + 1, 1e5 - 1e2
    big = (t + (t * t - 4 * d) ** 0.5) / 2
    exact = torch.tensor([big, d / big], dtype=torch.complex128)
    values = general_eigenvalues(torch.tensor([[1e5, 1e9], [1e-7, 1.0]], dtype=DT))
    _assert_same_spectrum(values / exact.abs(), exact / exact.abs(), atol=1e-12)


@pytest.mark.parametrize(
    "u",
    [
        # rows from 1e-218 down to subnormal 1e-315
        [5e-275, -7e-218, -1.6e-315, 5.7e-228, 4e-229, -9.7e-228],
        # rows from 1e-161 to 1e-276, no subnormals (eigvals fails on it with MKL)
        [2.3e-161, -4.1e-200, 8.8e-276, -1.2e-233, 6.5e-190, 3.3e-251, -7.7e-170, 1.9e-262],
    ],
)
def test_rank_one_saturated_jacobians(u):
    # The shape of a saturated sigmoid net's Jacobian in a corner of the box: u v^T, whose
    # eigenvalues are v.u and zeros.
    u = torch.tensor(u, dtype=DT)
    v = torch.linspace(-1.3, 2.1, u.numel(), dtype=DT)
    values = general_eigenvalues(torch.outer(u, v)[None])[0]
    largest = values.abs().max()
    torch.testing.assert_close(largest, (v @ u).abs(), rtol=1e-12, atol=0.0)
    assert int((values.abs() > 1e-3 * largest).sum()) == 1


def test_seed_806_sweep_matrix():
    # Of 2000 random saturated Jacobians, eigvals failed on 754; the first version of the
    # fallback (divide by 2^e, the largest entry in [0.5, 1)) still failed on this one.
    generator = torch.Generator().manual_seed(806)
    n = int(torch.randint(2, 9, (1,), generator=generator))
    exponents = torch.randint(-320, -150, (n,), generator=generator).double()
    D = torch.randn(n, generator=generator, dtype=DT) * 10**exponents
    W = torch.randn(n, n, generator=generator, dtype=DT)
    values = general_eigenvalues(torch.outer(D, W[0]))
    torch.testing.assert_close(values.abs().max(), (W[0] @ D).abs(), rtol=1e-12, atol=0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        general_eigenvalues(torch.ones(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="NaN"):
        general_eigenvalues(torch.full((2, 2), float("nan"), dtype=DT))
    assert general_eigenvalues(torch.empty(0, 3, 3, dtype=DT)).shape == (0, 3)


@pytest.mark.parametrize("shape", [(40, 6, 6), (40, 7, 3), (40, 3, 7), (2, 5, 1, 4)])
def test_spectral_norms_match_the_svd_over_all_scales(shape):
    generator = torch.Generator().manual_seed(3)
    scales = torch.logspace(-300, 300, shape[0], dtype=torch.float64)
    C = torch.randn(shape, generator=generator, dtype=torch.float64)
    C = C * scales.reshape(-1, *([1] * (len(shape) - 1)))
    reference = torch.linalg.svdvals(C)[..., 0]  # the SVD itself, not the Gram matrix
    norms = spectral_norms(C)
    assert norms.shape == shape[:-2]
    torch.testing.assert_close(norms, reference, rtol=1e-13, atol=0)
    # subnormal entries, an exactly known norm: sigma_max of diag(3, 4) eta is 4 eta
    tiny = torch.diag(torch.tensor([3.0, 4.0], dtype=torch.float64)) * 2.0**-1074
    assert float(spectral_norms(tiny)) == 4 * 2.0**-1074


def test_spectral_norms_of_zero_overflowing_and_non_finite_matrices():
    assert spectral_norms(torch.zeros(3, 4, 4, dtype=torch.float64)).eq(0).all()
    huge = torch.tensor([[1.5e308, 1.5e308], [0.0, 0.0]], dtype=torch.float64)
    assert float(spectral_norms(huge)) == float("inf")  # sqrt(2) 1.5e308 overflows
    near = torch.tensor([[1e308, 0.0], [0.0, 0.5e308]], dtype=torch.float64)
    assert float(spectral_norms(near)) == pytest.approx(1e308, rel=1e-15)
    mixed = torch.stack([torch.eye(2, dtype=torch.float64), torch.full((2, 2), float("nan"))])
    norms = spectral_norms(mixed)
    assert float(norms[0]) == pytest.approx(1.0, rel=1e-15)
    assert torch.isnan(norms[1])
    assert spectral_norms(torch.ones(2, 3)).dtype == torch.float32
    with pytest.raises(ValueError, match="expected matrices"):
        spectral_norms(torch.ones(3))
