from __future__ import annotations

import pytest
import torch

from losslab.linalg import general_eigenvalues

DT = torch.float64


def _sorted(values: torch.Tensor) -> torch.Tensor:
    return torch.sort(values.abs(), dim=-1).values


def test_agrees_with_eigvals_on_random_matrices_and_follows_scaling():
    A = torch.randn(40, 7, 7, generator=torch.Generator().manual_seed(0), dtype=DT)
    reference = _sorted(torch.linalg.eigvals(A))
    torch.testing.assert_close(_sorted(general_eigenvalues(A)), reference, rtol=1e-10, atol=1e-12)
    # 1e-250 A: the eigenvalues scale with the matrix, far below the normal range's comfort
    tiny = _sorted(general_eigenvalues(1e-250 * A)) / 1e-250
    torch.testing.assert_close(tiny, reference, rtol=1e-10, atol=1e-12)


def test_subnormal_rows_of_a_saturated_jacobian():
    # The shape of a saturated sigmoid net's Jacobian in a corner of the box: a rank-one
    # u v^T with rows from 1e-218 down to subnormal 1e-315. Its eigenvalues are v.u
    # and zeros.
    u = torch.tensor([5e-275, -7e-218, -1.6e-315, 5.7e-228, 4e-229, -9.7e-228], dtype=DT)
    v = torch.tensor([1.0, -0.44, 0.062, 78.4, 2.5, 0.87], dtype=DT)
    J = torch.outer(u, v)
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
