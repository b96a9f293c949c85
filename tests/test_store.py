from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch

from losslab.errors import StoreError
from losslab.store import CellRecord, ExperimentRecord, ResultStore, to_json


def record(key: str, x: int, *, status: str = "done", **metrics) -> CellRecord:
    return CellRecord(
        key=key,
        experiment="exp",
        version=1,
        config={"x": x, "lr": 0.1},
        status=status,  # type: ignore[arg-type]
        metrics=metrics,
        arrays={"w": np.arange(x + 1.0)} if status == "done" else {},
        error="Traceback...\nValueError: boom" if status == "failed" else None,
        seconds=0.5,
        versions={"losslab": "0.1.0"},
        host="here",
        started_at="2026-01-01T00:00:00.000+00:00",
        finished_at=f"2026-01-01T00:00:0{x}.000+00:00",
    )


def test_roundtrip_of_records_and_arrays(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(record("a", 1, loss=0.25, history=[1.0, 0.5]))
        store.put(record("b", 2, status="failed"))
    with ResultStore(path, create=False) as store:
        (a,) = store.records(status="done")
        assert a.config == {"x": 1, "lr": 0.1}
        assert a.metrics == {"loss": 0.25, "history": [1.0, 0.5]}
        np.testing.assert_array_equal(a.arrays["w"], [0.0, 1.0])
        (b,) = store.records(status="failed")
        assert b.error.endswith("ValueError: boom")
        assert store.statuses() == {"a": "done", "b": "failed"}
        assert store.completed_keys("exp") == {"a"}
        assert store.integrity_ok()


def test_put_replaces_a_failed_cell(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record("a", 1, status="failed"))
        store.put(record("a", 1, loss=1.0))
        rows = store.records()
        assert len(rows) == 1
        assert rows[0].status == "done"


def test_frame_has_config_and_metric_columns(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record("a", 1, loss=0.25, lr=99))
        store.put(record("b", 2, loss=0.5))
        frame = store.frame("exp", arrays=True)
    assert list(frame["x"]) == [1, 2]
    assert list(frame["loss"]) == [0.25, 0.5]
    assert frame["metric_lr"].iloc[0] == 99  # a metric that collides with a config key
    np.testing.assert_array_equal(frame["arrays"].iloc[1]["w"], [0.0, 1.0, 2.0])
    assert {"key", "status", "seconds", "host"} <= set(frame.columns)


def test_empty_frame_has_base_columns(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        frame = store.frame("nothing")
    assert frame.empty
    assert "status" in frame.columns


def test_statuses_of_many_keys(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for i in range(1200):
            store.put(record(f"k{i}", i % 9))
        found = store.statuses([f"k{i}" for i in range(0, 2400, 2)])
    assert set(found) == {f"k{i}" for i in range(0, 1200, 2)}


def test_experiment_records(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.record_experiment(ExperimentRecord("exp", 1, "P", "exp"))
        store.record_experiment(ExperimentRecord("exp", 2, "P", "/x.py:E"))
        assert [r.version for r in store.experiments()] == [1, 2]


def test_missing_store_is_an_error_when_reading(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        ResultStore(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open results store"):
        ResultStore(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(StoreError, match="schema 99"):
        ResultStore(path)


def test_json_of_numpy_and_torch_values():
    text = to_json(
        {"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": np.arange(2), "d": math.nan}
    )
    assert text == '{"a": 1.5, "b": [1, 2], "c": [0, 1], "d": NaN}'
    with pytest.raises(TypeError, match="object is not JSON-serialisable"):
        to_json({"x": object()})


def test_torch_arrays_are_stored(tmp_path):
    rec = record("a", 1)
    rec = CellRecord(**{**rec.to_dict(), "arrays": {"t": torch.eye(2)}})
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(rec)
        np.testing.assert_array_equal(store.records()[0].arrays["t"], np.eye(2))


def test_a_failed_cell_never_replaces_a_done_one(tmp_path):
    # Two sweeps over one store: the later one's failure must not overwrite a result.
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record("a", 1, loss=1.0))
        store.put(record("a", 1, status="failed"))
        (row,) = store.records()
        assert (row.status, row.metrics) == ("done", {"loss": 1.0})
        store.put(record("b", 2, status="failed"))
        store.put(CellRecord(**{**record("b", 2, status="failed").to_dict(), "error": "again"}))
        assert store.records(status="failed")[0].error == "again"  # failed replaces failed


def test_rows_are_in_key_order_whatever_order_the_cells_finished_in(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record("b", 1, loss=0.1))  # finished first
        store.put(record("a", 2, loss=0.2))
        assert [r.key for r in store.records()] == ["a", "b"]
        assert list(store.frame("exp")["key"]) == ["a", "b"]


def test_one_sweep_at_a_time_holds_the_store(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as first, ResultStore(path) as second:
        with (
            first.sweep_lock(),
            pytest.raises(StoreError, match="another sweep is running into the results"),
            second.sweep_lock(),
        ):
            pass
        with second.sweep_lock():  # released when the first sweep ends
            pass


def _old_layout_store(path) -> None:
    """A store as an older losslab wrote it: no meta table, cells without ``host``."""
    with sqlite3.connect(path) as db:
        columns = ", ".join(c for c in record("a", 1).to_dict() if c != "host")
        db.execute(f"CREATE TABLE cells ({columns})")
        db.execute("INSERT INTO cells (key, status) VALUES ('a', 'done')")


@pytest.mark.parametrize("read_only", [False, True])
def test_a_store_of_an_older_layout_is_refused_and_left_unchanged(tmp_path, read_only):
    path = tmp_path / "old.sqlite"
    _old_layout_store(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="is not a losslab results store"):
        ResultStore(path, read_only=read_only)
    assert path.read_bytes() == before


def test_a_store_whose_cells_lack_a_column_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE cells DROP COLUMN host")
    with pytest.raises(StoreError, match=r"does not have losslab's layout \(table cells"):
        ResultStore(path)  # before any cell runs, not in put() after it


def test_a_schema_that_is_not_a_number_is_a_store_error(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1.1' WHERE key = 'schema'")
    with pytest.raises(StoreError, match=r"has schema 1\.1, this losslab reads 1"):
        ResultStore(path, read_only=True)


def test_reading_another_programs_database_neither_works_nor_changes_it(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    for read_only in (True, False):
        with pytest.raises(StoreError, match="is not a losslab results store"):
            ResultStore(path, read_only=read_only)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_a_read_only_store_reads_and_cannot_write(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(record("a", 1, loss=0.5))
    with ResultStore(path, read_only=True) as store:
        assert list(store.frame("exp")["loss"]) == [0.5]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.put(record("b", 2))
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="is not a losslab results store"):
        ResultStore(empty, read_only=True)
    assert empty.read_bytes() == b""


def test_a_store_in_a_read_only_folder_is_read_as_immutable(tmp_path, monkeypatch):
    # On a read-only file system, mode=ro cannot create the -shm file a WAL store's reader
    # needs ("unable to open database file"); with no pending log the file is the whole
    # store. (Root ignores chmod, so SQLite's refusal is simulated.)
    import losslab.store.sqlite as module

    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(record("a", 1, loss=0.5))
    connect = sqlite3.connect

    def no_shared_memory(target, *args, **kwargs):
        connection = connect(target, *args, **kwargs)
        if "mode=ro" in str(target):
            connection.close()
            return connect(":memory:").execute("ATTACH 'file:/nonexistent/x?mode=ro' AS x")
        return connection

    monkeypatch.setattr(module.sqlite3, "connect", no_shared_memory)
    with ResultStore(path, read_only=True) as store:
        assert list(store.frame("exp")["loss"]) == [0.5]
    # with a pending log the immutable file would miss committed cells: the error stands
    (tmp_path / "r.sqlite-wal").write_bytes(b"x")
    with pytest.raises(StoreError, match="cannot open results store"):
        ResultStore(path, read_only=True)


def test_a_folder_is_not_a_store(tmp_path):
    for read_only in (False, True):
        with pytest.raises(StoreError, match=r"is a folder; give the path of a \.sqlite file"):
            ResultStore(tmp_path, read_only=read_only)
