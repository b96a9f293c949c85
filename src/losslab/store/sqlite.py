"""The results store: one SQLite row per finished experiment cell.

The database runs in WAL mode with one transaction per finished cell, so a process
killed at any moment (SIGKILL included) leaves every committed cell intact and the
file consistent; the cells that were running are simply absent and run again next time.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from losslab.errors import StoreError

#: Where ``losslab`` keeps results unless told otherwise.
DEFAULT_STORE_PATH = Path("results") / "losslab.sqlite"

SCHEMA_VERSION = 1
Status = Literal["done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key          TEXT PRIMARY KEY,
    experiment   TEXT NOT NULL,
    version      INTEGER NOT NULL,
    config       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    metrics      TEXT,
    arrays       BLOB,
    error        TEXT,
    seconds      REAL,
    versions     TEXT,
    host         TEXT,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX IF NOT EXISTS cells_by_experiment ON cells (experiment, version);
CREATE TABLE IF NOT EXISTS experiments (
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    paper    TEXT NOT NULL,
    source   TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: Columns of :meth:`ResultStore.frame` that come from the row itself, not the cell.
BASE_COLUMNS = (
    "key",
    "experiment",
    "version",
    "status",
    "seconds",
    "host",
    "started_at",
    "finished_at",
    "error",
)


@dataclass(frozen=True)
class CellRecord:
    """One finished cell as it is stored."""

    key: str
    experiment: str
    version: int
    config: dict[str, Any]
    status: Status
    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray]
    error: str | None
    seconds: float
    versions: dict[str, str]
    host: str
    started_at: str
    finished_at: str

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


#: Columns of each table, in order: a store whose tables differ was not written by this
#: losslab and is refused when opened (rows are written and read by position).
_COLUMNS = {
    "cells": tuple(field.name for field in fields(CellRecord)),
    "experiments": ("name", "version", "paper", "source"),
    "meta": ("key", "value"),
}


@dataclass(frozen=True)
class ExperimentRecord:
    """How to find an experiment again: registered name or ``FILE.py:OBJECT``."""

    name: str
    version: int
    paper: str
    source: str


def to_json(value: Any) -> str:
    """JSON text of ``value``; NumPy and torch scalars and small arrays become lists.

    Raises :class:`TypeError` naming the offending type for anything else.
    """
    return json.dumps(value, default=_json_default, sort_keys=True, allow_nan=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist") and type(value).__module__.startswith("torch"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def to_numpy_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Named arrays (NumPy, torch tensors or nested lists of numbers) as NumPy arrays."""
    converted = {}
    for name, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"array {name!r} has dtype object; store numbers only")
        converted[str(name)] = array
    return converted


def arrays_to_npz(arrays: Mapping[str, Any]) -> bytes:
    """Pack named arrays into compressed ``.npz`` bytes (see :func:`to_numpy_arrays`)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **to_numpy_arrays(arrays))  # type: ignore[arg-type]
    return buffer.getvalue()


def npz_to_arrays(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


_PUT = (
    f"INSERT INTO cells VALUES ({', '.join('?' * len(_COLUMNS['cells']))}) "
    "ON CONFLICT (key) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS["cells"][1:])
    + " WHERE excluded.status = 'done' OR cells.status <> 'done'"
)


class ResultStore:
    """A SQLite file of experiment cells (see the module docstring).

    Opening checks that the file is a losslab store of this schema and layout (else
    :class:`StoreError`, before any work). One sweep at a time runs into a store (see
    :meth:`sweep_lock`); readers may run beside it, and with ``read_only=True`` they
    never change the file.

    Example:
        >>> store = ResultStore(":memory:")
        >>> store.completed_keys("demo")
        set()
    """

    def __init__(
        self,
        path: str | Path = DEFAULT_STORE_PATH,
        *,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        where = repr(str(path))
        if self.path is not None and self.path.is_dir():
            raise StoreError(f"results store {where} is a folder; give the path of a .sqlite file")
        if self.path is not None and not self.path.exists():
            if not create or read_only:
                raise StoreError(
                    f"no results store at {where}; run `losslab reproduce` first or pass --store"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read-only stores are opened with SQLite's mode=ro: reading never changes the file.
        target = str(path)
        if read_only and self.path is not None:
            target = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            self._open(target, where, read_only)
        except StoreError:
            if not read_only or self.path is None:
                raise
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size:
                raise
            # a read-only folder or file system: SQLite cannot create the -shm file a WAL
            # store's reader needs. With no pending log the file is the whole store: read
            # it as immutable (never with a log, whose committed cells it would miss).
            self._open(f"{self.path.resolve().as_uri()}?immutable=1", where, read_only)

    def _open(self, target: str, where: str, read_only: bool) -> None:
        try:
            self._connection = sqlite3.connect(
                target, timeout=30.0, isolation_level=None, check_same_thread=False, uri=read_only
            )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open results store {where}: {error}") from None
        try:
            self._prepare(where, read_only)
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise StoreError(f"cannot open results store {where}: {error}") from None
        except StoreError:
            self._connection.close()
            raise

    def _prepare(self, where: str, read_only: bool) -> None:
        """Create the tables in an empty database, else check that the file is a losslab
        store of this schema and layout; all before any work is done with it."""
        db = self._connection
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if not tables and not read_only:
            db.executescript(
                f"BEGIN; {_SCHEMA} INSERT OR IGNORE INTO meta VALUES ('schema', "
                f"'{SCHEMA_VERSION}'); COMMIT;"
            )
        if "meta" not in tables and (tables or read_only):
            raise StoreError(
                f"{where} is not a losslab results store (an SQLite database without "
                "losslab's meta table, or one from an older losslab); give another --store"
            )
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        value = row[0] if row else "unknown"
        try:
            schema = int(value)
        except (TypeError, ValueError):
            schema = None
        if schema != SCHEMA_VERSION:
            raise StoreError(
                f"results store {where} has schema {value}, this losslab reads "
                f"{SCHEMA_VERSION}; use a new --store path"
            )
        for table, expected in _COLUMNS.items():
            found = tuple(info[1] for info in db.execute(f"PRAGMA table_info({table})"))
            if found != expected:
                raise StoreError(
                    f"results store {where} does not have losslab's layout (table {table}: "
                    f"columns {', '.join(found) or 'missing'}); use a new --store path"
                )
        if not read_only:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------

    @contextmanager
    def sweep_lock(self) -> Iterator[None]:
        """Hold the store's sweep lock: one sweep at a time runs cells into a store file.

        The lock is an exclusive SQLite lock on the file ``STORE-lock`` beside the store,
        held until the block ends; the operating system releases it when the process
        dies, however it dies. A second sweep raises :class:`StoreError` at once rather
        than running every cell again. Readers (``results``, ``report``) take no lock.
        """
        if self.path is None:
            yield
            return
        lock_path = f"{self.path.resolve()}-lock"  # one lock whatever name the store has
        try:
            lock = sqlite3.connect(lock_path, timeout=0, isolation_level=None)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot create the lock file {lock_path!r}: {error}") from None
        try:
            try:
                lock.execute("PRAGMA journal_mode=MEMORY")
                lock.execute("BEGIN EXCLUSIVE")
            except sqlite3.DatabaseError as error:
                if "locked" not in str(error):
                    raise StoreError(
                        f"cannot lock {lock_path!r}: {error}; if no sweep is running, delete it"
                    ) from None
                raise StoreError(
                    f"another sweep is running into the results store {str(self.path)!r} "
                    f"(it holds {lock_path!r}); wait for it to finish, or give another --store"
                ) from None
            yield
        finally:
            lock.close()

    def record_experiment(self, record: ExperimentRecord) -> None:
        """Remember where an experiment comes from, so the report can load it again."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO experiments VALUES (?, ?, ?, ?)",
                (record.name, record.version, record.paper, record.source),
            )

    def put(self, record: CellRecord) -> None:
        """Store one finished cell in its own transaction, replacing an earlier row of the
        same key, except that a failed cell never replaces a done one (whichever of two
        sweeps over one store finishes last)."""
        row = (
            record.key,
            record.experiment,
            record.version,
            to_json(record.config),
            record.status,
            to_json(record.metrics),
            arrays_to_npz(record.arrays) if record.arrays else None,
            record.error,
            record.seconds,
            to_json(record.versions),
            record.host,
            record.started_at,
            record.finished_at,
        )
        with self._transaction() as db:
            db.execute(_PUT, row)

    # -- reading ---------------------------------------------------------------------

    def statuses(self, keys: list[str] | None = None) -> dict[str, Status]:
        """``key -> status`` for the given keys (all keys when ``None``)."""
        if keys is None:
            rows = self._connection.execute("SELECT key, status FROM cells").fetchall()
            return dict(rows)
        found: dict[str, Status] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, status FROM cells WHERE key IN ({marks})"
            found.update(self._connection.execute(query, chunk).fetchall())
        return found

    def completed_keys(self, experiment: str) -> set[str]:
        rows = self._connection.execute(
            "SELECT key FROM cells WHERE experiment = ? AND status = 'done'", (experiment,)
        )
        return {key for (key,) in rows}

    def experiments(self) -> list[ExperimentRecord]:
        """Every experiment that has run into this store, newest version last."""
        rows = self._connection.execute(
            "SELECT name, version, paper, source FROM experiments ORDER BY name, version"
        ).fetchall()
        return [ExperimentRecord(*row) for row in rows]

    def experiment_names(self) -> list[str]:
        rows = self._connection.execute("SELECT DISTINCT experiment FROM cells ORDER BY 1")
        return [name for (name,) in rows]

    def records(
        self,
        experiment: str | None = None,
        *,
        version: int | None = None,
        status: Status | None = None,
    ) -> list[CellRecord]:
        """Stored cells in key order (the same order however and whenever they ran),
        optionally filtered."""
        clauses, values = [], []
        for column, value in (("experiment", experiment), ("version", version), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM cells {where} ORDER BY key"
        with closing(self._connection.execute(query, values)) as cursor:
            return [_record_from_row(row) for row in cursor.fetchall()]

    def frame(
        self,
        experiment: str | None = None,
        *,
        version: int | None = None,
        status: Status | None = None,
        arrays: bool = False,
    ) -> pd.DataFrame:
        """One row per stored cell: the base columns, then config keys, then metric keys.

        A metric whose name is already a column is prefixed ``metric_``. With
        ``arrays=True`` a column ``arrays`` holds each cell's dict of NumPy arrays.
        """
        rows = []
        for record in self.records(experiment, version=version, status=status):
            row: dict[str, Any] = {column: getattr(record, column) for column in BASE_COLUMNS}
            row.update(record.config)
            for name, value in record.metrics.items():
                row[f"metric_{name}" if name in row else name] = value
            if arrays:
                row["arrays"] = record.arrays
            rows.append(row)
        columns = list(BASE_COLUMNS) + (["arrays"] if arrays else [])
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)

    def integrity_ok(self) -> bool:
        """SQLite's own ``PRAGMA integrity_check``."""
        (result,) = self._connection.execute("PRAGMA integrity_check").fetchone()
        return bool(result == "ok")


def _record_from_row(row: tuple[Any, ...]) -> CellRecord:
    (key, experiment, version, config, status, metrics, arrays, error, seconds) = row[:9]
    (versions, host, started_at, finished_at) = row[9:]
    return CellRecord(
        key=key,
        experiment=experiment,
        version=int(version),
        config=json.loads(config),
        status=status,
        metrics=json.loads(metrics) if metrics else {},
        arrays=npz_to_arrays(arrays),
        error=error,
        seconds=float(seconds) if seconds is not None else math.nan,
        versions=json.loads(versions) if versions else {},
        host=host or "",
        started_at=started_at or "",
        finished_at=finished_at or "",
    )
