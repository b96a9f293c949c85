"""Curvature operators of a model's loss against dense Hessians, finite differences and
explicit Jacobians."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from losslab.critical import classify
from losslab.errors import CurvatureError
from losslab.linalg import GaussNewtonOperator, HessianOperator, ModelLoss
from losslab.nets import ReLUMLP

pytestmark = pytest.mark.usefixtures("float64_default")


def small_problem(seed: int = 0, loss: str = "mse"):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    inputs = torch.randn(40, 4, generator=generator)
    if loss == "mse":
        return model, nn.MSELoss(), (inputs, torch.randn(40, 3, generator=generator))
    labels = torch.randint(0, 3, (40,), generator=generator)
    return model, nn.CrossEntropyLoss(), (inputs, labels)


def flat_loss(model, loss_fn, data):
    """``theta -> loss_fn(model(X; theta), Y)`` over the parameters in ``parameters()``
    order, and ``theta`` now, built here from ``functional_call`` (no library code)."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    inputs, targets = data

    def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(theta, [s.numel() for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, unflatten(theta), (inputs,)), targets)

    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    return loss, theta, unflatten


def dense_hessian(model, loss_fn, data) -> torch.Tensor:
    loss, theta, _ = flat_loss(model, loss_fn, data)
    return hessian(loss)(theta)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_hessian_matches_dense_and_finite_differences(loss) -> None:
    model, loss_fn, data = small_problem(1, loss)
    operator = HessianOperator(model, loss_fn, data)
    reference = dense_hessian(model, loss_fn, data)
    torch.testing.assert_close(operator.dense(), reference, atol=1e-12, rtol=1e-10)
    # an HVP against central differences of the gradient
    vector = torch.randn(operator.dim, generator=torch.Generator().manual_seed(2))
    loss, theta, _ = flat_loss(model, loss_fn, data)
    torch.testing.assert_close(operator.theta, theta, atol=0, rtol=0)
    step = 1e-5
    gradient = torch.func.grad(loss)
    differenced = (
        gradient(operator.theta + step * vector) - gradient(operator.theta - step * vector)
    ) / (2 * step)
    torch.testing.assert_close(operator.matvec(vector), differenced, atol=1e-7, rtol=1e-6)


def test_batches_give_the_full_data_hessian() -> None:
    model, loss_fn, (inputs, targets) = small_problem(3)
    batches = [
        (inputs[:10], targets[:10]),
        (inputs[10:35], targets[10:35]),
        (inputs[35:], targets[35:]),
    ]
    split = HessianOperator(model, loss_fn, batches)
    whole = HessianOperator(model, loss_fn, (inputs, targets))
    torch.testing.assert_close(split.dense(), whole.dense(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(split.gradient(), whole.gradient(), atol=1e-13, rtol=1e-11)


def test_eigenpairs_trace_density_against_eigh() -> None:
    model, loss_fn, data = small_problem(4)
    operator = HessianOperator(model, loss_fn, data)
    exact = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, data))
    top = operator.eigenpairs(3, tol=1e-10)
    assert top.converged
    torch.testing.assert_close(top.values, exact.flip(0)[:3], atol=1e-8, rtol=1e-8)
    assert float(top.residuals.max()) <= 1e-8 * float(exact.abs().max())
    bottom = operator.eigenpairs(2, which="smallest", tol=1e-10)
    torch.testing.assert_close(bottom.values, exact[:2], atol=1e-8, rtol=1e-8)
    assert operator.trace(n_matvecs=operator.dim).value == pytest.approx(
        float(exact.sum()), rel=1e-10
    )
    density = operator.density(n_steps=operator.dim, n_vectors=1)
    # full-length Lanczos: the nodes are the eigenvalues (the probe meets every eigenvector)
    torch.testing.assert_close(torch.sort(density.nodes[0]).values, exact, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gauss_newton_equals_jacobian_form(loss) -> None:
    model, loss_fn, data = small_problem(5, loss)
    operator = GaussNewtonOperator(model, loss_fn, data)
    _, theta, unflatten = flat_loss(model, loss_fn, data)
    inputs, targets = data

    def outputs_of(theta: torch.Tensor) -> torch.Tensor:
        return functional_call(model, unflatten(theta), (inputs,)).reshape(-1)

    jacobian = jacrev(outputs_of)(theta)
    outputs = outputs_of(theta)
    output_hessian = hessian(lambda o: loss_fn(o.reshape(len(inputs), -1), targets))(outputs)
    reference = jacobian.T @ output_hessian @ jacobian
    torch.testing.assert_close(operator.dense(), reference, atol=1e-12, rtol=1e-10)
    assert float(torch.linalg.eigvalsh(operator.dense())[0]) >= -1e-12  # PSD for convex losses


def test_gauss_newton_equals_hessian_for_a_linear_model() -> None:
    generator = torch.Generator().manual_seed(6)
    model = nn.Linear(5, 2)
    data = (torch.randn(30, 5, generator=generator), torch.randn(30, 2, generator=generator))
    hessian_matrix = HessianOperator(model.double(), nn.MSELoss(), data).dense()
    gauss_newton = GaussNewtonOperator(model, nn.MSELoss(), data).dense()
    torch.testing.assert_close(gauss_newton, hessian_matrix, atol=1e-13, rtol=1e-12)


def test_float32_follows_the_model() -> None:
    model = ReLUMLP(4, [5], 2, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    data = (
        torch.randn(20, 4, generator=generator).float(),
        torch.randn(20, 2, generator=generator).float(),
    )
    operator = HessianOperator(model, nn.MSELoss(), data)
    product = operator.matvec(torch.ones(operator.dim))
    assert product.dtype == torch.float32
    top = operator.eigenpairs(1, tol=1e-4)
    assert top.values.dtype == torch.float32


def test_bad_input() -> None:
    model, loss_fn, (inputs, targets) = small_problem(7)
    frozen = nn.Linear(4, 3).requires_grad_(False)
    with pytest.raises(CurvatureError, match="no trainable"):
        HessianOperator(frozen, loss_fn, (inputs, targets))
    with pytest.raises(CurvatureError, match="NaN"):
        HessianOperator(model, loss_fn, (inputs * float("nan"), targets))
    with pytest.raises(CurvatureError, match="no batch"):
        HessianOperator(model, loss_fn, [])
    with pytest.raises(CurvatureError, match="targets"):
        HessianOperator(model, loss_fn, (inputs, targets[:5]))
    with pytest.raises(CurvatureError, match=r"not finite|non-finite"):
        HessianOperator(
            model, lambda out, y: torch.log(out - out.detach() - 1).sum(), (inputs, targets)
        )
    for bad in (nn.MSELoss(reduction="sum"), nn.MSELoss(reduction="none")):
        with pytest.raises(CurvatureError, match="reduction="):
            HessianOperator(model, bad, (inputs, targets))

    def per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((out - y) ** 2).mean(1)

    for operator_type in (HessianOperator, GaussNewtonOperator):
        with pytest.raises(CurvatureError, match="reduction="):
            operator_type(model, nn.MSELoss(reduction="none"), (inputs, targets))
        with pytest.raises(CurvatureError, match="scalar"):
            operator_type(model, per_sample, (inputs, targets))
    operator = HessianOperator(model, loss_fn, (inputs, targets))
    with pytest.raises(CurvatureError, match=r"larger than|dimension|k"):
        operator.eigenpairs(operator.dim + 1)
    with pytest.raises(CurvatureError, match="shape"):
        operator.matvec(torch.ones(3))
    with pytest.raises(CurvatureError, match="max_dim"):
        operator.dense(max_dim=10)


def test_many_batches_recompute_products_and_agree() -> None:
    """Above MAX_CACHED_BATCHES the products are recomputed per batch (no cached graphs)."""
    from losslab.linalg.curvature import MAX_CACHED_BATCHES

    model, loss_fn, (inputs, targets) = small_problem(8)
    size = len(inputs) // (MAX_CACHED_BATCHES + 2)
    batches = [(inputs[i : i + size], targets[i : i + size]) for i in range(0, len(inputs), size)]
    assert len(batches) > MAX_CACHED_BATCHES
    split = HessianOperator(model, loss_fn, batches)
    assert not split.cache_graphs
    reference = dense_hessian(model, loss_fn, (inputs, targets))
    torch.testing.assert_close(split.dense(), reference, atol=1e-12, rtol=1e-10)
    # the choice can be forced either way, with the same matrix
    for data, cache_graphs in ((batches, True), ((inputs, targets), False)):
        forced = HessianOperator(model, loss_fn, data, cache_graphs=cache_graphs)
        assert forced.cache_graphs is cache_graphs
        torch.testing.assert_close(forced.dense(), reference, atol=1e-12, rtol=1e-10)
        pairs = forced.eigenpairs(2, tol=1e-8, mixed_precision=True)  # its float32 copy too
        assert pairs.converged
        torch.testing.assert_close(
            pairs.values, torch.linalg.eigvalsh(reference).flip(0)[:2], atol=1e-7, rtol=1e-7
        )
    with pytest.raises(CurvatureError, match="cache_graphs"):
        HessianOperator(model, loss_fn, batches, cache_graphs="yes")


def test_hutch_plus_plus_on_a_model_hessian_is_unbiased() -> None:
    model, loss_fn, data = small_problem(9)
    operator = HessianOperator(model, loss_fn, data)
    exact = float(torch.linalg.eigvalsh(operator.dense()).sum())
    estimates = torch.tensor([operator.trace(n_matvecs=30, seed=s).value for s in range(40)])
    plain = torch.tensor(
        [operator.trace(n_matvecs=30, method="hutchinson", seed=s).value for s in range(40)]
    )
    # the mean of 40 estimates within 4 standard errors of the exact trace
    assert abs(float(estimates.mean()) - exact) <= 4 * float(estimates.std()) / 40**0.5 + 1e-12
    assert float(estimates.std()) < float(plain.std())  # variance reduction


def test_training_mode_dropout_is_refused_and_dtypes_follow_the_model() -> None:
    model = ReLUMLP(4, [5], 2, dropout=0.5)
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(20, 4, generator=generator), torch.randn(20, 2, generator=generator))
    with pytest.raises(CurvatureError, match="eval"):
        HessianOperator(model, nn.MSELoss(), data)
    model.eval()
    single = ReLUMLP(4, [5], 2, dtype=torch.float32)
    operator = HessianOperator(single, nn.MSELoss(), data)  # float64 data, float32 model
    assert operator.matvec(torch.ones(operator.dim)).dtype == torch.float32
    with pytest.raises(CurvatureError, match="unknown trace method"):
        operator.trace(method="exact")  # type: ignore[arg-type]


def test_mixed_precision_eigenpairs_are_float64_accurate() -> None:
    model, loss_fn, data = small_problem(10)
    operator = HessianOperator(model, loss_fn, data)
    exact = torch.linalg.eigvalsh(operator.dense())
    for which, expected in (("largest", exact.flip(0)[:3]), ("both", exact[[-1, -2, 0]])):
        pairs = operator.eigenpairs(3, which=which, tol=1e-5, mixed_precision=True)
        assert pairs.converged
        assert pairs.values.dtype == torch.float64
        # a float64 Ritz pair lies within its residual of an eigenvalue
        assert ((pairs.values - expected).abs() <= pairs.residuals + 1e-12).all()
        recomputed = torch.stack([operator.matvec(v) for v in pairs.vectors.T], dim=1)
        torch.testing.assert_close(
            torch.linalg.vector_norm(recomputed - pairs.vectors * pairs.values, dim=0),
            pairs.residuals,
            atol=1e-12,
            rtol=1e-6,
        )
    # beyond float32's reach the float64 Lanczos takes over
    strict = operator.eigenpairs(3, tol=1e-10, mixed_precision=True)
    assert strict.converged
    torch.testing.assert_close(strict.values, exact.flip(0)[:3], atol=1e-8, rtol=1e-8)


def test_dense_refuses_a_hessian_that_is_not_finite() -> None:
    # sqrt|w| at w = 0: the loss is finite, its second derivative is not
    class RootModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (torch.sqrt(self.w.abs()) * x).sum(1, keepdim=True)

    data = (torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    operator = HessianOperator(RootModel(), nn.MSELoss(), data)
    with pytest.raises(CurvatureError, match="not twice differentiable"):
        operator.dense()


def test_dense_refuses_products_that_are_not_symmetric() -> None:
    # A kernel whose double backward is wrong gives an asymmetric "Hessian"; symmetrising
    # it silently would return a wrong matrix. A random non-symmetric matvec stands in.
    from losslab.linalg.hvp import dense_from_products

    generator = torch.Generator().manual_seed(0)
    symmetric = torch.randn(7, 7, generator=generator)
    symmetric = symmetric + symmetric.T
    skew = 1e-3 * torch.randn(7, 7, generator=generator)
    rounding = dense_from_products(lambda v: (symmetric + 1e-12 * skew) @ v, 7, dtype=torch.float64)
    torch.testing.assert_close(rounding, symmetric, atol=1e-12, rtol=0)
    with pytest.raises(CurvatureError, match="not form a symmetric matrix"):
        dense_from_products(lambda v: (symmetric + 100 * skew) @ v, 7, dtype=torch.float64)


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)),
        nn.CrossEntropyLoss(ignore_index=1),
        nn.CrossEntropyLoss(
            weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64), ignore_index=0
        ),
    ],
)
def test_weighted_and_ignoring_means_combine_over_batches(loss_fn) -> None:
    # Their batch mean divides by the counted targets' weight, not by n_b: batches of
    # unequal size must still give the full-batch Hessian (built here, one batch).
    model, _, (inputs, labels) = small_problem(7, "cross_entropy")
    batches = [(inputs[:7], labels[:7]), (inputs[7:30], labels[7:30]), (inputs[30:], labels[30:])]
    reference = dense_hessian(model, loss_fn, (inputs, labels))
    split = HessianOperator(model, loss_fn, batches)
    torch.testing.assert_close(split.dense(), reference, atol=1e-12, rtol=1e-10)
    loss, theta, _ = flat_loss(model, loss_fn, (inputs, labels))
    assert float(split.loss(theta)) == pytest.approx(float(loss(theta)), rel=1e-12)
    torch.testing.assert_close(split.gradient(), torch.func.grad(loss)(theta), atol=1e-13,
                               rtol=1e-11)  # fmt: skip


def _dropout_model(generator: torch.Generator) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("n_batches", [1, 12])  # cached products, and recomputed ones
def test_a_mode_change_after_construction_is_an_error(n_batches) -> None:
    generator = torch.Generator().manual_seed(11)
    model = _dropout_model(generator).eval()
    inputs = torch.randn(36, 4, generator=generator)
    targets = torch.randn(36, 2, generator=generator)
    batches = list(zip(inputs.chunk(n_batches), targets.chunk(n_batches), strict=True))
    operator = HessianOperator(model, nn.MSELoss(), batches)
    vector = torch.randn(operator.dim, generator=generator)
    before = operator.matvec(vector)
    model.train()  # as when training resumes
    with pytest.raises(CurvatureError, match="mode changed after"):
        operator.matvec(vector)
    model.eval()  # back to the recorded modes: the same function
    torch.testing.assert_close(operator.matvec(vector), before, atol=0, rtol=0)


def test_random_and_batch_dependent_models_are_refused() -> None:
    generator = torch.Generator().manual_seed(12)
    inputs = torch.randn(20, 4, generator=generator)
    targets = torch.randn(20, 2, generator=generator)

    class FunctionalDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.dropout(self.linear(x), 0.5, training=self.training)

    with pytest.raises(CurvatureError, match="differ between two evaluations"):
        HessianOperator(FunctionalDropout().train(), nn.MSELoss(), (inputs, targets))
    HessianOperator(FunctionalDropout().eval(), nn.MSELoss(), (inputs, targets))  # fine

    batch_stats = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False),
                                nn.Tanh(), nn.Linear(5, 2)).eval()  # fmt: skip
    halves = [(inputs[:10], targets[:10]), (inputs[10:], targets[10:])]
    with pytest.raises(CurvatureError, match="uses batch statistics"):
        HessianOperator(batch_stats, nn.MSELoss(), halves)
    # one batch: a fixed function, the Hessian of the batch-statistics loss, against central
    # differences of the gradient (torch.func's own second derivatives of batch_norm with
    # batch statistics are wrong in torch 2.13, by 0.2 here: not a reference)
    one = HessianOperator(batch_stats, nn.MSELoss(), (inputs, targets))
    loss, theta, _ = flat_loss(batch_stats, nn.MSELoss(), (inputs, targets))
    gradient, h = torch.func.grad(loss), 1e-5
    differenced = torch.stack([(gradient(theta + h * e) - gradient(theta - h * e)) / (2 * h)
                               for e in torch.eye(theta.numel())])  # fmt: skip
    torch.testing.assert_close(one.dense(), differenced, atol=1e-7, rtol=0)

    # instance norm in training mode (no running statistics) normalises each sample alone
    images = torch.randn(6, 2, 5, generator=generator)
    per_sample = nn.Sequential(nn.Conv1d(2, 3, 3), nn.InstanceNorm1d(3), nn.Flatten(),
                               nn.Linear(9, 1)).train()  # fmt: skip
    labels = torch.randn(6, 1, generator=generator)
    split = HessianOperator(per_sample, nn.MSELoss(), [(images[:2], labels[:2]),
                                                       (images[2:], labels[2:])])  # fmt: skip
    torch.testing.assert_close(
        split.dense(), dense_hessian(per_sample, nn.MSELoss(), (images, labels)),
        atol=1e-12, rtol=1e-10,
    )  # fmt: skip


def test_a_dataset_is_not_a_list_of_batches() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model, loss_fn, (inputs, targets) = small_problem(13)
    dataset = TensorDataset(inputs, targets)
    with pytest.raises(CurvatureError, match=r"wrap it in a torch\.utils\.data\.DataLoader"):
        HessianOperator(model, loss_fn, dataset)
    with pytest.raises(CurvatureError, match="0-dimensional"):
        HessianOperator(model, loss_fn, [(inputs[0], targets[0, 0])])
    loader = HessianOperator(model, loss_fn, DataLoader(dataset, batch_size=16))
    torch.testing.assert_close(loader.dense(), dense_hessian(model, loss_fn, (inputs, targets)),
                               atol=1e-12, rtol=1e-10)  # fmt: skip


def test_a_mode_change_that_keeps_the_loss_is_accepted() -> None:
    # a plain MLP has no mode-dependent layer: model.eval() after building the operator
    # leaves its loss the same function, and the products go on
    model, loss_fn, data = small_problem(14)
    model.train()
    operator = HessianOperator(model, loss_fn, data)
    vector = torch.randn(operator.dim, generator=torch.Generator().manual_seed(14))
    before = operator.matvec(vector)
    model.eval()
    torch.testing.assert_close(operator.matvec(vector), before, atol=0, rtol=0)


def test_float32_summation_noise_is_not_randomness() -> None:
    # two evaluations that differ only in the order of a float32 sum (as GPU atomics do)
    class Scatter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.calls))
            out = self.linear(x)
            index = torch.zeros(len(x), dtype=torch.long)
            total = torch.zeros(1, 2).index_add(0, index[order], out[order])
            return out + 1e3 * total / len(x)

    generator = torch.Generator().manual_seed(15)
    data = (torch.randn(500, 4, generator=generator), torch.randn(500, 2, generator=generator))
    HessianOperator(Scatter(), nn.MSELoss(), data)  # float32: accepted


def test_a_mode_change_of_a_mode_dependent_layer_is_refused_even_if_the_loss_stays() -> None:
    # dropout before a zero-initialised head: the loss at theta0 is the same in both
    # modes, but every derivative through the head is random in training mode
    generator = torch.Generator().manual_seed(16)
    model = _dropout_model(generator)
    with torch.no_grad():
        model[3].weight.zero_()
    inputs = torch.randn(30, 4, generator=generator)
    data = (inputs, torch.randn(30, 2, generator=generator))
    model.eval()
    for operator in (GaussNewtonOperator(model, nn.MSELoss(), data),
                     HessianOperator(model, nn.MSELoss(), data)):  # fmt: skip
        model.train()
        with pytest.raises(CurvatureError, match="Dropout, whose output depends on it"):
            operator.matvec(torch.ones(operator.dim))
        model.eval()


def test_rare_dropout_in_float32_is_caught() -> None:
    # F.dropout with p = 0.001 moves a float32 loss by about 2e-4 relative, under sqrt(eps);
    # single outputs move far more than summation noise
    class RareDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden, self.head = nn.Linear(10, 64), nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(nn.functional.dropout(torch.tanh(self.hidden(x)), 0.001))

    generator = torch.Generator().manual_seed(17)
    data = (torch.randn(2000, 10, generator=generator), torch.randn(2000, 1, generator=generator))
    with pytest.raises(CurvatureError, match="differ between two evaluations"):
        HessianOperator(RareDropout(), nn.MSELoss(), data)


def test_targets_that_would_broadcast_are_refused() -> None:
    # outputs (n, 1) against targets (n,): MSE broadcasts to (n, n), another loss
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    X = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, dtype=torch.float64)
    wrapped = lambda o, t: nn.functional.mse_loss(o, t)  # noqa: E731 (torch's warning)
    for loss_fn in (nn.MSELoss(), nn.functional.mse_loss, nn.HuberLoss(), wrapped):
        with pytest.raises(CurvatureError, match=r"\(20, 1\) and the targets \(20,\)"):
            HessianOperator(model, loss_fn, (X, y))
        with pytest.raises(CurvatureError, match="broadcast"):
            GaussNewtonOperator(model, loss_fn, (X, y))
    with pytest.raises(CurvatureError, match="cannot compare them"):
        HessianOperator(model, nn.MSELoss(), (X, torch.randn(20, 2, 3, dtype=torch.float64)))
    # the right shape is the loss the model trains on
    hessian = HessianOperator(model, nn.MSELoss(), (X, y[:, None]))
    torch.testing.assert_close(hessian.dense(), dense_hessian(model, nn.MSELoss(), (X, y[:, None])))


class SkewedHessian(HessianOperator):
    """A Hessian whose products carry a skew part: a kernel with a wrong double backward."""

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        skew = torch.roll(vector, 1) - torch.roll(vector, -1)  # a skew-symmetric circulant
        return super().matvec(vector) + 0.5 * skew


def test_trace_and_density_refuse_products_that_are_not_symmetric() -> None:
    model, loss_fn, data = small_problem()
    skewed = SkewedHessian(model, loss_fn, data)
    with pytest.raises(CurvatureError, match="not symmetric"):
        skewed.trace(20)
    with pytest.raises(CurvatureError, match="not symmetric"):
        skewed.density(n_steps=10)
    HessianOperator(model, loss_fn, data).check_symmetric()  # the true Hessian passes


def test_models_the_flat_parameter_vector_cannot_hold_are_refused() -> None:
    model, loss_fn, (X, Y) = small_problem()
    mixed = nn.Sequential(nn.Linear(4, 6).float(), nn.Tanh(), nn.Linear(6, 3).double())
    with pytest.raises(CurvatureError, match=r"dtypes \['torch.float32', 'torch.float64'\]"):
        HessianOperator(mixed, loss_fn, (X, Y))
    with pytest.raises(CurvatureError, match="float32 or float64"):
        HessianOperator(small_problem()[0].half(), loss_fn, (X, Y))
    with pytest.raises(CurvatureError, match="TorchScript"):
        HessianOperator(torch.jit.script(model), loss_fn, (X, Y))


def test_models_with_several_outputs_are_checked_for_randomness_and_have_a_gauss_newton() -> None:
    generator = torch.Generator().manual_seed(21)
    inputs = torch.randn(20, 4, generator=generator)
    labels = torch.randint(0, 3, (20,), generator=generator)

    class TwoOutputs(nn.Module):
        def __init__(self, dropout: float) -> None:
            super().__init__()
            self.hidden, self.out, self.dropout = nn.Linear(4, 5), nn.Linear(5, 3), dropout

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            hidden = nn.functional.dropout(torch.tanh(self.hidden(x)), self.dropout, True)
            logits = self.out(hidden)
            return {"logits": logits, "label": logits.argmax(1)}  # an integer output too

    def loss_fn(outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs["logits"], labels)

    with pytest.raises(CurvatureError, match="differ between two evaluations"):
        HessianOperator(TwoOutputs(0.3), loss_fn, (inputs, labels))
    model = TwoOutputs(0.0)
    gauss_newton = GaussNewtonOperator(model, loss_fn, (inputs, labels)).dense()
    # J^T (nabla^2 of the cross-entropy in the logits) J from autograd, one sample at a time
    _loss, theta, unflatten = flat_loss(model, loss_fn, (inputs, labels))
    jacobian = jacrev(lambda t: functional_call(model, unflatten(t), (inputs,))["logits"])(theta)
    probabilities = torch.softmax(model(inputs)["logits"].detach(), dim=1)
    output_hessians = (
        torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]
    )
    expected = torch.einsum("nip,nij,njq->pq", jacobian, output_hessians, jacobian) / len(inputs)
    torch.testing.assert_close(gauss_newton, expected, atol=1e-12, rtol=1e-10)


def test_refused_models_keep_their_buffers() -> None:
    generator = torch.Generator().manual_seed(22)
    inputs = torch.randn(20, 4, generator=generator)
    targets = torch.randn(20, 2, generator=generator)
    batch_norm = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))
    spectral = nn.Sequential(nn.utils.spectral_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 2))
    for model in (batch_norm.train(), spectral.train()):
        before = {name: b.clone() for name, b in model.named_buffers()}
        with pytest.raises(CurvatureError, match=r"training mode|differ between two evaluations"):
            HessianOperator(model, nn.MSELoss(), (inputs, targets))
        loss = ModelLoss(model, nn.MSELoss(), (inputs, targets))
        with pytest.raises(CurvatureError, match=r"training mode|differ"):
            classify(loss, loss.theta0)
        for name, buffer in model.named_buffers():
            assert torch.equal(buffer, before[name]), name


def test_mixed_precision_with_a_weighted_loss_matches_eigh() -> None:
    model, _, (inputs, labels) = small_problem(23, loss="cross_entropy")
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    class_weights = torch.tensor([1.0, 2.0, 0.5])

    def weighted_function(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, labels, weight=class_weights)

    for loss_fn in (weighted, weighted_function):  # a module is cast; a function is not
        operator = HessianOperator(model, loss_fn, (inputs, labels))
        exact = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, (inputs, labels)))
        pairs = operator.eigenpairs(2, tol=1e-8, mixed_precision=True)
        assert pairs.converged
        torch.testing.assert_close(pairs.values, exact.flip(0)[:2], atol=1e-7, rtol=1e-7)


def test_non_finite_outputs_are_not_randomness() -> None:
    generator = torch.Generator().manual_seed(24)
    inputs = torch.randn(20, 4, generator=generator)
    targets = torch.randn(20, 2, generator=generator)

    class WithUnusedNaN(nn.Module):  # deterministic; its loss ignores the NaN output
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.linear(x)
            return out, torch.full_like(out, float("nan"))

    def first_output_mse(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor):
        return nn.functional.mse_loss(outputs[0], targets)

    model = WithUnusedNaN()
    operator = HessianOperator(model, first_output_mse, (inputs, targets))
    torch.testing.assert_close(
        operator.dense(), dense_hessian(model, first_output_mse, (inputs, targets))
    )
    overflowing = nn.Linear(4, 2)
    with torch.no_grad():
        overflowing.weight.fill_(1e308)
    with pytest.raises(CurvatureError, match="the loss is inf"):
        HessianOperator(overflowing, nn.MSELoss(), (inputs, targets))


def test_an_interrupt_wrapped_by_torch_is_not_taken_for_a_missing_forward_rule():
    # Ctrl-C inside a torch.func transform can surface as RuntimeError("KeyboardInterrupt");
    # the product's fallback to reverse-over-reverse must let it through, undecided.
    from losslab.linalg import HessianVectorProduct, dense_from_products

    calls = []

    def interrupted_once(theta: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("KeyboardInterrupt: <EMPTY MESSAGE>")
        return (theta**4).sum()

    product = HessianVectorProduct(interrupted_once)
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(KeyboardInterrupt):
        product(theta, torch.ones(2, dtype=torch.float64))
    assert product.mode is None
    expected = torch.tensor([12.0, 48.0], dtype=torch.float64)
    torch.testing.assert_close(product(theta, torch.ones(2, dtype=torch.float64)), expected)
    assert product.mode == "forward-over-reverse"

    def matvec(vector: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("KeyboardInterrupt: <EMPTY MESSAGE>")

    with pytest.raises(KeyboardInterrupt):
        dense_from_products(matvec, 3, dtype=torch.float64)
