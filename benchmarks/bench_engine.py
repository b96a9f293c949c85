"""Sweep-engine overhead and parallel speed-up, each next to a plain loop in the same run.

1. Bookkeeping: 300 trivial cells. Baseline: a Python loop calling ``run(cell)``.
   Measured: ``run_sweep(workers=0)`` (keys, store look-up, one SQLite transaction per
   cell). Reported: the extra milliseconds per cell.
2. Parallel: 16 CPU-bound cells of about 1 s each (pure Python, one core each).
   Baseline: the same plain loop. Measured: ``run_sweep`` on a local Dask cluster of 2
   worker processes, cluster start-up included. Reported: the speed-up, and the time to
   start and stop an empty 2-worker cluster, which every local sweep pays once.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from losslab.engine import run_sweep


class Spin:
    name = "bench-spin"
    paper = "benchmark"
    version = 1

    def __init__(self, n_cells: int, work: int) -> None:
        self.n_cells, self.work = n_cells, work

    def grid(self, preset: str) -> list[dict]:
        return [{"i": i, "work": self.work} for i in range(self.n_cells)]

    def run(self, cell: dict) -> dict:
        total = 0
        for k in range(cell["work"]):
            total += k * k % 7
        return {"total": total}

    def figures(self, frame) -> list:
        return []

    def claims(self, frame) -> list:
        return []


def _plain_loop(experiment: Spin) -> float:
    start = time.perf_counter()
    for cell in experiment.grid("quick"):
        experiment.run(cell)
    return time.perf_counter() - start


def _sweep(experiment: Spin, workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        summary = run_sweep(
            experiment, store=Path(folder) / "b.sqlite", workers=workers, progress=False
        )
        seconds = time.perf_counter() - start
    assert summary.done == experiment.n_cells, summary
    return seconds


def _cluster_start_stop() -> float:
    import logging

    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster),
    ):
        pass
    return time.perf_counter() - start


def _calibrate(target_seconds: float) -> int:
    probe = Spin(1, 200_000)
    start = time.perf_counter()
    probe.run(probe.grid("quick")[0])
    return int(200_000 * target_seconds / (time.perf_counter() - start))


def main() -> None:
    rows = []
    trivial = Spin(300, 10)
    base = _plain_loop(trivial)
    swept = _sweep(trivial, workers=0)
    note = f"+{1e3 * (swept - base) / 300:.2f} ms/cell"
    rows.append(("300 trivial cells, in process", base, swept, note))

    heavy = Spin(16, _calibrate(1.0))
    base = _plain_loop(heavy)
    swept = _sweep(heavy, workers=2)
    note = f"speed-up {base / swept:.2f}x; cluster start+stop {_cluster_start_stop():.2f} s"
    rows.append(("16 CPU-bound cells, 2 Dask workers", base, swept, note))

    print("| case | plain loop (s) | run_sweep (s) | ratio to plain loop | note |")
    print("|---|---|---|---|---|")
    for case, base, swept, note in rows:
        print(f"| {case} | {base:.3f} | {swept:.3f} | {swept / base:.2f} | {note} |")


if __name__ == "__main__":
    main()
