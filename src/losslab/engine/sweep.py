"""Running an experiment's grid: skip what is stored, run the rest, store as they finish.

The driver (this process) is the only writer of the store, and one sweep at a time
runs into a store file (a second one stops at once). Each finished cell is
committed in its own transaction the moment its result arrives, so killing the driver
at any point loses at most the cells that were running; the next sweep over the same
store runs exactly the cells that are missing.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import dask
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from losslab.engine.cell import failed_record, run_cell, run_pickled_cell
from losslab.engine.keys import cell_key
from losslab.errors import EngineError, ExperimentError
from losslab.experiments.protocol import Experiment, check_experiment
from losslab.store import DEFAULT_STORE_PATH, CellRecord, ExperimentRecord, ResultStore

if TYPE_CHECKING:
    from distributed import Client

#: Environment of local Dask worker processes: one thread each, so that N workers on
#: N cores do not each start N BLAS / OpenMP threads.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: Seconds a Dask cluster may have no workers before the sweep stops (workers of a local
#: cluster are restarted by their nannies; an external cluster's may all be gone).
NO_WORKERS_TIMEOUT = 60.0
#: Seconds between looks at a sweep's unfinished cells, and between asking the scheduler
#: for its workers.
POLL_SECONDS = 0.05
WORKER_CHECK_SECONDS = 1.0

#: Dask preload module of local workers: its ``dask_setup`` makes them ignore Ctrl-C.
WORKER_PRELOAD = "losslab.engine.cell"


@dataclass(frozen=True)
class PlannedCell:
    key: str
    cell: dict[str, Any]


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep did: ``done`` and ``failed`` count cells run now; ``skipped`` counts
    cells found in the store (done, or failed and not retried), of which
    ``failed_before`` are stored as failed: the sweep is complete only when ``failed`` and
    ``failed_before`` are both 0."""

    experiment: str
    preset: str
    total: int
    done: int
    skipped: int
    failed: int
    seconds: float
    failed_keys: tuple[str, ...]
    failed_before: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_cells(experiment: Experiment, preset: str) -> list[PlannedCell]:
    """The experiment's grid for ``preset`` with a key per cell; repeated cells once."""
    grid = experiment.grid(preset)
    if not isinstance(grid, list) or not all(isinstance(cell, dict) for cell in grid):
        raise ExperimentError(f"{experiment.name}.grid({preset!r}) must return a list of dicts")
    planned: dict[str, PlannedCell] = {}
    for cell in grid:
        key = cell_key(experiment.name, experiment.version, cell)
        planned.setdefault(key, PlannedCell(key, cell))
    return list(planned.values())


def default_workers() -> int:
    """Worker processes for a local cluster: the CPU cores this process may use."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def run_sweep(
    experiment: Experiment,
    *,
    preset: str = "quick",
    store: ResultStore | str | Path = DEFAULT_STORE_PATH,
    workers: int | None = None,
    scheduler: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    source: str | None = None,
) -> SweepSummary:
    """Run every cell of ``experiment.grid(preset)`` that the store does not hold yet.

    Args:
        experiment: any object following :class:`~losslab.experiments.Experiment`.
        preset: passed to ``experiment.grid``; ``"quick"`` or ``"full"`` for the
            registered experiments.
        store: a :class:`~losslab.store.ResultStore` or the path of one.
        workers: size of the local Dask cluster (worker processes of one thread each);
            ``None`` sizes it to the machine, ``0`` runs the cells in this process.
        scheduler: address of a running Dask scheduler (``"tcp://host:8786"``) to use
            instead of a local cluster; its workers need losslab installed.
        retry_failed: run again the cells stored as failed (else they are skipped).
        progress: show a Rich progress bar (counts, failures, ETA) on stderr.
        source: how to find the experiment again (registered name or ``FILE.py:OBJECT``),
            stored so that ``losslab report`` can rebuild figures and claims.

    Returns:
        A :class:`SweepSummary`. Failed cells are stored with their traceback and do
        not stop the sweep.

    Raises:
        StoreError: another sweep is running into the same store file (see
            :meth:`~losslab.store.ResultStore.sweep_lock`).
    """
    check_experiment(experiment)
    if workers is not None and workers < 0:
        raise EngineError(f"workers must be >= 0 (0 runs in this process); got {workers}")
    if workers is not None and scheduler is not None:
        raise EngineError("give either workers (a local cluster) or scheduler, not both")
    start = time.perf_counter()
    planned = plan_cells(experiment, preset)
    owned = not isinstance(store, ResultStore)
    results = ResultStore(store) if not isinstance(store, ResultStore) else store
    try:
        with results.sweep_lock():
            described = ExperimentRecord(
                experiment.name, experiment.version, experiment.paper, source or ""
            )
            results.record_experiment(described)
            stored = results.statuses([p.key for p in planned])
            pending = [
                p
                for p in planned
                if p.key not in stored or (retry_failed and stored[p.key] == "failed")
            ]
            failed_keys: list[str] = []
            running = {p.key for p in pending}

            with _progress_bar(progress, experiment.name, len(pending)) as advance:

                def finish(record: CellRecord) -> None:
                    results.put(record)
                    if record.status == "failed":
                        failed_keys.append(record.key)
                    advance(record.status == "failed")

                if not pending:
                    pass
                elif workers == 0:
                    for p in pending:
                        finish(run_cell(experiment, p.cell, p.key))
                else:
                    _run_on_dask(experiment, pending, finish, workers, scheduler)
    finally:
        if owned:
            results.close()
    return SweepSummary(
        experiment=experiment.name,
        preset=preset,
        total=len(planned),
        done=len(pending) - len(failed_keys),
        skipped=len(planned) - len(pending),
        failed=len(failed_keys),
        seconds=time.perf_counter() - start,
        failed_keys=tuple(failed_keys),
        failed_before=sum(
            1 for p in planned if p.key not in running and stored.get(p.key) == "failed"
        ),
    )


def _run_on_dask(
    experiment: Experiment,
    pending: list[PlannedCell],
    finish: Callable[[CellRecord], None],
    workers: int | None,
    scheduler: str | None,
) -> None:
    from distributed import as_completed

    try:
        payload = cloudpickle.dumps(experiment)
    except Exception as error:
        raise EngineError(
            f"experiment {experiment.name!r} cannot be sent to Dask workers ({error}); "
            "run it in-process with workers=0 (--workers 0)"
        ) from None
    with _dask_client(workers, scheduler, len(pending)) as client:
        # The payload travels inside each task rather than scattered once: scattered
        # data held by a worker that dies is lost, and every task needing it with it.
        futures = {
            client.submit(run_pickled_cell, payload, p.cell, p.key, pure=False): p for p in pending
        }
        try:
            completed = as_completed(futures)
            while futures:
                for future in _next_finished(completed, client, len(futures)):
                    p = futures.pop(future)
                    try:
                        record = future.result()
                    except Exception:
                        record = failed_record(experiment, p.cell, p.key, traceback.format_exc())
                    # Stored: let the worker drop it. A held result would be recomputed
                    # when its worker dies, and would fill the worker's memory.
                    future.release()
                    finish(record)
        finally:
            client.cancel(list(futures))


def _next_finished(completed: Any, client: Client, n_left: int) -> list[Any]:
    """The next finished futures; an :class:`EngineError` once the cluster has had no
    workers for ``NO_WORKERS_TIMEOUT`` seconds (nothing would ever finish)."""
    without_workers_since: float | None = None
    next_check = 0.0
    while True:
        finished = completed.next_batch(block=False)
        if finished:
            return finished
        now = time.monotonic()
        if now >= next_check:  # a call to the scheduler: once a second
            next_check = now + WORKER_CHECK_SECONDS
            if client.nthreads():
                without_workers_since = None
            elif without_workers_since is None:
                without_workers_since = now
            elif now - without_workers_since > NO_WORKERS_TIMEOUT:
                raise EngineError(
                    f"the Dask cluster has had no workers for {NO_WORKERS_TIMEOUT:g} s, with "
                    f"{n_left} cell(s) still to run; the finished ones are stored: start "
                    "workers and run the same command again to finish"
                )
        time.sleep(POLL_SECONDS)


@contextmanager
def _dask_client(workers: int | None, scheduler: str | None, n_tasks: int) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise EngineError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        with client:
            yield client
        return
    n_workers = max(1, min(workers or default_workers(), n_tasks))
    # One cell per worker thread at a time: cells are long, and a cell that kills
    # its worker process then takes no queued neighbour down with it.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        try:
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: 8787 may be the user's
                silence_logs=logging.ERROR,
                env=SINGLE_THREAD_ENV,
                preload=[WORKER_PRELOAD],
            )
        except RuntimeError as error:
            reason = str(error).rstrip(".")
            raise EngineError(
                f"could not start {n_workers} local Dask worker processes ({reason}). Workers "
                "are fresh interpreters that import your main script: in a script, call "
                'run_sweep under `if __name__ == "__main__":`; or run in-process with '
                "workers=0 (--workers 0)"
            ) from None
        logger = logging.getLogger("distributed")
        level = logger.level
        try:
            with cluster, Client(cluster) as client:
                try:
                    yield client
                except KeyboardInterrupt:
                    # Shutting the cluster down mid-task logs errors that say nothing.
                    logger.setLevel(logging.CRITICAL)
                    raise
        finally:
            logger.setLevel(level)


@contextmanager
def _progress_bar(enabled: bool, name: str, total: int) -> Iterator[Callable[[bool], None]]:
    if not enabled or total == 0:
        yield lambda failed: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task(name, total=total, failed=0)
        n_failed = 0

        def advance(failed: bool) -> None:
            nonlocal n_failed
            n_failed += failed
            bar.update(task, advance=1, failed=n_failed)

        yield advance
