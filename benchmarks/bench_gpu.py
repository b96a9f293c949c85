"""The main jobs on a CUDA device next to the same jobs on the CPU, in one run.

Each case runs the same inputs on the CPU (all its threads) and on the GPU, after one
warm-up on each, and prints both times, their ratio (CPU / GPU: above 1, the GPU is
faster) and how far the two results are apart. Cases: the convex gated program of
``bench_convex`` (n = 2000, d = 20, 500 gates) and a larger one (n = 20,000, d = 50, 1000
gates); 10,000 and 100,000 starts of the fixed-point search on ``SquareNet(64, 4)``; the
proof of the count on 5 nets ``SquareNet(6, 2, cauchy, 64)``; top-5 Hessian eigenpairs of
the 26k-parameter digits MLP of ``bench_critical`` in float32 and float64; a 25 x 25 loss
slice of it; restoration of all 1797 digits by 200 iterations of ``SquareNet(64, 4)``.
Without a CUDA device it prints that and returns.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from losslab.convex import ConvexReLUProgram, activation_patterns, sample_gates, solve
from losslab.critical import slice_2d
from losslab.data import load
from losslab.fixedpoints import certify_fixed_points, digits_unit, find_fixed_points, restore
from losslab.linalg import HessianOperator
from losslab.nets import SquareNet

from .bench_critical import trained_model


def _seconds(job: Callable[[], Any]) -> tuple[Any, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = job()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _row(case: str, run: Callable[[torch.device], Any], compare: Callable[[Any, Any], str]) -> None:
    outcomes = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        run(device)  # warm-up: kernels, caches, allocator
        outcomes.append(_seconds(lambda device=device: run(device)))
    (cpu, cpu_seconds), (gpu, gpu_seconds) = outcomes
    print(f"| {case} | {cpu_seconds:.3f} | {gpu_seconds:.3f} | {cpu_seconds / gpu_seconds:.1f} "
          f"| {compare(cpu, gpu)} |", flush=True)  # fmt: skip


def _relative(a: float, b: float) -> str:
    return f"relative difference {abs(a - b) / max(abs(a), 1e-300):.1e}"


def _convex(n: int, d: int, gates: int) -> tuple[str, Callable, Callable]:
    data = load("teacher_relu", n=n, d=d, width=5, noise=0.1, seed=0)
    patterns = activation_patterns(data.X, sample_gates(d, gates, seed=0))

    def run(device: torch.device) -> Any:
        program = ConvexReLUProgram(
            data.X.to(device), data.y.to(device), patterns.to(device), 1e-3, "gated"
        )
        return solve(program, tol=1e-6, max_iter=100_000)

    def compare(cpu: Any, gpu: Any) -> str:
        state = "both converged" if cpu.converged and gpu.converged else "NOT converged"
        return f"objective {_relative(cpu.objective, gpu.objective)}, {state}"

    case = f"convex gated solve to gap 1e-6, n={n}, d={d}, {patterns.shape[1]} patterns"
    return case, run, compare


def _search(n_starts: int) -> tuple[str, Callable, Callable]:
    net = SquareNet(64, 4, init="cauchy", seed=0)

    def run(device: torch.device) -> Any:
        return find_fixed_points(copy.deepcopy(net).to(device), n_starts=n_starts, basin_starts=0)

    def compare(cpu: Any, gpu: Any) -> str:
        return f"counts {cpu.count} and {gpu.count}"

    return f"find_fixed_points, SquareNet(64, 4, cauchy), {n_starts:,} starts", run, compare


def _certify() -> tuple[str, Callable, Callable]:
    nets = [SquareNet(6, 2, init="cauchy", weight_scale=64.0, seed=seed) for seed in range(5)]

    def run(device: torch.device) -> Any:
        return [certify_fixed_points(copy.deepcopy(net).to(device)) for net in nets]

    def compare(cpu: Any, gpu: Any) -> str:
        same = sum(
            a.count == b.count and a.status == b.status for a, b in zip(cpu, gpu, strict=True)
        )
        return f"{same}/5 same certified count"

    return "certify_fixed_points, 5 nets SquareNet(6, 2, cauchy, 64)", run, compare


def _eigenpairs(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype):
    def run(device: torch.device) -> Any:
        moved = copy.deepcopy(model).to(device=device, dtype=dtype)
        data = (inputs.to(device=device, dtype=dtype), labels.to(device))
        return HessianOperator(moved, nn.CrossEntropyLoss(), data).eigenpairs(5, tol=1e-6)

    def compare(cpu: Any, gpu: Any) -> str:
        gap = float(((cpu.values - gpu.values.cpu()) / cpu.values).abs().max())
        return f"top-5 eigenvalues: max relative difference {gap:.1e}"

    name = str(dtype).removeprefix("torch.")
    return f"top-5 Hessian eigenpairs, digits MLP (26k parameters), {name}", run, compare


def _slice(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
    def run(device: torch.device) -> Any:
        moved = copy.deepcopy(model).to(device=device, dtype=torch.float64)
        data = (inputs.to(device=device, dtype=torch.float64), labels.to(device))
        return slice_2d(moved, nn.CrossEntropyLoss(), data, n_points=25)

    def compare(cpu: Any, gpu: Any) -> str:
        gap = float((cpu.losses - gpu.losses.cpu()).abs().max())
        return f"max absolute difference of the losses {gap:.1e}"

    return "slice_2d 25 x 25, digits MLP, float64", run, compare


def _restore() -> tuple[str, Callable, Callable]:
    images = digits_unit()[0].to(torch.float64)
    net = SquareNet(64, 4, seed=0).double()

    def run(device: torch.device) -> Any:
        return restore(copy.deepcopy(net).to(device), images.to(device), max_iter=200, tol=0.0)

    def compare(cpu: Any, gpu: Any) -> str:
        gap = float((cpu.images - gpu.images.cpu()).abs().max())
        return f"max absolute difference {gap:.1e}"

    return "restore 1797 digits, 200 iterations of SquareNet(64, 4)", run, compare


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: skipped (run on a machine with one)")
        return
    print(f"{torch.cuda.get_device_name()}, CPU: {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| case | CPU (s) | GPU (s) | CPU / GPU | agreement |")
    print("|---|---|---|---|---|", flush=True)
    model, inputs, labels = trained_model()
    cases = [
        _convex(2000, 20, 500),
        _convex(20_000, 50, 1000),
        _search(10_000),
        _search(100_000),
        _certify(),
        _eigenpairs(model, inputs, labels, torch.float32),
        _eigenpairs(model, inputs, labels, torch.float64),
        _slice(model, inputs, labels),
        _restore(),
    ]
    for case, run, compare in cases:
        _row(case, run, compare)
