"""Piecewise strong convexity (Milne, P4): the in-region Hessian, the curvature bound, the
threshold, the certified margin and the isolated-minimum check, against finite differences
and dense linear algebra."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, hessian

from losslab.critical.points import find_critical_point
from losslab.critical.regions import output_hessian_bounds, region_objective, strong_convexity
from losslab.errors import CurvatureError
from losslab.linalg.model_loss import ModelLoss
from losslab.nets import ReLUMLP

pytestmark = pytest.mark.usefixtures("float64_default")


def problem(depth: int, seed: int, n: int = 25, width: int = 5, bias: bool = True):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator)
    targets = torch.randn(n, 2, generator=generator)
    model = ReLUMLP(3, [width] * depth, 2, seed=seed, bias=bias)
    return model, inputs, targets


def regularised_loss(model, inputs, targets, weight_decay):
    model_loss = ModelLoss(
        model, lambda out, y: ((out - y) ** 2).sum() / (2 * len(y)), (inputs, targets)
    )

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return model_loss(theta) + weight_decay / 2 * (theta @ theta)

    return loss, model_loss.theta0


@pytest.mark.parametrize(("depth", "seed"), [(1, 0), (2, 1), (3, 2)])
def test_in_region_hessian_matches_finite_differences_of_the_gradient(depth, seed) -> None:
    model, inputs, targets = problem(depth, seed)
    certificate = strong_convexity(model, (inputs, targets), 1e-2)
    loss, theta = regularised_loss(model, inputs, targets, 1e-2)
    step = 1e-6
    assert certificate.margin > 10 * step  # the differences stay inside the region
    gradient = grad(loss)
    columns = []
    for index in range(theta.numel()):
        offset = torch.zeros_like(theta)
        offset[index] = step
        columns.append((gradient(theta + offset) - gradient(theta - offset)) / (2 * step))
    differenced = torch.stack(columns)
    # the in-region Hessian, entry by entry (a wrong matrix with the right lambda_min fails)
    in_region = hessian(region_objective(model, (inputs, targets), 1e-2).function)(theta)
    scale = float(differenced.abs().max())
    torch.testing.assert_close(in_region, differenced, atol=1e-6 * scale, rtol=0)
    smallest = torch.linalg.eigvalsh((differenced + differenced.T) / 2)[0]
    # exact (dense) or a converged Lanczos value that proved a negative eigenvalue
    assert certificate.eigenvalue_exact or certificate.hessian_min_eigenvalue < 0
    assert abs(certificate.hessian_min_eigenvalue - float(smallest)) <= 1e-6
    assert certificate.strongly_convex == (certificate.hessian_min_eigenvalue > 0)
    assert certificate.training_error == pytest.approx(
        float(((model(inputs) - targets) ** 2).sum().detach() / (2 * len(inputs))), rel=1e-12
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_output_hessian_bound_holds(depth, bias) -> None:
    """||sum_k c_k nabla^2 f_k(x)||_2 <= B(x) for unit c, at each sample, dense."""
    model, inputs, _targets = problem(depth, 10 + depth, n=8, width=6, bias=bias)
    bounds = output_hessian_bounds(model, inputs)
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]
    generator = torch.Generator().manual_seed(depth)

    def output(theta: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [s.numel() for s in shapes])
        named = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return functional_call(model, named, (x[None],))[0] @ c

    tightest = 0.0
    for sample in range(len(inputs)):
        for _ in range(3):
            direction = torch.randn(2, generator=generator)
            direction /= direction.norm()
            matrix = hessian(output)(theta, inputs[sample], direction)
            norm = float(torch.linalg.matrix_norm(matrix, ord=2))
            assert norm <= float(bounds[sample]) * (1 + 1e-12)
            tightest = max(tightest, norm / float(bounds[sample]))
    assert tightest > 0.01  # the bound is not vacuous


def dense_regularised_hessian(model, inputs, targets, weight_decay) -> torch.Tensor:
    """The Hessian of ``E + lambda/2 ||theta||^2`` by ``torch.func.hessian`` of a loss
    built here from ``functional_call`` (no library code): ReLU'' = 0 away from kinks, so
    at a point of a region this is the in-region Hessian."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, [s.numel() for s in shapes])
        named = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        residuals = functional_call(model, named, (inputs,)) - targets
        return (residuals**2).sum() / (2 * len(inputs)) + weight_decay / 2 * (flat @ flat)

    return hessian(loss)(theta)


@pytest.mark.parametrize("seed", range(6))
def test_threshold_inequality_on_random_networks(seed) -> None:
    """lambda_min >= lambda - (1/n) sum ||r_i|| B_i, and below E* = lambda^2 / (2 mean B^2)
    lambda_min >= lambda - sqrt(2E) B_bar > 0, with lambda_min from a dense Hessian built
    here. B_i comes from the library; its validity is checked against dense output
    Hessians in test_output_hessian_bound_holds."""
    depth = 1 + seed % 3
    model, inputs, targets = problem(depth, 20 + seed, n=15, width=4)
    with torch.no_grad():
        residual_norms = (model(inputs) - targets).norm(dim=1)
    bounds = output_hessian_bounds(model, inputs)
    error = float((residual_norms**2).sum() / (2 * len(inputs)))
    below = []
    for weight_decay in (1e-3, 1e-1, 10.0):
        certificate = strong_convexity(model, (inputs, targets), weight_decay,
                                       eigenvalue_method="dense")  # fmt: skip
        matrix = dense_regularised_hessian(model, inputs, targets, weight_decay)
        smallest = float(torch.linalg.eigvalsh(matrix)[0])
        lower_bound = weight_decay - float((residual_norms * bounds).mean())
        threshold = weight_decay**2 / (2 * float((bounds**2).mean()))
        assert smallest >= lower_bound - 1e-10
        assert certificate.hessian_min_eigenvalue == pytest.approx(smallest, abs=1e-10)
        assert certificate.lower_bound == pytest.approx(lower_bound, rel=1e-12, abs=1e-14)
        assert certificate.training_error == pytest.approx(error, rel=1e-12)
        assert certificate.error_threshold == pytest.approx(threshold, rel=1e-12)
        assert certificate.below_threshold == (error < threshold)
        below.append(error < threshold)
        if error < threshold:  # the theorem's implication, on the dense eigenvalue
            root_mean_square = float((bounds**2).mean().sqrt())
            assert smallest >= weight_decay - (2 * error) ** 0.5 * root_mean_square - 1e-10
            assert weight_decay - (2 * error) ** 0.5 * root_mean_square > 0
            assert certificate.strongly_convex
    assert below[0] is False  # at lambda = 1e-3 the threshold is far below E
    if depth < 3:  # shallow nets at lambda = 10 lie below it: the implication is exercised
        assert below[-1] is True


def test_margin_is_certified() -> None:
    model, inputs, targets = problem(2, 5, n=30)
    certificate = strong_convexity(model, (inputs, targets), 1e-2)
    assert 0 < certificate.margin < float("inf")
    base = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        direction = torch.randn(base.shape, generator=generator)
        moved = base + 0.999 * certificate.margin * direction / direction.norm()
        clone = ReLUMLP(3, [5, 5], 2)
        torch.nn.utils.vector_to_parameters(moved, clone.parameters())
        moved_patterns = strong_convexity(clone, (inputs, targets), 1e-2).patterns
        for before, after in zip(certificate.patterns, moved_patterns, strict=True):
            assert torch.equal(before, after)


def single_unit_problem(output_scale: float, weight_decay: float):
    """A one-unit ReLU teacher and student, started at the teacher; Newton-MR then finds
    the weight-decayed critical point next to it."""
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(40, 2, generator=generator)
    targets = output_scale * torch.relu(inputs @ torch.tensor([[1.0], [-0.5]]) + 0.3)
    model = ReLUMLP(2, [1], 1)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -0.5]]))
        model[0].bias.fill_(0.3)
        model[2].weight.fill_(output_scale)
        model[2].bias.zero_()
    loss, theta = regularised_loss(model, inputs, targets, weight_decay)
    search = find_critical_point(loss, theta)
    assert search.converged
    torch.nn.utils.vector_to_parameters(search.params, model.parameters())
    return model, (inputs, targets), loss, search.params


@pytest.mark.parametrize(
    ("output_scale", "weight_decay", "isolated"), [(1.0, 0.1, True), (10.0, 1.0, False)]
)
def test_isolated_minimum_check_against_dense_eigenvalues(
    output_scale, weight_decay, isolated
) -> None:
    model, data, loss, params = single_unit_problem(output_scale, weight_decay)
    certificate = strong_convexity(model, data, weight_decay)
    assert certificate.gradient_norm <= 1e-9
    eigenvalues = torch.linalg.eigvalsh(hessian(loss)(params))
    assert float(eigenvalues[0]) == pytest.approx(certificate.hessian_min_eigenvalue, abs=1e-9)
    assert certificate.isolated_minimum == isolated
    if isolated:
        assert certificate.margin > 1e-4
        assert float(eigenvalues[0]) > 0
        distance = certificate.gradient_norm / float(eigenvalues[0])
        assert certificate.critical_point_distance == pytest.approx(distance, rel=1e-6)
    else:  # a saddle of the regularised loss: a negative eigenvalue
        assert float(eigenvalues[0]) < 0


def test_a_critical_point_on_every_region_boundary_is_not_isolated() -> None:
    # Heavy weight decay pulls every weight to 0, where every pre-activation is 0: the
    # critical point lies on the boundary of every region. The search stops ~1e-11 from it,
    # with tiny pre-activations of definite sign (a margin of ~1e-16 > 0): that must not
    # certify an isolated minimum, since the critical point is 1e-11 away, not 1e-16.
    generator = torch.Generator().manual_seed(7)
    inputs, targets = torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator)
    model = ReLUMLP(2, [3], 1, seed=7)
    loss, theta = regularised_loss(model, inputs, targets, 2.0)
    search = find_critical_point(loss, theta)
    assert search.converged
    torch.nn.utils.vector_to_parameters(search.params, model.parameters())
    certificate = strong_convexity(model, (inputs, targets), 2.0)
    assert model[0].weight.abs().max() < 1e-8
    assert certificate.strongly_convex is True
    assert 0 < certificate.margin < certificate.critical_point_distance
    assert not certificate.isolated_minimum


def test_bad_input() -> None:
    model, inputs, targets = problem(1, 0)
    with pytest.raises(CurvatureError, match="weight_decay"):
        strong_convexity(model, (inputs, targets), 0.0)
    with pytest.raises(CurvatureError, match="NaN"):
        strong_convexity(model, (inputs * float("nan"), targets), 1e-2)
    with pytest.raises(CurvatureError, match="Sequential"):
        strong_convexity(torch.nn.Linear(3, 2), (inputs, targets), 1e-2)
    with pytest.raises(CurvatureError, match="pattern"):
        strong_convexity(
            torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 2)),
            (inputs, targets),
            1e-2,
        )
    with pytest.raises(CurvatureError, match="5 features but the model's first Linear"):
        strong_convexity(model, (torch.randn(len(inputs), 5), targets), 1e-2)
    with pytest.raises(CurvatureError, match=r"X \(n, d\) and Y"):
        strong_convexity(model, (inputs[None], targets[None]), 1e-2)


class _Doubled(torch.nn.Sequential):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(inputs)


def test_only_the_network_the_model_computes_is_analysed() -> None:
    inputs, targets = torch.randn(20, 3), torch.randn(20, 2)

    @torch.no_grad()
    def training_error(model: torch.nn.Module) -> float:  # the model's own forward pass
        return float(((model(inputs) - targets) ** 2).sum() / (2 * len(inputs)))

    torch.manual_seed(0)
    first, second = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    shared_relu = torch.nn.ReLU()
    # one ReLU instance used twice computes the plain MLP: accepted, the same certificate
    shared = torch.nn.Sequential(first, shared_relu, torch.nn.Linear(4, 4), shared_relu, second)
    separate = torch.nn.Sequential(
        shared[0], torch.nn.ReLU(), shared[2], torch.nn.ReLU(), shared[4]
    )
    certificate = strong_convexity(shared, (inputs, targets), 1e-2)
    assert certificate.depth == 2
    assert certificate.training_error == pytest.approx(training_error(shared), rel=1e-12)
    reference = strong_convexity(separate, (inputs, targets), 1e-2)
    assert certificate.hessian_min_eigenvalue == pytest.approx(
        reference.hessian_min_eigenvalue, rel=1e-12
    )
    # a subclass with its own forward computes something else
    doubled = _Doubled(first, torch.nn.ReLU(), second)
    with pytest.raises(CurvatureError, match="own forward"):
        strong_convexity(doubled, (inputs, targets), 1e-2)
    # a Linear used twice ties weights (named_children() would skip its second use)
    tied = torch.nn.Sequential(
        first, torch.nn.ReLU(), torch.nn.Linear(4, 3), torch.nn.ReLU(), first
    )
    with pytest.raises(CurvatureError, match="reuses a Linear"):
        strong_convexity(tied, (inputs, targets), 1e-2)
    # a forward hook changes the layer's output
    hooked = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    hooked[0].register_forward_hook(lambda module, args, output: 3 * output)
    with pytest.raises(CurvatureError, match="forward hook"):
        strong_convexity(hooked, (inputs, targets), 1e-2)

    # the layers it skips must compute nothing either
    class Scaling(torch.nn.Identity):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return 10 * inputs

    class Shift(torch.nn.Dropout):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return inputs + 1

    for layer in (Scaling(), Shift()):
        model = torch.nn.Sequential(first, torch.nn.ReLU(), layer, second)
        with pytest.raises(CurvatureError, match="overrides"):
            strong_convexity(model, (inputs, targets), 1e-2)


def test_batches_give_the_certificate_of_all_samples() -> None:
    model, inputs, targets = problem(2, 4)
    whole = strong_convexity(model, (inputs, targets), 1e-2)
    batches = [
        (inputs[:7], targets[:7]),
        (inputs[7:16], targets[7:16]),
        (inputs[16:], targets[16:]),
    ]
    split = strong_convexity(model, batches, 1e-2)
    assert split.loss == pytest.approx(whole.loss, rel=1e-14)
    assert split.hessian_min_eigenvalue == pytest.approx(whole.hessian_min_eigenvalue, rel=1e-10)
    assert split.margin == whole.margin
    for a, b in zip(split.patterns, whole.patterns, strict=True):
        assert torch.equal(a, b)


def test_a_zero_layer_keeps_the_bound_valid() -> None:
    """A zero last layer (a common initialisation) leaves the cross terms that perturb it:
    the bound must not collapse to zero, and no false proof of convexity may come out."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(20, 3, generator=generator)
    targets = 5 * torch.randn(20, 2, generator=generator)
    model = ReLUMLP(3, [4], 2, seed=1, bias=False)
    with torch.no_grad():
        model[2].weight.zero_()
    bounds = output_hessian_bounds(model, inputs)
    torch.testing.assert_close(bounds, inputs.norm(dim=1))  # one hidden layer: B = ||x||
    certificate = strong_convexity(model, (inputs, targets), 1e-3)
    assert certificate.hessian_min_eigenvalue >= certificate.lower_bound - 1e-12
    assert certificate.hessian_min_eigenvalue < 0
    assert not certificate.below_threshold


def test_float32_model_is_certified_in_float64() -> None:
    model, inputs, targets = problem(2, 3)
    single = ReLUMLP(3, [5, 5], 2, seed=3, dtype=torch.float32)
    single.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    data32 = (inputs.float(), targets.float())
    reference = strong_convexity(single.double(), (data32[0].double(), data32[1].double()), 1e-2)
    single.float()
    certificate = strong_convexity(single, data32, 1e-2)
    assert certificate.hessian_min_eigenvalue == pytest.approx(
        reference.hessian_min_eigenvalue, rel=1e-12
    )


def test_region_objective_is_the_loss_inside_the_region() -> None:
    from losslab.critical import region_objective

    model, inputs, targets = problem(2, 4, n=30)
    region = region_objective(model, (inputs, targets), 1e-2)
    loss, theta = regularised_loss(model, inputs, targets, 1e-2)
    margin = strong_convexity(model, (inputs, targets), 1e-2).margin
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        direction = torch.randn(theta.shape, generator=generator)
        inside = theta + 0.9 * margin * direction / direction.norm()
        assert region.contains(inside)
        assert float(region.function(inside)) == pytest.approx(float(loss(inside)), rel=1e-13)
    # far away the patterns change and the polynomial is no longer the network's loss
    far = theta + 10.0 * torch.randn(theta.shape, generator=generator)
    assert not region.contains(far)
    assert float(region.function(far)) != pytest.approx(float(loss(far)), rel=1e-6)


def test_training_with_dropout_depends_on_the_seed_only() -> None:
    from losslab.critical import classification_data, train_squared_loss

    inputs, targets = classification_data("wine", 60, seed=0)
    histories = []
    for burn in (0, 7):
        torch.rand(burn)  # move torch's global generator
        model = ReLUMLP(13, [6], 3, dropout=0.3, seed=2)
        histories.append(
            train_squared_loss(model, inputs, targets, weight_decay=1e-2, epochs=3, seed=1)
        )
    assert histories[0] == histories[1]
    model = ReLUMLP(13, [6], 3, dropout=0.3, seed=2)
    other = train_squared_loss(model, inputs, targets, weight_decay=1e-2, epochs=3, seed=2)
    assert other != histories[0]


def test_strong_convexity_above_the_dense_limit_is_proven_or_undecided() -> None:
    # Above dense_limit the smallest eigenvalue is a Lanczos Ritz value, an upper bound:
    # a negative one proves indefiniteness, a positive one proves nothing unless the
    # derived lower bound is positive too. Compared with the dense answer.
    model, inputs, targets = problem(1, 0, width=5)
    for weight_decay, expected in ((0.1, False), (1.0, None), (10.0, True)):
        estimated = strong_convexity(model, (inputs, targets), weight_decay, dense_limit=10)
        dense = strong_convexity(model, (inputs, targets), weight_decay)
        assert not estimated.eigenvalue_exact
        assert dense.eigenvalue_exact
        assert estimated.strongly_convex is expected
        assert dense.strongly_convex == (dense.hessian_min_eigenvalue > 0)
        if expected is not None:
            assert estimated.strongly_convex == dense.strongly_convex
        assert estimated.hessian_min_eigenvalue >= dense.hessian_min_eigenvalue - 1e-8
