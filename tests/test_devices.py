"""Every public path on an accelerator agrees with the same computation on the CPU.

"dtype and device follow the inputs": each test runs one capability on CUDA tensors and
modules, checks the results live on the inputs' device, and compares them with the CPU
run of the same inputs (the independent reference here is the CPU arithmetic; the
capability itself is checked against dense linear algebra, cvxpy and brute force in the
other test files). CI has no GPU, so these tests are skipped there; run them on a GPU
machine with ``pytest tests/test_devices.py``, or name another device (``mps``; ``cpu``
to check the tests themselves) in the environment variable ``LOSSLAB_TEST_DEVICE``.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

DEVICE_NAME = os.environ.get("LOSSLAB_TEST_DEVICE", "cuda" if torch.cuda.is_available() else "")
pytestmark = pytest.mark.skipif(not DEVICE_NAME, reason="needs a CUDA device")
CUDA = torch.device(DEVICE_NAME or "cpu")


def _convex_program(device: torch.device, formulation: str):
    from losslab.convex import ConvexReLUProgram, activation_patterns, sample_gates
    from losslab.data import load

    data = load("teacher_relu", n=60, d=3, seed=0)
    X = data.X.to(torch.float64)
    gates = sample_gates(3, 40, seed=0)
    patterns = activation_patterns(X, gates)
    return ConvexReLUProgram(
        X.to(device), data.y.to(torch.float64).to(device), patterns.to(device), 0.01, formulation
    )


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_convex_solve_certify_prune_and_optimal_set_on_cuda(formulation: str) -> None:
    from losslab.convex import certify, optimal_set, prune_blocks, solve

    results = []
    for device in (torch.device("cpu"), CUDA):
        program = _convex_program(device, formulation)
        solution = solve(program, tol=1e-10)
        assert solution.blocks.device.type == device.type
        certificate = certify(solution, tol=1e-6)
        pruned = prune_blocks(program, solution.blocks)
        assert pruned.blocks.device.type == device.type
        optimum = optimal_set(program, solution.blocks)
        results.append((solution, certificate, pruned, optimum))
    (cpu, cpu_cert, cpu_pruned, cpu_set), (gpu, gpu_cert, gpu_pruned, gpu_set) = results
    assert gpu.converged
    assert cpu.converged
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-8)
    assert gpu_cert.is_global == cpu_cert.is_global
    assert gpu_cert.duality_gap == pytest.approx(cpu_cert.duality_gap, abs=1e-8)
    assert gpu_pruned.objective_after == pytest.approx(cpu_pruned.objective_after, rel=1e-8)
    assert gpu_set.fit.device.type == CUDA.type
    torch.testing.assert_close(gpu_set.fit.cpu(), cpu_set.fit, rtol=1e-6, atol=1e-8)


def test_convex_regularization_path_and_certify_network_on_cuda() -> None:
    from losslab.convex import certify_network, regularization_path
    from losslab.data import load

    data = load("teacher_relu", n=60, d=3, seed=1)
    X, y = data.X.to(torch.float64), data.y.to(torch.float64)
    cpu_path = regularization_path(X, y, n_lams=6, n_gates=40)
    gpu_path = regularization_path(X.to(CUDA), y.to(CUDA), n_lams=6, n_gates=40)
    assert gpu_path.lam_max == pytest.approx(cpu_path.lam_max, rel=1e-10)
    for cpu_point, gpu_point in zip(cpu_path.points, gpu_path.points, strict=True):
        assert gpu_point.result.objective == pytest.approx(cpu_point.result.objective, rel=1e-6)
        assert gpu_point.fit.device.type == CUDA.type

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8, bias=False), nn.ReLU(), nn.Linear(8, 1, bias=False))
    net = net.double()
    cpu_cert = certify_network(net, X, y, 0.01)
    gpu_cert = certify_network(copy.deepcopy(net).to(CUDA), X.to(CUDA), y.to(CUDA), 0.01)
    assert gpu_cert.objective == pytest.approx(cpu_cert.objective, rel=1e-10)
    assert gpu_cert.own_optimum == pytest.approx(cpu_cert.own_optimum, rel=1e-6)
    assert gpu_cert.is_stationary == cpu_cert.is_stationary


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_estimators_solve_on_the_device_and_keep_the_model_on_the_cpu(formulation: str) -> None:
    import numpy as np

    from losslab.convex import ConvexReLU, ConvexReLUClassifier
    from losslab.data import load

    data = load("teacher_relu", n=80, d=3, seed=2)
    X, y = data.X.to(torch.float64), data.y.to(torch.float64)
    params = {"lam": 0.01, "formulation": formulation, "n_gates": 40, "tol": 1e-9}
    reference = ConvexReLU(**params).fit(X.numpy(), y.numpy())
    for model in (
        ConvexReLU(**params).fit(X.to(CUDA), y.to(CUDA)),  # the device of X
        ConvexReLU(**params, device=str(CUDA)).fit(X.numpy(), y.numpy()),
    ):
        assert model.objective_ == pytest.approx(reference.objective_, rel=1e-8)
        assert model.certificate_.is_global == reference.certificate_.is_global
        assert model.solution_.blocks.device.type == "cpu"
        np.testing.assert_allclose(model.predict(X.to(CUDA)), reference.predict(X), atol=1e-6)
        assert model.prune().objective_ == pytest.approx(reference.objective_, rel=1e-8)
    iris = load("iris", standardize=True)
    classifier = ConvexReLUClassifier(**params, check_global=False)
    on_cpu = classifier.fit(iris.X.numpy(), iris.y.numpy()).score(iris.X.numpy(), iris.y.numpy())
    on_device = ConvexReLUClassifier(**params, check_global=False).fit(
        iris.X.to(CUDA), iris.y.to(CUDA)
    )
    assert on_device.score(iris.X.to(CUDA), iris.y.to(CUDA)) == pytest.approx(on_cpu, abs=0.02)


def test_fixed_points_find_certify_spectrum_and_restore_on_cuda() -> None:
    from losslab.fixedpoints import (
        certify_fixed_points,
        find_fixed_points,
        jacobian_spectrum,
        restore,
    )
    from losslab.nets import SquareNet

    net = SquareNet(4, 2, init="cauchy", seed=3).double()
    gpu_net = copy.deepcopy(net).to(CUDA)
    cpu_points = find_fixed_points(net, n_starts=300, basin_starts=200)
    gpu_points = find_fixed_points(gpu_net, n_starts=300, basin_starts=200)
    assert gpu_points.points.device.type == CUDA.type
    assert gpu_points.count == cpu_points.count
    order_cpu = torch.argsort(cpu_points.points[:, 0])
    order_gpu = torch.argsort(gpu_points.points[:, 0].cpu())
    torch.testing.assert_close(
        gpu_points.points.cpu()[order_gpu], cpu_points.points[order_cpu], rtol=0, atol=1e-10
    )
    assert gpu_points.kinds == [cpu_points.kinds[i] for i in order_cpu.argsort()[order_gpu]] or (
        sorted(gpu_points.kinds) == sorted(cpu_points.kinds)
    )

    proof = certify_fixed_points(gpu_net, time_limit=30.0)
    assert proof.status == "certified"
    assert proof.count == gpu_points.count

    spectrum = jacobian_spectrum(gpu_net, gpu_points.points)
    reference = jacobian_spectrum(net, gpu_points.points.cpu())
    torch.testing.assert_close(
        spectrum.singular_values_sq.cpu(), reference.singular_values_sq, atol=1e-10, rtol=0
    )

    corrupted = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cpu_restored = restore(net, corrupted, max_iter=300)
    gpu_restored = restore(gpu_net, corrupted.to(CUDA), max_iter=300)
    assert gpu_restored.images.device.type == CUDA.type
    torch.testing.assert_close(gpu_restored.images.cpu(), cpu_restored.images, atol=1e-10, rtol=0)


def _mlp(device: torch.device) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    inputs = torch.randn(40, 4, dtype=torch.float64, generator=generator)
    targets = torch.randn(40, 2, dtype=torch.float64, generator=generator)
    return model.to(device), (inputs.to(device), targets.to(device))


def test_curvature_operators_on_cuda() -> None:
    from losslab.linalg import GaussNewtonOperator, HessianOperator

    cpu_model, cpu_data = _mlp(torch.device("cpu"))
    gpu_model, gpu_data = copy.deepcopy(cpu_model).to(CUDA), tuple(t.to(CUDA) for t in cpu_data)
    loss_fn = nn.MSELoss()
    dense = HessianOperator(cpu_model, loss_fn, cpu_data).dense()
    exact = torch.linalg.eigvalsh(dense)
    hessian = HessianOperator(gpu_model, loss_fn, gpu_data)
    torch.testing.assert_close(hessian.dense().cpu(), dense, atol=1e-12, rtol=0)
    pairs = hessian.eigenpairs(6, which="both")  # the 3 largest and the 3 smallest
    assert pairs.values.device.type == CUDA.type
    assert pairs.vectors.device.type == CUDA.type
    expected = torch.cat([exact[:3], exact[-3:]])
    torch.testing.assert_close(
        pairs.values.sort().values.cpu(), expected.sort().values, atol=1e-8, rtol=0
    )
    trace = hessian.trace(n_matvecs=3 * dense.shape[0], seed=0)
    assert trace.value == pytest.approx(float(exact.sum()), rel=1e-8)
    density = hessian.density(n_steps=20, n_vectors=2, seed=0)
    cpu_density = HessianOperator(cpu_model, loss_fn, cpu_data).density(n_steps=20, n_vectors=2)
    assert density.curve.device.type == "cpu"  # documented: a float64 summary on the CPU
    torch.testing.assert_close(density.nodes.cpu(), cpu_density.nodes, atol=1e-8, rtol=0)
    torch.testing.assert_close(density.curve.cpu(), cpu_density.curve, atol=1e-8, rtol=1e-8)
    ggn = GaussNewtonOperator(gpu_model, loss_fn, gpu_data)
    cpu_ggn = GaussNewtonOperator(cpu_model, loss_fn, cpu_data)
    torch.testing.assert_close(ggn.dense().cpu(), cpu_ggn.dense(), atol=1e-12, rtol=0)


def test_critical_points_regions_and_slices_on_cuda() -> None:
    from losslab.critical import (
        classify,
        find_critical_point,
        interpolate,
        slice_1d,
        slice_2d,
        strong_convexity,
    )

    def double_well(theta: torch.Tensor) -> torch.Tensor:
        return ((theta**2 - 1) ** 2).sum() + 0.5 * theta[0] * theta[1]

    start = torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64)
    cpu_search = find_critical_point(double_well, start)
    gpu_search = find_critical_point(double_well, start.to(CUDA))
    assert gpu_search.params.device.type == CUDA.type
    torch.testing.assert_close(gpu_search.params.cpu(), cpu_search.params, atol=1e-10, rtol=0)
    cpu_point = classify(double_well, cpu_search.params)
    gpu_point = classify(double_well, gpu_search.params)
    assert gpu_point.kind == cpu_point.kind
    assert gpu_point.morse_index == cpu_point.morse_index

    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1)).double()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(30, 3, dtype=torch.float64, generator=generator)
    targets = torch.randn(30, 1, dtype=torch.float64, generator=generator)
    cpu_region = strong_convexity(relu, (inputs, targets), 1e-2)
    gpu_region = strong_convexity(
        copy.deepcopy(relu).to(CUDA), (inputs.to(CUDA), targets.to(CUDA)), 1e-2
    )
    assert gpu_region.hessian_min_eigenvalue == pytest.approx(
        cpu_region.hessian_min_eigenvalue, abs=1e-10
    )
    assert gpu_region.error_threshold == pytest.approx(cpu_region.error_threshold, rel=1e-12)
    assert gpu_region.margin == pytest.approx(cpu_region.margin, rel=1e-8)

    gpu_model, gpu_data = _mlp(CUDA)
    cpu_model, cpu_data = _mlp(torch.device("cpu"))
    gpu_model.load_state_dict(cpu_model.state_dict())
    loss_fn = nn.MSELoss()
    cpu_slice = slice_1d(cpu_model, loss_fn, cpu_data, n_points=7)
    gpu_slice = slice_1d(gpu_model, loss_fn, gpu_data, n_points=7)
    assert gpu_slice.losses.device.type == CUDA.type
    torch.testing.assert_close(gpu_slice.losses.cpu(), cpu_slice.losses, atol=1e-12, rtol=0)
    plane = slice_2d(gpu_model, loss_fn, gpu_data, n_points=5)
    cpu_plane = slice_2d(cpu_model, loss_fn, cpu_data, n_points=5)
    torch.testing.assert_close(plane.losses.cpu(), cpu_plane.losses, atol=1e-12, rtol=0)
    other = copy.deepcopy(gpu_model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.1)
    line = interpolate(gpu_model, other, loss_fn, gpu_data, n_points=5)
    cpu_line = interpolate(cpu_model, other.cpu(), loss_fn, cpu_data, n_points=5)
    torch.testing.assert_close(line.losses.cpu(), cpu_line.losses, atol=1e-12, rtol=0)


def test_interval_enclosures_on_cuda() -> None:
    """The rounding model of ``losslab.linalg.interval`` on the device: CUDA's float64
    ``sigmoid``/``tanh`` (libdevice) within the assumed 4 ulps of 50-digit values, and the
    rigorous matrix product (cuBLAS, any summation order) enclosing the exact rational
    product."""
    from fractions import Fraction

    import mpmath

    from losslab.linalg import Interval, matvec, sigmoid, sigmoid_derivative, tanh, tanh_derivative

    mpmath.mp.dps = 50
    generator = torch.Generator().manual_seed(1)
    xs = torch.cat(
        [
            torch.randn(400, generator=generator, dtype=torch.float64) * 5,
            (torch.rand(400, generator=generator, dtype=torch.float64) - 0.5) * 1600,
            torch.randn(100, generator=generator, dtype=torch.float64) * 1e-6,
            torch.tensor([0.0, 1e-300, -1e-300, 709.0, -709.0, -745.0, 800.0, -800.0]),
        ]
    )
    points = Interval.point(xs.to(CUDA))
    references = {
        sigmoid: lambda x: 1 / (1 + mpmath.exp(-x)),
        tanh: mpmath.tanh,
        sigmoid_derivative: lambda x: mpmath.exp(-abs(x)) / (1 + mpmath.exp(-abs(x))) ** 2,
        tanh_derivative: lambda x: mpmath.sech(x) ** 2,
    }
    for enclosure_of, exact_of in references.items():
        enclosure = enclosure_of(points)
        assert enclosure.lo.device.type == CUDA.type
        for x, low, high in zip(
            xs.tolist(), enclosure.lo.cpu().tolist(), enclosure.hi.cpu().tolist(), strict=True
        ):
            value = exact_of(mpmath.mpf(x))
            slack = abs(value) * mpmath.mpf(10) ** -45
            assert mpmath.mpf(low) - slack <= value <= mpmath.mpf(high) + slack, (enclosure_of, x)

    magnitudes = 10.0 ** torch.randint(-8, 9, (6, 300), generator=generator).to(torch.float64)
    W = torch.randn(6, 300, generator=generator, dtype=torch.float64) * magnitudes
    x = torch.randn(300, generator=generator, dtype=torch.float64)
    product = matvec(W.to(CUDA), Interval.point(x.to(CUDA)))
    for row in range(6):
        exact = sum(
            (Fraction(w) * Fraction(v) for w, v in zip(W[row].tolist(), x.tolist(), strict=True)),
            Fraction(0),
        )
        assert Fraction(float(product.lo[row])) <= exact <= Fraction(float(product.hi[row]))


def test_more_curvature_and_fixed_point_paths_on_cuda() -> None:
    """The remaining paths that build tensors of their own: power iteration, mixed-precision
    Lanczos, classification through Lanczos (above the dense limit), critical points of a
    dict of parameters, an ensemble of Jacobian spectra, the tails of trained weights,
    training, and the restoration classifier on device images."""
    from losslab.critical import classify, find_critical_point
    from losslab.fixedpoints import (
        ensemble_spectrum,
        layer_tails,
        restoration_accuracy,
        train_autoencoder,
    )
    from losslab.linalg import HessianOperator, power_iteration_eigenpairs
    from losslab.nets import SquareNet

    cpu_model, cpu_data = _mlp(torch.device("cpu"))
    gpu_model, gpu_data = copy.deepcopy(cpu_model).to(CUDA), tuple(t.to(CUDA) for t in cpu_data)
    loss_fn = nn.MSELoss()
    exact = torch.linalg.eigvalsh(HessianOperator(cpu_model, loss_fn, cpu_data).dense())
    hessian = HessianOperator(gpu_model, loss_fn, gpu_data)
    power = power_iteration_eigenpairs(hessian.matvec, hessian.dim, 2, tol=1e-10, device=CUDA)
    assert power.vectors.device.type == CUDA.type
    largest = exact.abs().sort(descending=True).values[:2]
    torch.testing.assert_close(power.values.abs().cpu(), largest, rtol=1e-7, atol=0)
    mixed = hessian.eigenpairs(2, mixed_precision=True)
    torch.testing.assert_close(mixed.values.cpu(), exact.flip(0)[:2], rtol=1e-7, atol=0)

    def loss_of(params: dict[str, torch.Tensor]) -> torch.Tensor:
        prediction = torch.func.functional_call(gpu_model, params, (gpu_data[0],))
        return loss_fn(prediction, gpu_data[1])

    params = {name: p.detach().clone() for name, p in gpu_model.named_parameters()}
    search = find_critical_point(loss_of, params, max_iter=50)
    assert all(t.device.type == CUDA.type for t in search.params.values())
    point = classify(loss_of, search.params, dense_limit=10)  # Lanczos, not dense
    dense_point = classify(loss_of, search.params)
    assert point.min_eigenvalue == pytest.approx(dense_point.min_eigenvalue, rel=1e-6, abs=1e-8)
    assert point.max_eigenvalue == pytest.approx(dense_point.max_eigenvalue, rel=1e-6)

    spectrum = ensemble_spectrum(
        lambda seed: SquareNet(8, 3, init="cauchy", seed=seed).double().to(CUDA), 3, n_points=4
    )
    reference = ensemble_spectrum(
        lambda seed: SquareNet(8, 3, init="cauchy", seed=seed).double(), 3, n_points=4
    )
    torch.testing.assert_close(
        spectrum.singular_values_sq.cpu(), reference.singular_values_sq, rtol=1e-10, atol=1e-12
    )

    images = torch.rand(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nets = [SquareNet(16, 2, seed=0).double(), SquareNet(16, 2, seed=0).double().to(CUDA)]
    results = [
        train_autoencoder(
            net, images.to(next(net.parameters()).device), epochs=2, lr=1e-2, batch_size=16, seed=0
        )
        for net in nets
    ]
    assert results[1].loss == pytest.approx(results[0].loss, rel=1e-8)
    for cpu_tail, gpu_tail in zip(layer_tails(nets[0]), layer_tails(nets[1]), strict=True):
        for key, value in cpu_tail.to_dict().items():
            assert gpu_tail.to_dict()[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
    labels = torch.arange(64) % 4
    scores = restoration_accuracy(images.to(CUDA), labels.to(CUDA), labels.to(CUDA),
                                  clean=images.to(CUDA))  # fmt: skip
    assert scores["clean"] == restoration_accuracy(images, labels, labels, clean=images)["clean"]
