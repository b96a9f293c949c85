"""Counting the fixed points of square sigmoid networks, next to the common baseline.

20 heavy-tailed sigmoid nets ``SquareNet(6, 2, init="cauchy", weight_scale=64)`` (a scale
with several fixed points; below about 32 nearly every net has one): the
certified count (interval branch-and-bound, Krawczyk), losslab's search (lifted
pre-activation starts by a batched Powell dogleg, then batched Levenberg-Marquardt in ``x``,
de-duplication by Newton basin radii), and the
common baseline (FixedPointFinder-style: minimise ``0.5 ||f(x) - x||^2`` with Adam from
the same starts, keep points with residual below 1e-6, merge points closer than 1e-4),
all in one run. Then the search against the proof on ``N_HELD_OUT`` held-out nets (seeds
200 on, no baseline; seeds 0 to 199 guided the design of the search).
Then 10,000 starts on ``SquareNet(64, 4)``, the default search on a deep heavy-tailed
``SquareNet(16, 8)``, too large for the lifted starts, and tanh nets
``SquareNet(N, 2, "tanh", "cauchy", 64)``, N = 4 and 6, ``N_TANH`` seeds each: how many
the proof completes within ``TANH_TIME_LIMIT`` seconds, and how many of those the search
counts exactly. Issue targets: exact on every net;
search under 0.5 s and certification under 5 s per net; 10,000 starts on N = 64, L = 4 in
under 2 s.
"""

from __future__ import annotations

import time

import torch

from losslab.fixedpoints.certify import certify_fixed_points
from losslab.fixedpoints.search import find_fixed_points
from losslab.nets import SquareNet

N_NETS, N, L, SCALE, STARTS, N_HELD_OUT = 20, 6, 2, 64.0, 1000, 100
N_TANH, TANH_TIME_LIMIT = 20, 20.0


def adam_baseline(net: SquareNet, starts: torch.Tensor, steps: int = 2000, lr: float = 1e-2) -> int:
    """Count by the common recipe: Adam on ``0.5 ||f(x) - x||^2`` from every start, keep
    residuals ``||f(x) - x|| < 1e-6``, merge points closer than 1e-4."""
    x = starts.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * (net(x) - x).square().sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        residual = (net(x) - x).norm(dim=1)
        kept = x[residual < 1e-6]
    unique: list[torch.Tensor] = []
    for point in kept:
        if all(float((point - other).norm()) >= 1e-4 for other in unique):
            unique.append(point)
    return len(unique)


def main() -> None:
    print(f"{N_NETS} nets SquareNet({N}, {L}, cauchy, weight_scale={SCALE}), {STARTS} starts")
    print("| net | certified | status | certify (s) | losslab | search (s) | Adam baseline "
          "| Adam (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|", flush=True)
    exact = adam_exact = 0
    times: dict[str, list[float]] = {"certify": [], "search": [], "adam": []}
    for seed in range(N_NETS):
        net = SquareNet(N, L, init="cauchy", weight_scale=SCALE, seed=seed)
        proof = certify_fixed_points(net, time_limit=60.0)
        start = time.perf_counter()
        found = find_fixed_points(net, n_starts=STARTS, seed=seed, basin_starts=0)
        search = time.perf_counter() - start
        starts = torch.rand(STARTS, N, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)  # fmt: skip
        start = time.perf_counter()
        adam = adam_baseline(net, starts)
        adam_seconds = time.perf_counter() - start
        exact += found.count == proof.count and proof.status == "certified"
        adam_exact += adam == proof.count and proof.status == "certified"
        times["certify"].append(proof.seconds)
        times["search"].append(search)
        times["adam"].append(adam_seconds)
        print(f"| {seed} | {proof.count} | {proof.status} | {proof.seconds:.2f} | {found.count} "
              f"| {search:.3f} | {adam} | {adam_seconds:.2f} |", flush=True)  # fmt: skip
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    ratio = mean["adam"] / mean["search"]
    print(
        f"\nexact counts: losslab {exact}/{N_NETS}, Adam baseline {adam_exact}/{N_NETS}; mean "
        f"seconds per net: certify {mean['certify']:.2f}, search {mean['search']:.3f} "
        f"(Adam baseline {mean['adam']:.2f}, ratio {ratio:.1f})"
    )
    wrong, certified, held_out_seconds = [], 0, []
    for seed in range(200, 200 + N_HELD_OUT):
        net = SquareNet(N, L, init="cauchy", weight_scale=SCALE, seed=seed)
        proof = certify_fixed_points(net, time_limit=60.0)
        if proof.status != "certified":
            continue
        certified += 1
        start = time.perf_counter()
        found = find_fixed_points(net, n_starts=STARTS, seed=seed, basin_starts=0)
        held_out_seconds.append(time.perf_counter() - start)
        if found.count != proof.count:
            wrong.append(f"net {seed}: {found.count} of {proof.count}")
    print(
        f"held-out nets: {certified - len(wrong)}/{certified} certified nets counted exactly by "
        f"the search ({'; '.join(wrong) or 'none wrong'}); search mean "
        f"{sum(held_out_seconds) / len(held_out_seconds):.3f} s, max "
        f"{max(held_out_seconds):.3f} s, {sum(t > 0.5 for t in held_out_seconds)} over 0.5 s",
        flush=True,
    )
    for init in ("gaussian", "cauchy"):
        net = SquareNet(64, 4, init=init, seed=0)
        find_fixed_points(net, n_starts=100, seed=0, basin_starts=0)  # warm-up
        start = time.perf_counter()
        found = find_fixed_points(net, n_starts=10_000, seed=0, basin_starts=0)
        print(f"SquareNet(64, 4, {init}): 10,000 starts in {time.perf_counter() - start:.2f} s, "
              f"{found.count} fixed point(s)", flush=True)  # fmt: skip
    net = SquareNet(16, 8, init="cauchy", weight_scale=16.0, seed=0)
    start = time.perf_counter()
    found = find_fixed_points(net, seed=0, basin_starts=0)
    seconds = time.perf_counter() - start
    print(f"SquareNet(16, 8, cauchy, weight_scale=16): default search (no lifted starts at "
          f"L N = 128) in {seconds:.2f} s, {found.count} fixed point(s)")  # fmt: skip
    tanh_nets()


def tanh_nets() -> None:
    """Tanh nets: proofs completed within the time limit, and the search against them."""
    for width in (4, 6):
        proved, exact, proof_seconds, search_seconds, missed = 0, 0, [], [], []
        for seed in range(N_TANH):
            net = SquareNet(width, 2, activation="tanh", init="cauchy", weight_scale=SCALE,
                            seed=seed)  # fmt: skip
            proof = certify_fixed_points(net, time_limit=TANH_TIME_LIMIT)
            found = find_fixed_points(net, seed=0, basin_starts=0)
            search_seconds.append(found.seconds)
            if proof.status != "certified":
                continue
            proved += 1
            proof_seconds.append(proof.seconds)
            if found.count == proof.count:
                exact += 1
            else:
                missed.append(f"seed {seed}: {found.count} of {proof.count}")
        print(
            f"SquareNet({width}, 2, tanh, cauchy, {SCALE:g}), seeds 0 to {N_TANH - 1}: "
            f"{proved}/{N_TANH} proved within {TANH_TIME_LIMIT:g} s (mean "
            f"{sum(proof_seconds) / max(proved, 1):.2f} s); the search exact on {exact}/{proved} "
            f"({'; '.join(missed) or 'none missed'}), mean "
            f"{sum(search_seconds) / N_TANH:.3f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
