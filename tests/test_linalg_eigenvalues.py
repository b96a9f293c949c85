from __future__ import annotations

import pytest
import torch

from losslab.linalg import general_eigenvalues

DT = torch.float64


def _assert_same_spectrum(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    """Each eigenvalue of ``a`` is within ``atol`` of one of ``b`` and vice versa (per matrix;
    complex values compared, not only moduli)."""
    distance = (a.unsqueeze(-1) - b.unsqueeze(-2)).abs()
    assert float(distance.amin(-1).max()) <= atol
    assert float(distance.amin(-2).max()) <= atol


def test_agrees_with_eigvals_on_random_matrices_and_follows_scaling():
    A = torch.randn(40, 7, 7, generator=torch.Generator().manual_seed(0), dtype=DT)
    reference = torch.linalg.eigvals(A)
    assert bool((reference.imag.abs() > 0.1).any())  # complex pairs are compared too
    _assert_same_spectrum(general_eigenvalues(A), reference, atol=1e-12)
    # 1e-250 A: the eigenvalues scale with the matrix, far below the normal range's comfort
    _assert_same_spectrum(general_eigenvalues(1e-250 * A) / 1e-250, reference, atol=1e-12)


def test_batch_shapes_dtypes_and_the_zero_matrix():
    generator = torch.Generator().manual_seed(1)
    A = torch.randn(2, 3, 5, 5, generator=generator, dtype=DT)
    values = general_eigenvalues(A)
    assert values.shape == (2, 3, 5)
    assert values.dtype == torch.complex128
    _assert_same_spectrum(values, torch.linalg.eigvals(A), atol=1e-12)
    single = general_eigenvalues(A.float())
    assert single.dtype == torch.complex64
    _assert_same_spectrum(single.to(torch.complex128), torch.linalg.eigvals(A), atol=1e-4)
    C = torch.complex(A[0, 0], A[0, 1])
    _assert_same_spectrum(general_eigenvalues(C), torch.linalg.eigvals(C), atol=1e-12)
    assert bool((general_eigenvalues(torch.zeros(3, 4, 4, dtype=DT)) == 0).all())


def test_badly_scaled_matrix_keeps_lapack_balancing():
    # [[1e5, 1e9], [1e-7, 1]]: trace t = 1e5 + 1, determinant d = 1e5 - 1e2; the roots
    # (t + sqrt(t^2 - 4 d)) / 2 and d / (that), both accurate in float64.
    t, d = 1e5 + 1, 1e5 - 1e2
    big = (t + (t * t - 4 * d) ** 0.5) / 2
    exact = torch.tensor([big, d / big], dtype=torch.complex128)
    values = general_eigenvalues(torch.tensor([[1e5, 1e9], [1e-7, 1.0]], dtype=DT))
    _assert_same_spectrum(values / exact.abs(), exact / exact.abs(), atol=1e-12)


def test_subnormal_rows_of_a_saturated_jacobian():
    # The shape of a saturated sigmoid net's Jacobian in a corner of the box: a rank-one
    # u v^T with rows from 1e-218 down to subnormal 1e-315, on which eigvals itself fails.
    # Its eigenvalues are v.u and zeros.
    u = torch.tensor([5e-275, -7e-218, -1.6e-315, 5.7e-228, 4e-229, -9.7e-228], dtype=DT)
    v = torch.tensor([1.0, -0.44, 0.062, 78.4, 2.5, 0.87], dtype=DT)
    J = torch.outer(u, v)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.eigvals(J)
    values = general_eigenvalues(J[None])[0]
    largest = values.abs().max()
    torch.testing.assert_close(largest, (v @ u).abs(), rtol=1e-12, atol=0.0)
    assert int((values.abs() > 1e-3 * largest).sum()) == 1


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        general_eigenvalues(torch.ones(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="NaN"):
        general_eigenvalues(torch.full((2, 2), float("nan"), dtype=DT))
    assert general_eigenvalues(torch.empty(0, 3, 3, dtype=DT)).shape == (0, 3)
