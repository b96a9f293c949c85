from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dask
import distributed  # noqa: F401  (loads its config before any dask.config.set here)
import pytest
import torch

from losslab.engine import cell_key, plan_cells, run_cell, run_sweep
from losslab.engine.cell import dask_setup
from losslab.engine.sweep import WORKER_PRELOAD
from losslab.errors import EngineError, ExperimentError, StoreError
from losslab.store import ResultStore
from tests.conftest import sample_spec

BIN = Path(sys.executable).parent


def test_in_process_sweep_stores_done_and_failed_cells(sample, tmp_path):
    loaded = sample("SQUARES")
    store = tmp_path / "r.sqlite"
    summary = run_sweep(loaded.experiment, store=store, workers=0, progress=False)
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (6, 5, 1, 0)
    with ResultStore(store) as results:
        frame = results.frame("squares")
        done = frame[frame.status == "done"]
        assert sorted(done["x"]) == [0, 1, 2, 4, 5]
        assert (done["square"] == done["x"] ** 2).all()
        (failed,) = results.records(status="failed")
        assert failed.config == {"x": 3}
        assert "ValueError: cell 3 fails on purpose" in failed.error
        assert failed.key == cell_key("squares", 1, {"x": 3}) == summary.failed_keys[0]
        assert failed.versions["losslab"]


def test_rerun_skips_stored_cells_and_retries_failed_on_request(sample, tmp_path):
    experiment = sample("SQUARES").experiment
    store = tmp_path / "r.sqlite"
    run_sweep(experiment, store=store, workers=0, progress=False)
    again = run_sweep(experiment, store=store, workers=0, progress=False)
    assert (again.done, again.failed, again.skipped) == (0, 0, 6)
    retried = run_sweep(experiment, store=store, workers=0, progress=False, retry_failed=True)
    assert (retried.done, retried.failed, retried.skipped) == (0, 1, 5)
    full = run_sweep(experiment, preset="full", store=store, workers=0, progress=False)
    assert (full.total, full.done, full.skipped) == (10, 4, 6)


def test_bad_results_become_failed_cells(sample, tmp_path):
    summary = run_sweep(
        sample("BAD").experiment, store=tmp_path / "r.sqlite", workers=0, progress=False
    )
    assert summary.failed == 2
    with ResultStore(tmp_path / "r.sqlite") as results:
        errors = {r.config["x"]: r.error for r in results.records(status="failed")}
    assert "must return a dict of metrics; got list" in errors[0]
    assert "object is not JSON-serialisable" in errors[1]


def test_repeated_cells_run_once(sample):
    experiment = sample("CLEAN").experiment

    class Twice:
        name, paper, version = "twice", "t", 1
        run, figures, claims = experiment.run, experiment.figures, experiment.claims

        def grid(self, preset):
            return [{"x": 1}, {"x": 2}, {"x": 1}]

    assert len(plan_cells(Twice(), "quick")) == 2


def test_grid_must_be_a_list_of_dicts(sample):
    class BadGrid:
        name, paper, version = "bad", "t", 1
        run = figures = claims = staticmethod(lambda *a: None)

        def grid(self, preset):
            return {"x": 1}

    with pytest.raises(ExperimentError, match="must return a list of dicts"):
        plan_cells(BadGrid(), "quick")


def test_bad_engine_arguments(sample, tmp_path):
    experiment = sample("CLEAN").experiment
    with pytest.raises(EngineError, match="workers must be >= 0"):
        run_sweep(experiment, store=tmp_path / "r.sqlite", workers=-1)
    with pytest.raises(EngineError, match="not both"):
        run_sweep(experiment, store=tmp_path / "r.sqlite", workers=2, scheduler="tcp://x:1")


@pytest.mark.slow
def test_local_cluster_sweep_matches_in_process(sample, tmp_path):
    experiment = sample("SQUARES").experiment
    summary = run_sweep(
        experiment, preset="full", store=tmp_path / "d.sqlite", workers=2, progress=False
    )
    run_sweep(experiment, preset="full", store=tmp_path / "p.sqlite", workers=0, progress=False)
    assert (summary.done, summary.failed) == (9, 1)
    with (
        ResultStore(tmp_path / "d.sqlite") as dask_store,
        ResultStore(tmp_path / "p.sqlite") as plain,
    ):
        on_dask = {r.key: (r.status, r.metrics) for r in dask_store.records()}
        in_process = {r.key: (r.status, r.metrics) for r in plain.records()}
        assert on_dask == in_process
        assert len({r.arrays["powers"].tobytes() for r in dask_store.records(status="done")}) == 9


@pytest.mark.slow
def test_a_dead_worker_fails_its_cell_and_the_sweep_goes_on(sample, tmp_path):
    # Dask retries a task whose worker died (allowed-failures times), then gives up.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        summary = run_sweep(
            sample("KILLER").experiment, store=tmp_path / "r.sqlite", workers=2, progress=False
        )
    assert (summary.done, summary.failed) == (5, 1)
    with ResultStore(tmp_path / "r.sqlite") as results:
        (failed,) = results.records(status="failed")
    assert failed.config == {"x": 1}
    assert "KilledWorker" in failed.error


@pytest.mark.slow
def test_a_dead_worker_runs_no_stored_cell_again(sample, tmp_path, monkeypatch):
    # Results held by a worker that dies are recomputed by Dask unless released once stored.
    log = tmp_path / "runs.log"
    monkeypatch.setenv("LOSSLAB_TEST_LOG", str(log))
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        summary = run_sweep(
            sample("LATE_KILLER").experiment, store=tmp_path / "r.sqlite", workers=2,
            progress=False,
        )  # fmt: skip
    assert (summary.done, summary.failed) == (15, 1)
    runs = [int(line) for line in log.read_text().split()]
    assert sorted(runs) == [x for x in range(16) if x != 12]  # each exactly once


def test_sys_exit_in_run_fails_its_cell_not_the_sweep(sample, tmp_path):
    summary = run_sweep(
        sample("EXITER").experiment, store=tmp_path / "r.sqlite", workers=0, progress=False
    )
    assert (summary.done, summary.failed) == (5, 1)
    with ResultStore(tmp_path / "r.sqlite") as results:
        (failed,) = results.records(status="failed")
    assert failed.config == {"x": 2}
    assert "SystemExit: 2" in failed.error


@pytest.mark.slow
def test_a_cluster_without_workers_stops_with_a_clear_error(sample, tmp_path, monkeypatch):
    from distributed import LocalCluster

    from losslab.engine import sweep

    monkeypatch.setattr(sweep, "NO_WORKERS_TIMEOUT", 1.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        started = time.monotonic()
        with pytest.raises(EngineError, match="no workers for 1 s, with 10 cell"):
            run_sweep(sample("SQUARES").experiment, preset="full", store=tmp_path / "r.sqlite",
                      scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
        assert time.monotonic() - started < 30
    with ResultStore(tmp_path / "r.sqlite") as results:
        assert results.records() == []


@pytest.mark.slow
def test_an_experiment_file_imports_modules_beside_it_also_on_workers(tmp_path):
    from losslab.experiments import load_experiment

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "beside_helpers_7f3a.py").write_text("def cube(x):\n    return x ** 3\n")
    (folder / "cubes.py").write_text(
        "from beside_helpers_7f3a import cube\n"
        "from losslab.experiments import Claim\n\n\n"
        "class Cubes:\n"
        "    name, paper, version = 'cubes', 'test', 1\n\n"
        "    def grid(self, preset):\n        return [{'x': x} for x in range(4)]\n\n"
        "    def run(self, cell):\n        return {'cube': cube(cell['x'])}\n\n"
        "    def figures(self, frame):\n        return []\n\n"
        "    def claims(self, frame):\n        return [Claim('ok', 'ok', True)]\n\n\n"
        "EXPERIMENT = Cubes()\n"
    )
    experiment = load_experiment(f"{folder / 'cubes.py'}:EXPERIMENT").experiment
    summary = run_sweep(experiment, store=tmp_path / "r.sqlite", workers=2, progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    with ResultStore(tmp_path / "r.sqlite") as results:
        assert sorted(results.frame("cubes")["cube"]) == [0, 1, 8, 27]


@pytest.mark.slow
def test_sweep_on_a_real_scheduler_and_two_workers(sample, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    common = ["--no-dashboard"]
    scheduler = subprocess.Popen(
        [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--scheduler-file", scheduler_file, *common],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = subprocess.Popen(
        [BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nworkers", "2",
         "--nthreads", "1", "--host", "127.0.0.1", *common],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        address = _wait_for_scheduler(scheduler_file)
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            n_workers = len(client.scheduler_info()["workers"])
        summary = run_sweep(
            sample("SQUARES").experiment,
            preset="full",
            store=tmp_path / "r.sqlite",
            scheduler=address,
            progress=False,
        )
        assert n_workers == 2
        assert (summary.done, summary.failed) == (9, 1)
        with ResultStore(tmp_path / "r.sqlite") as results:
            assert sorted(results.frame("squares", status="done")["square"]) == [
                x * x for x in range(10) if x != 3
            ]
    finally:
        for process in (workers, scheduler):
            process.terminate()
        for process in (workers, scheduler):
            process.wait(timeout=30)


def _wait_for_scheduler(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())["address"]
            except (json.JSONDecodeError, KeyError):
                pass
        time.sleep(0.1)
    raise TimeoutError("the dask scheduler did not start")


def _count_done(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT count(*) FROM cells WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigkill_mid_sweep_then_rerun_finishes_exactly_the_missing_cells(workers, sample, tmp_path):
    store, log = tmp_path / "r.sqlite", tmp_path / "runs.log"
    env = {**os.environ, "LOSSLAB_TEST_LOG": str(log)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "losslab", "reproduce", sample_spec("SLOW"), "--store", store,
         "--workers", workers, "--no-report", "--no-progress"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _count_done(store) < 4 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its worker processes, at once
    driver.wait(timeout=30)

    with ResultStore(store) as results:
        assert results.integrity_ok()
        stored_before = set(results.completed_keys("slow-logged"))
    assert 4 <= len(stored_before) < 16
    runs_before = len(log.read_text().split())

    os.environ["LOSSLAB_TEST_LOG"] = str(log)
    try:
        summary = run_sweep(sample("SLOW").experiment, store=store, workers=0, progress=False)
    finally:
        del os.environ["LOSSLAB_TEST_LOG"]
    rerun = [int(x) for x in log.read_text().split()[runs_before:]]
    experiment = sample("SLOW").experiment
    rerun_keys = {
        cell_key("slow-logged", 1, {"x": x, "log": str(log), "sleep": 0.3}) for x in rerun
    }
    assert len(rerun) == len(set(rerun)) == 16 - len(stored_before)
    assert rerun_keys.isdisjoint(stored_before)
    assert (summary.skipped, summary.done, summary.failed) == (len(stored_before), len(rerun), 0)
    with ResultStore(store) as results:
        assert len(results.completed_keys(experiment.name)) == 16
        assert results.integrity_ok()


@pytest.mark.slow
def test_an_unguarded_script_gets_a_clear_error_not_a_dask_traceback(sample, tmp_path):
    # Dask's spawned workers import the main script: unguarded, it would start a cluster
    # of its own in each of them and the workers die while bootstrapping.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from losslab.engine import run_sweep\n"
        "from tests.conftest import sample_spec\n"
        "from losslab.experiments import load_experiment\n"
        "run_sweep(load_experiment(sample_spec('CLEAN')).experiment, workers=2, progress=False,\n"
        f"          store={str(tmp_path / 'r.sqlite')!r})\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "EngineError: could not start 2 local Dask worker processes" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr


class _Threads:
    """Records the torch threads its cells run on, and a sum whose rounding depends on
    how a multi-threaded reduction splits it."""

    name, paper, version = "threads", "t", 1

    def grid(self, preset):
        return [{"seed": 0}]

    def run(self, cell):
        values = torch.linspace(0, 1, 2_000_003, dtype=torch.float32) ** 2
        return {"threads": torch.get_num_threads(), "sum": float(values.sum())}

    def figures(self, frame):
        return []

    def claims(self, frame):
        return []


def test_a_cell_runs_on_one_torch_thread_in_the_driver_as_on_a_worker(tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the driver's threads, as with --workers 0
    try:
        in_driver = run_cell(_Threads(), {"seed": 0}, "k")
        assert torch.get_num_threads() == 2  # restored
        run_sweep(_Threads(), store=tmp_path / "r.sqlite", workers=0, progress=False)
        torch.set_num_threads(1)  # a Dask worker's (threads_per_worker=1)
        on_worker = run_cell(_Threads(), {"seed": 0}, "k")
    finally:
        torch.set_num_threads(previous)
    assert in_driver.metrics == on_worker.metrics
    assert in_driver.metrics["threads"] == 1
    with ResultStore(tmp_path / "r.sqlite") as results:
        assert results.records()[0].metrics == on_worker.metrics


def test_local_workers_ignore_ctrl_c_so_only_the_driver_handles_it():
    previous = signal.getsignal(signal.SIGINT)
    try:
        dask_setup(None)  # the preload hook of local workers
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert dask_setup.__module__ == WORKER_PRELOAD


def _slow_sweep_running(store, log, *, cells: int, workers: int, **popen) -> subprocess.Popen:
    """``losslab reproduce`` of the SLOW sample in a subprocess, once ``cells`` are stored."""
    process = subprocess.Popen(
        [sys.executable, "-m", "losslab", "reproduce", sample_spec("SLOW"), "--store", store,
         "--workers", str(workers), "--no-report", "--no-progress"],
        env={**os.environ, "LOSSLAB_TEST_LOG": str(log)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _count_done(store) < cells and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None
    return process


@pytest.mark.slow
def test_a_second_sweep_into_the_same_store_stops_at_once(sample, tmp_path):
    store, log = tmp_path / "r.sqlite", tmp_path / "runs.log"
    first = _slow_sweep_running(store, log, cells=1, workers=0)
    try:
        os.environ["LOSSLAB_TEST_LOG"] = str(log)
        try:
            with pytest.raises(StoreError, match="another sweep is running"):
                run_sweep(sample("SLOW").experiment, store=store, workers=0, progress=False)
        finally:
            del os.environ["LOSSLAB_TEST_LOG"]
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    runs = log.read_text().split()
    assert sorted(map(int, runs)) == list(range(16))  # every cell ran once, by the first


@pytest.mark.slow
def test_ctrl_c_with_workers_prints_how_to_go_on_and_no_worker_tracebacks(sample, tmp_path):
    store, log = tmp_path / "r.sqlite", tmp_path / "runs.log"
    driver = _slow_sweep_running(store, log, cells=2, workers=2, start_new_session=True)
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130
    assert "interrupted: finished cells are stored; run the same command to go on" in err
    assert "KeyboardInterrupt" not in err
