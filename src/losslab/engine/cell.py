"""Running one cell, in the driver or on a Dask worker, and turning it into a record."""

from __future__ import annotations

import signal
import threading
import time
import traceback
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cloudpickle
import torch

from losslab.engine.environment import host_name, package_versions
from losslab.experiments.protocol import Experiment
from losslab.store import CellRecord, to_json, to_numpy_arrays


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@lru_cache(maxsize=4)
def _unpickle(payload: bytes) -> Experiment:
    # A worker unpickles an experiment once however many of its cells it runs.
    experiment: Experiment = cloudpickle.loads(payload)
    return experiment


def dask_setup(worker: object) -> None:
    """Dask preload hook of local worker processes: ignore Ctrl-C.

    Ctrl-C in a terminal interrupts the whole process group; the driver alone handles it
    (it stops the cluster and says how to go on) instead of each worker printing a
    traceback.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_pickled_cell(payload: bytes, cell: dict[str, Any], key: str) -> CellRecord:
    """Dask task: :func:`run_cell` on an experiment sent as cloudpickle bytes."""
    return run_cell(_unpickle(payload), cell, key)


def run_cell(experiment: Experiment, cell: dict[str, Any], key: str) -> CellRecord:
    """Run ``experiment.run(cell)`` and return its record, never raising.

    A cell whose ``run`` raises (``SystemExit`` too), or returns something that is not a
    dict of JSON values (plus ``"arrays"``: name -> array), becomes a ``failed`` record
    holding the traceback.

    torch runs the cell on one thread, as on a Dask worker, so that a cell gives the same
    numbers bit for bit in the driver (``workers=0``) and on a worker; the driver's
    thread count is restored afterwards.
    """
    started_at, start = _now(), time.perf_counter()
    metrics: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    error = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = experiment.run(dict(cell))
        if not isinstance(result, dict):
            raise TypeError(f"run() must return a dict of metrics; got {type(result).__name__}")
        metrics = {k: v for k, v in result.items() if k != "arrays"}
        # Fail here, with the cell's own record, rather than in the driver.
        arrays = to_numpy_arrays(result.get("arrays") or {})
        to_json(metrics)
    except (Exception, SystemExit):  # sys.exit() in run() fails its cell, not the sweep
        error = traceback.format_exc()
        metrics, arrays = {}, {}
    finally:
        torch.set_num_threads(threads)
    return CellRecord(
        key=key,
        experiment=experiment.name,
        version=experiment.version,
        config=cell,
        status="failed" if error else "done",
        metrics=metrics,
        arrays=arrays,
        error=error,
        seconds=time.perf_counter() - start,
        versions=package_versions(),
        host=host_name(),
        started_at=started_at,
        finished_at=_now(),
    )


def failed_record(experiment: Experiment, cell: dict[str, Any], key: str, error: str) -> CellRecord:
    """The record of a cell lost outside ``run`` (a worker died, a task could not be sent)."""
    now = _now()
    return CellRecord(
        key=key,
        experiment=experiment.name,
        version=experiment.version,
        config=cell,
        status="failed",
        metrics={},
        arrays={},
        error=error,
        seconds=0.0,
        versions=package_versions(),
        host=host_name(),
        started_at=now,
        finished_at=now,
    )
