"""Thick-restart Lanczos and power iteration (losslab.linalg.lanczos / power_iteration)
against dense ``torch.linalg.eigh``."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab.errors import CurvatureError
from losslab.linalg.lanczos import Eigenpairs, lanczos_eigenpairs, lanczos_tridiagonal
from losslab.linalg.power_iteration import power_iteration_eigenpairs

DT = torch.float64


def symmetric(eigenvalues: list[float] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``U diag(eigenvalues) U^T`` with a random orthogonal ``U``."""
    lam = torch.as_tensor(eigenvalues, dtype=DT)
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=DT))
    A = (U * lam) @ U.T
    return (A + A.T) / 2


def _gaussian_spectrum(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _matrices() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    low = torch.randn(150, 10, generator=g, dtype=DT)
    middle = torch.linspace(-1, 1, 194, dtype=DT).tolist()
    return {
        # symmetric Gaussian matrix: indefinite, semicircle spectrum
        "indefinite": (lambda M: (M + M.T) / 2)(torch.randn(120, 120, generator=g, dtype=DT)),
        "clustered": symmetric([3.0, 3.001, 3.002, *middle, -2.0, -2.001, -2.002], seed=1),
        "repeated": symmetric([4.0, 4.0, 4.0, 3.0, *middle, -3.0, -3.0], seed=2),
        "low_rank_psd": low @ low.T,
        "decaying": symmetric(
            [(i + 1) ** -1.5 for i in range(196)] + [-0.05, -0.03, -0.02, -0.01], seed=3
        ),
    }


MATRICES = _matrices()


def _wanted(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """The reference values in the order Lanczos returns them."""
    descending = values.flip(0)
    if which == "largest":
        return descending[:k]
    if which == "smallest":
        return values[:k]
    return torch.cat([descending[: (k + 1) // 2], values[: k // 2]])


def _check_pairs(A: torch.Tensor, result: Eigenpairs, k: int, which: str, rtol: float) -> None:
    evals, evecs = torch.linalg.eigh(A)
    scale = float(evals.abs().max())
    reference = _wanted(evals, k, which)
    assert result.values.shape == (k,)
    assert result.vectors.shape == (A.shape[0], k)
    torch.testing.assert_close(result.values, reference, rtol=0, atol=rtol * scale)
    # orthonormal columns
    gram = result.vectors.T @ result.vectors
    torch.testing.assert_close(gram, torch.eye(k, dtype=DT), rtol=0, atol=1e-10)
    # each vector lies in the eigenspace of its eigenvalue (a subspace for repeated ones)
    for value, vector in zip(result.values, result.vectors.T, strict=True):
        group = evecs[:, (evals - value).abs() <= 1e-6 * scale]
        assert group.shape[1] >= 1
        outside = vector - group @ (group.T @ vector)
        assert float(torch.linalg.vector_norm(outside)) <= 1e-6
    # the reported residuals are the true ones
    recomputed = torch.linalg.vector_norm(
        A @ result.vectors - result.vectors * result.values, dim=0
    )
    torch.testing.assert_close(result.residuals, recomputed, rtol=1e-6, atol=1e-12 * scale)


@pytest.mark.parametrize("name", sorted(MATRICES))
@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_eigenpairs_match_eigh(name, which):
    A = MATRICES[name]
    k = 4
    result = lanczos_eigenpairs(lambda v: A @ v, A.shape[0], k, which=which, tol=1e-10)
    assert result.converged, (result.reason, result.matvecs)
    assert result.reason == "converged"
    _check_pairs(A, result, k, which, rtol=1e-8)
    scale = float(torch.linalg.eigvalsh(A).abs().max())
    assert float(result.residuals.max()) <= 1e-10 * scale * (1 + 1e-6)
    assert result.matvecs >= result.iterations + k  # the explicit residuals are counted


def test_order_of_values():
    A = MATRICES["indefinite"]
    largest = lanczos_eigenpairs(lambda v: A @ v, 120, 3, which="largest", tol=1e-10)
    smallest = lanczos_eigenpairs(lambda v: A @ v, 120, 3, which="smallest", tol=1e-10)
    both = lanczos_eigenpairs(lambda v: A @ v, 120, 5, which="both", tol=1e-10)
    assert bool((largest.values[:-1] > largest.values[1:]).all())
    assert bool((smallest.values[:-1] < smallest.values[1:]).all())
    assert both.values[0] > both.values[1] > both.values[2] > 0 > both.values[3]
    assert both.values[3] < both.values[4]


def test_repeated_top_eigenvalue_found_with_its_multiplicity():
    """Few distinct eigenvalues: the Krylov space becomes invariant early and further
    blocks must bring the other copies of the top eigenvalue."""
    A = symmetric([5.0] * 3 + [1.0] * 50 + [0.5] * 47, seed=4)
    for k in (1, 3, 4):
        result = lanczos_eigenpairs(lambda v: A @ v, 100, k, tol=1e-10)
        assert result.converged
        _check_pairs(A, result, k, "largest", rtol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_few_distinct_eigenvalues_with_high_multiplicity(seed):
    """Eight copies of the top eigenvalue among seven distinct values: the first block ends
    after seven steps (in floating point: nearly), and later blocks bring the copies."""
    g = torch.Generator().manual_seed(seed)
    distinct = torch.randn(6, generator=g, dtype=DT).tolist()
    rest = [distinct[int(i)] for i in torch.randint(0, 6, (60,), generator=g)]
    A = symmetric([3.0] * 8 + rest, seed=seed)
    for which, k in (("largest", 5), ("both", 6), ("largest", 8)):
        result = lanczos_eigenpairs(lambda v: A @ v, 68, k, which=which, tol=1e-10, seed=seed)
        assert result.converged
        _check_pairs(A, result, k, which, rtol=1e-8)


def test_null_space_of_low_rank_psd():
    A = MATRICES["low_rank_psd"]
    result = lanczos_eigenpairs(lambda v: A @ v, 150, 6, which="smallest", tol=1e-10)
    assert result.converged
    assert float(result.values.abs().max()) <= 1e-10 * float(torch.linalg.matrix_norm(A, 2))
    _check_pairs(A, result, 6, "smallest", rtol=1e-8)


def test_k_equal_to_dim_and_k_above_dim():
    A = symmetric(_gaussian_spectrum(30, 5), seed=5)
    result = lanczos_eigenpairs(lambda v: A @ v, 30, 30, tol=1e-10)
    assert result.converged
    _check_pairs(A, result, 30, "largest", rtol=1e-8)
    both = lanczos_eigenpairs(lambda v: A @ v, 30, 30, which="both", tol=1e-10)
    _check_pairs(A, both, 30, "both", rtol=1e-8)
    with pytest.raises(CurvatureError, match="k must be at most dim"):
        lanczos_eigenpairs(lambda v: A @ v, 30, 31)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_tiny_dimensions(dim):
    A = symmetric([float(i + 1) for i in range(dim)], seed=dim)
    for k in range(1, dim + 1):
        result = lanczos_eigenpairs(lambda v: A @ v, dim, k, tol=1e-12)
        assert result.converged
        _check_pairs(A, result, k, "largest", rtol=1e-10)


def test_zero_operator():
    result = lanczos_eigenpairs(lambda v: torch.zeros_like(v), 40, 3)
    assert result.converged
    assert result.values.tolist() == [0.0, 0.0, 0.0]
    assert result.residuals.tolist() == [0.0, 0.0, 0.0]


def test_float32_with_looser_tolerance():
    A = MATRICES["decaying"]
    A32 = A.float()
    result = lanczos_eigenpairs(
        lambda v: A32 @ v, 200, 5, tol=1e-5, dtype=torch.float32, which="both"
    )
    assert result.converged
    assert result.values.dtype == torch.float32
    assert result.vectors.dtype == torch.float32
    reference = _wanted(torch.linalg.eigvalsh(A), 5, "both")
    torch.testing.assert_close(result.values.double(), reference, rtol=0, atol=1e-5)
    recomputed = torch.linalg.vector_norm(
        A @ result.vectors.double() - result.vectors.double() * result.values.double(), dim=0
    )
    torch.testing.assert_close(result.residuals.double(), recomputed, rtol=0, atol=1e-6)


def test_float32_tolerance_below_rounding_is_reported():
    A32 = MATRICES["decaying"].float()
    result = lanczos_eigenpairs(lambda v: A32 @ v, 200, 3, tol=1e-10, dtype=torch.float32)
    assert not result.converged
    assert result.reason == "accuracy floor"


def test_thick_restart_is_exercised_and_correct():
    A = symmetric(torch.linspace(-1, 1, 300, dtype=DT) ** 3, seed=6)
    for which in ("largest", "both"):
        result = lanczos_eigenpairs(lambda v: A @ v, 300, 4, which=which, tol=1e-9, krylov_dim=12)
        assert result.converged
        assert result.iterations > 3 * 12  # several restarts of a 12-vector basis
        _check_pairs(A, result, 4, which, rtol=1e-8)


def test_budget_exhausted_returns_best_pairs():
    A = symmetric(torch.linspace(0, 1, 300, dtype=DT) ** 2, seed=6)
    result = lanczos_eigenpairs(lambda v: A @ v, 300, 4, tol=1e-12, max_matvecs=20)
    assert not result.converged
    assert result.reason == "max_matvecs"
    assert result.matvecs <= 20
    recomputed = torch.linalg.vector_norm(
        A @ result.vectors - result.vectors * result.values, dim=0
    )
    torch.testing.assert_close(result.residuals, recomputed, rtol=1e-6, atol=1e-14)
    # Ritz values approach the top from inside the spectrum
    assert float(result.values[0]) <= 1.0 + 1e-12


def test_start_vector_orthogonal_to_top_still_finds_it():
    A = symmetric([float(i) for i in range(50)], seed=8)
    evecs = torch.linalg.eigh(A).eigenvectors
    result = lanczos_eigenpairs(lambda v: A @ v, 50, 2, start=evecs[:, 10], tol=1e-10)
    assert result.converged
    _check_pairs(A, result, 2, "largest", rtol=1e-8)


def test_same_seed_same_result_and_to_dict():
    A = MATRICES["indefinite"]
    first = lanczos_eigenpairs(lambda v: A @ v, 120, 3, seed=11)
    second = lanczos_eigenpairs(lambda v: A @ v, 120, 3, seed=11, device="cpu")
    assert torch.equal(first.values, second.values)
    assert torch.equal(first.vectors, second.vectors)
    data = first.to_dict()
    json.dumps(data)
    assert data["k"] == 3
    assert data["dim"] == 120
    assert "vectors" not in data
    assert len(first.to_dict(include_vectors=True)["vectors"]) == 3


def test_non_finite_products_raise():
    A = MATRICES["indefinite"]
    with pytest.raises(CurvatureError, match="NaN or inf"):
        lanczos_eigenpairs(lambda v: torch.full_like(v, float("nan")), 120, 2)
    calls = []

    def late_nan(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return A @ v if len(calls) < 6 else A @ v * float("inf")

    with pytest.raises(CurvatureError, match="NaN or inf"):
        lanczos_eigenpairs(late_nan, 120, 2)


def test_bad_products_and_arguments_raise():
    A = MATRICES["indefinite"]
    g = torch.Generator().manual_seed(0)
    N = torch.randn(120, 120, generator=g, dtype=DT)
    with pytest.raises(CurvatureError, match="not look symmetric"):
        lanczos_eigenpairs(lambda v: N @ v, 120, 2)
    with pytest.raises(CurvatureError, match="shape"):
        lanczos_eigenpairs(lambda v: (A @ v)[:-1], 120, 2)
    bad = [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"tol": 0.0}, "tol must be a positive finite"),
        ({"tol": float("nan")}, "tol must be a positive finite"),
        ({"which": "middle"}, "which must be"),
        ({"krylov_dim": 3, "k": 2}, "krylov_dim = 3 leaves no room"),
        ({"max_matvecs": 3, "k": 2}, "max_matvecs must be an integer >= 4"),
        ({"dtype": torch.int64}, "dtype must be a real floating"),
        ({"start": torch.zeros(120, dtype=DT)}, "start must be a finite, nonzero"),
        ({"start": torch.ones(7, dtype=DT)}, r"start must be a tensor of shape \(120,\)"),
    ]
    for overrides, message in bad:
        kwargs = {"dim": 120, "k": 1} | overrides
        with pytest.raises(CurvatureError, match=message):
            lanczos_eigenpairs(lambda v: A @ v, **kwargs)


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(1, 40),
    data=st.data(),
    seed=st.integers(0, 10_000),
    which=st.sampled_from(["largest", "smallest", "both"]),
)
def test_random_small_problems(dim, data, seed, which):
    k = data.draw(st.integers(1, dim))
    A = symmetric(_gaussian_spectrum(dim, seed), seed=seed)
    result = lanczos_eigenpairs(lambda v: A @ v, dim, k, which=which, tol=1e-10, seed=seed)
    assert result.converged
    evals = torch.linalg.eigvalsh(A)
    torch.testing.assert_close(
        result.values, _wanted(evals, k, which), rtol=0, atol=1e-8 * float(evals.abs().max())
    )


# ---------------------------------------------------------------- lanczos_tridiagonal


def test_tridiagonal_is_the_projection():
    A = MATRICES["indefinite"]
    start = torch.randn(120, generator=torch.Generator().manual_seed(1), dtype=DT)
    alphas, betas, Q = lanczos_tridiagonal(lambda v: A @ v, 120, 25, start=start)
    assert Q is not None
    assert Q.shape == (120, 25)
    assert alphas.shape == (25,)
    assert betas.shape == (24,)
    torch.testing.assert_close(Q.T @ Q, torch.eye(25, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q[:, 0], start / start.norm())
    T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    torch.testing.assert_close(Q.T @ A @ Q, T, rtol=0, atol=1e-10)
    # without reorthogonalisation the first steps agree (orthogonality is lost only later)
    a2, b2, Q2 = lanczos_tridiagonal(lambda v: A @ v, 120, 8, start=start, reorthogonalize=False)
    assert Q2 is None
    torch.testing.assert_close(a2, alphas[:8], rtol=0, atol=1e-10)
    torch.testing.assert_close(b2, betas[:7], rtol=0, atol=1e-10)


def test_tridiagonal_stops_at_an_invariant_subspace():
    A = symmetric([2.0] * 20 + [1.0] * 20, seed=2)
    start = torch.ones(40, dtype=DT)
    for reorth in (True, False):
        alphas, betas, _ = lanczos_tridiagonal(
            lambda v: A @ v, 40, 30, start=start, reorthogonalize=reorth
        )
        assert alphas.shape == (2,)
        assert betas.shape == (1,)
        T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
        torch.testing.assert_close(torch.linalg.eigvalsh(T), torch.tensor([1.0, 2.0], dtype=DT))
    with pytest.raises(CurvatureError):
        lanczos_tridiagonal(lambda v: A @ v, 40, 5, start=torch.zeros(40, dtype=DT))


# ---------------------------------------------------------------- power iteration


def test_power_iteration_matches_eigh_and_lanczos_needs_far_fewer_products():
    A = MATRICES["decaying"]
    evals, evecs = torch.linalg.eigh(A)
    k, tol = 5, 1e-6
    power = power_iteration_eigenpairs(lambda v: A @ v, 200, k, tol=tol)
    lanczos = lanczos_eigenpairs(lambda v: A @ v, 200, k, tol=tol)
    assert power.converged
    assert lanczos.converged
    reference = evals.flip(0)[:k]  # the top 5 are also the 5 largest in magnitude here
    torch.testing.assert_close(power.values, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(lanczos.values, reference, rtol=0, atol=1e-10)
    overlaps = (evecs.flip(1)[:, :k].T @ power.vectors).diagonal().abs()
    assert float(overlaps.min()) >= 1 - 1e-4
    assert 3 * lanczos.matvecs <= power.matvecs
    assert power.iterations == power.matvecs


def test_power_iteration_finds_largest_magnitude():
    A = symmetric([1.0, 0.5, -3.0, -2.0] + [0.1] * 36, seed=9)
    result = power_iteration_eigenpairs(lambda v: A @ v, 40, 2, tol=1e-8)
    assert result.converged
    torch.testing.assert_close(
        result.values, torch.tensor([-3.0, -2.0], dtype=DT), atol=1e-7, rtol=0
    )
    recomputed = torch.linalg.vector_norm(
        A @ result.vectors - result.vectors * result.values, dim=0
    )
    torch.testing.assert_close(result.residuals, recomputed, rtol=1e-6, atol=1e-12)


def test_power_iteration_reports_max_iter_and_validates():
    A = symmetric([1.0, 0.999] + [0.0] * 38, seed=10)
    result = power_iteration_eigenpairs(lambda v: A @ v, 40, 1, tol=1e-12, max_iter=20)
    assert not result.converged
    assert result.reason == "max_iter"
    assert result.matvecs == 20
    with pytest.raises(CurvatureError, match="ask for k <= 40"):
        power_iteration_eigenpairs(lambda v: A @ v, 40, 41)
    with pytest.raises(CurvatureError, match="tol must be a positive finite"):
        power_iteration_eigenpairs(lambda v: A @ v, 40, 1, tol=-1.0)
    with pytest.raises(CurvatureError, match="NaN or inf"):
        power_iteration_eigenpairs(lambda v: v * float("nan"), 40, 1)


def test_a_further_copy_of_a_repeated_top_eigenvalue_is_searched_for():
    # Five copies of 3 among 395 distinct values in [-1, 1]: from this start the Krylov
    # space showed four copies, and 1 took the fifth's place with converged=True. Seeing a
    # repeated value inside the wanted ones, the solver searches the complement of the
    # found vectors, finds the fifth copy, and every pair has an explicit residual.
    n = 400
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        torch.randn(n, n, generator=generator, dtype=torch.float64)
    spectrum = torch.cat([torch.full((5,), 3.0), torch.linspace(-1, 1, n - 5)]).double()
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    A = basis @ torch.diag(spectrum) @ basis.T
    A = (A + A.T) / 2
    result = lanczos_eigenpairs(lambda v: A @ v, n, 5)
    assert result.converged
    torch.testing.assert_close(result.values, torch.full((5,), 3.0, dtype=torch.float64))
    assert float(result.residuals.max()) <= 1e-6 * 3.0
    gram = result.vectors.T @ result.vectors
    torch.testing.assert_close(gram, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)


def test_the_smallest_pairs_of_a_hessian_with_a_large_null_space():
    # A ReLU MLP trained briefly on wine (as `losslab critical spectrum` does): its squared
    # loss Hessian (139 parameters) has a 119-dimensional null space and 20 distinct
    # non-zero eigenvalues. From seed 0 the Krylov space met one zero direction and
    # converged on 0, 5e-5, 4.5e-3 as "the three smallest"; deflation finds the copies.
    from losslab.critical import classification_data, squared_error, train_squared_loss
    from losslab.linalg import HessianOperator
    from losslab.nets import ReLUMLP

    inputs, targets = classification_data("wine", None, seed=0)
    model = ReLUMLP(inputs.shape[1], [8], targets.shape[1], seed=0, dtype=DT)
    train_squared_loss(model, inputs.to(DT), targets.to(DT), weight_decay=1e-3, epochs=20,
                       momentum=0.9, seed=0)  # fmt: skip
    matrix = HessianOperator(model, squared_error, (inputs.to(DT), targets.to(DT))).dense()
    exact = torch.linalg.eigvalsh(matrix)
    assert int((exact.abs() < 1e-10).sum()) > 100
    scale = float(exact.abs().max())
    for k, which in ((2, "smallest"), (3, "smallest"), (4, "smallest"), (4, "both")):
        for seed in range(3):
            result = lanczos_eigenpairs(lambda v: matrix @ v, 139, k, which=which, seed=seed)
            assert result.converged, (k, which, seed, result.reason)
            smallest = result.values[-(k // 2) :] if which == "both" else result.values
            assert float(smallest.abs().max()) <= 1e-6 * scale, (k, which, seed, smallest)
            residuals = torch.linalg.vector_norm(
                matrix @ result.vectors - result.vectors * result.values, dim=0
            )
            assert float(residuals.max()) <= 1e-6 * scale


@pytest.mark.parametrize("k", [3, 5])
def test_the_search_for_copies_keeps_to_the_budget_and_never_claims_too_much(k):
    # 40 zeros among 300 eigenvalues: the copies of 0 need up to k - 1 deflation rounds.
    # Whatever the budget: no more products than it, residuals those of the returned
    # vectors, and converged only with k zeros.
    g = torch.Generator().manual_seed(0)
    spectrum = torch.cat([torch.zeros(40, dtype=DT), torch.linspace(1e-3, 1.0, 260, dtype=DT)])
    basis, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=DT))
    A = basis @ torch.diag(spectrum) @ basis.T
    for budget in [*range(4 * k + 60, 4 * k + 500, 37), None]:
        result = lanczos_eigenpairs(lambda v: A @ v, 300, k, which="smallest", seed=0,
                                    max_matvecs=budget)  # fmt: skip
        if budget is not None:
            assert result.matvecs <= budget
        true = torch.linalg.vector_norm(A @ result.vectors - result.vectors * result.values, dim=0)
        torch.testing.assert_close(result.residuals, true, rtol=1e-6, atol=1e-13)
        if result.converged:
            assert float(result.values.abs().max()) <= 1e-6
    assert result.converged  # the default budget covers the search
