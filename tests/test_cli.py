from __future__ import annotations

import re
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from losslab import __version__
from losslab.cli import main
from losslab.store import ResultStore
from tests.conftest import sample_spec


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1 if code else 0), captured.out, captured.err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, f"losslab {__version__}")


def test_info_lists_versions_and_devices(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "torch" in out
    assert "devices" in out
    assert "cpu" in out


def test_data_list_shows_every_builtin(capsys):
    code, out, _ = run(capsys, "data", "list")
    assert code == 0
    for name in ("iris", "digits", "lfw_faces", "teacher_relu"):
        assert name in out
    assert "1797" in out
    assert "625" in out


def test_data_show_builtin_with_parameters(capsys):
    code, out, _ = run(capsys, "data", "show", "teacher_relu", "-p", "n=37", "-p", "d=2")
    assert code == 0
    assert "37 samples x 2 features" in out
    assert "regression" in out


def test_data_show_file(capsys, tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 3.0], "y": [0, 1]}).to_csv(path, index=False)
    code, out, _ = run(capsys, "data", "show", path)
    assert code == 0
    assert "2 samples x 1 features" in out
    assert "0: 1, 1: 1" in out


def test_user_error_prints_one_line_and_exits_1(capsys):
    code, out, err = run(capsys, "data", "show", "nope")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: unknown dataset 'nope'")
    assert "Traceback" not in err + out


def test_debug_shows_the_traceback():
    from losslab.errors import DatasetError

    with pytest.raises(DatasetError):
        main(["--debug", "data", "show", "nope"])


@pytest.mark.parametrize(
    "command",
    [
        ["critical", "slice", "--depth", "0", "--figure"],
        ["critical", "spectrum", "--figure"],
        ["convex", "path", "iris", "--figure"],
        ["convex", "fit", "iris", "--save"],
        ["fixedpoints", "restore", "--figure"],
        ["results", "--csv"],
    ],
)
def test_an_unwritable_output_fails_before_the_work(capsys, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for target, message in ((blocker / "x.png", "cannot create its folder"), (tmp_path, "folder")):
        code, out, err = run(capsys, *command, target)
        assert code == 1
        assert message in err
        assert "internal error" not in err
        assert "Wrote" not in out


@pytest.mark.parametrize("name", ["slice.txt", "slice"])
def test_a_figure_without_an_image_extension_fails_before_the_work(capsys, tmp_path, name):
    # "slice.txt" failed in matplotlib after the training; "slice" was written as
    # slice.png while the command said "Wrote slice"
    code, out, err = run(capsys, "critical", "slice", "--depth", "0", "--figure", tmp_path / name)
    assert code == 1
    assert "give a file name ending in one of .png" in err
    assert "Wrote" not in out
    assert list(tmp_path.iterdir()) == []


def test_bad_output_folders_and_scheduler_addresses_fail_before_the_work(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    store = tmp_path / "r.sqlite"
    spec = sample_spec("CLEAN")
    for args, message in (
        (["reproduce", spec, "--workers", "0", "--out", a_file], "is a file; give a folder"),
        (["reproduce", spec, "--scheduler", "garbage"], "give the address of a running Dask"),
    ):
        code, _, err = run(capsys, *args, "--store", store, "--no-progress")
        assert code == 1
        assert message in err
        assert "internal error" not in err
    assert not store.exists()  # nothing ran
    code, _, err = run(capsys, "report", "--store", store, "--out", a_file)
    assert code == 1


def test_an_experiment_whose_figures_raise_exits_1(capsys, tmp_path):
    args = ["reproduce", sample_spec("BROKEN_REPORT"), "--store", tmp_path / "r.sqlite",
            "--out", tmp_path / "site", "--workers", "0", "--no-progress"]  # fmt: skip
    code, out, _ = run(capsys, *args)
    assert code == 1
    assert "figures() or claims() raised" in out
    assert (tmp_path / "site" / "index.html").exists()  # the report is still written


def test_bad_param_syntax_is_a_usage_error(capsys):
    code, _, err = run(capsys, "data", "show", "teacher_relu", "-p", "n37")
    assert code == 2
    assert "KEY=VALUE" in err


def test_reproduce_with_nothing_registered(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("losslab.experiments.registry.REGISTERED_MODULES", ())
    code, out, _ = run(capsys, "reproduce", "--store", tmp_path / "r.sqlite")
    assert code == 0
    assert "No experiments are registered" in out


def test_reproduce_results_report_roundtrip(capsys, tmp_path):
    store, site = tmp_path / "r.sqlite", tmp_path / "site"
    code, out, _ = run(
        capsys, "reproduce", sample_spec("CLEAN"), "--store", store, "--out", site,
        "--workers", "0", "--no-progress",
    )  # fmt: skip
    assert code == 0, out
    assert "clean-squares" in out
    assert (site / "index.html").exists()
    assert "1 / 2" in out  # claims passed

    code, out, _ = run(capsys, "results", "--store", store, "--csv", tmp_path / "cells.csv")
    assert code == 0
    assert "6 cells" in out
    exported = pd.read_csv(tmp_path / "cells.csv")
    assert sorted(exported["square"]) == [0, 1, 4, 9, 16, 25]
    np.testing.assert_allclose(sorted(exported["root"]), np.sqrt(np.arange(6)))

    code, out, _ = run(capsys, "report", "--store", store, "--out", tmp_path / "again")
    assert code == 0
    assert (tmp_path / "again" / "figures" / "clean-squares-1.png").exists()


def test_reproduce_exits_1_when_cells_fail_and_retry_reruns_them(capsys, tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["reproduce", sample_spec("SQUARES"), "--store", store, "--workers", "0", "--no-report"]
    code, out, _ = run(capsys, *args, "--no-progress")
    assert code == 1
    assert "1 cell(s) failed" in out
    assert "--retry-failed" in out
    code, out, _ = run(capsys, "results", "--store", store, "--status", "failed")
    assert "1 cells" in out
    flat = "".join(ch for ch in out if not ch.isspace() and ch not in "│┃")  # folded cells
    assert "ValueError:cell" in flat  # why it failed: the exception's own line
    # run again without --retry-failed: nothing runs, but the sweep is still incomplete
    code, out, _ = run(capsys, *args, "--no-progress")
    assert code == 1
    assert "1 cell(s) failed (1 stored as failed by an earlier run)" in out
    code, out, _ = run(capsys, *args, "--retry-failed", "--no-progress")
    assert code == 1
    with ResultStore(store) as results:
        assert len(results.records()) == 6


def test_results_of_a_missing_store(capsys, tmp_path):
    code, _, err = run(capsys, "results", "--store", tmp_path / "none.sqlite")
    assert code == 1
    assert "no results store" in err
    assert not (tmp_path / "none.sqlite").exists()


def test_report_of_a_missing_store_creates_no_folder(capsys, tmp_path):
    code, _, err = run(capsys, "report", "--store", tmp_path / "none.sqlite", "--out",
                       tmp_path / "site")  # fmt: skip
    assert code == 1
    assert "no results store" in err
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("command", ["results", "report", "reproduce"])
def test_a_folder_as_store_says_so(capsys, tmp_path, command):
    extra = {"results": [], "report": ["--out", tmp_path / "site"]}.get(
        command, [sample_spec("CLEAN"), "--workers", "0", "--out", tmp_path / "site"]
    )
    code, _, err = run(capsys, command, *extra, "--store", tmp_path)
    assert code == 1
    assert "is a folder; give the path of a .sqlite file" in err
    assert err.count("\n") == 1


def test_results_and_report_refuse_a_store_of_another_layout_without_changing_it(capsys, tmp_path):
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # an older layout: no meta table, cells lack columns
        db.execute("CREATE TABLE cells (key, experiment, version, config, status)")
        db.execute("INSERT INTO cells VALUES ('a', 'exp', 1, '{}', 'done')")
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    old_bytes = old.read_bytes()
    for path in (old, foreign):
        before = path.read_bytes()
        for command in (["results"], ["report", "--out", tmp_path / "site"]):
            code, _, err = run(capsys, *command, "--store", path)
            assert code == 1
            assert "is not a losslab results store" in err
            assert "internal error" not in err
            assert path.read_bytes() == before
    code, _, err = run(capsys, "reproduce", sample_spec("CLEAN"), "--store", old, "--workers", "0",
                       "--no-report", "--no-progress")  # fmt: skip
    assert (code, "is not a losslab results store" in err) == (1, True)
    assert old.read_bytes() == old_bytes


def test_a_second_reproduce_into_a_store_in_use_stops_with_one_line(capsys, tmp_path):
    store = tmp_path / "r.sqlite"
    with ResultStore(store) as other, other.sweep_lock():  # another sweep is running
        code, _, err = run(capsys, "reproduce", sample_spec("CLEAN"), "--store", store,
                           "--workers", "0", "--no-report", "--no-progress")  # fmt: skip
    assert code == 1
    assert err.startswith("error: another sweep is running into the results store")
    with ResultStore(store) as results:
        assert results.records() == []


def test_ctrl_c_says_how_to_go_on(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("losslab.engine.run_sweep", interrupted)
    code, _, err = run(capsys, "reproduce", sample_spec("CLEAN"), "--store", tmp_path / "r.sqlite")
    assert code == 130
    assert "interrupted: finished cells are stored; run the same command to go on" in err
    # other commands keep nothing: they must not promise to go on
    monkeypatch.setattr("losslab.convex.regularization_path", interrupted)
    code, _, err = run(capsys, "convex", "path", "teacher_relu", "--n-lams", "3")
    assert code == 130
    assert "interrupted: nothing was saved" in err
    assert "run the same command" not in err


def test_reproduce_and_report_use_the_cells_of_one_preset(capsys, tmp_path):
    store, spec = tmp_path / "r.sqlite", sample_spec("CLEAN")
    for preset in ("quick", "full", "quick"):
        code, out, _ = run(capsys, "reproduce", spec, "--preset", preset, "--store", store,
                           "--out", tmp_path / preset, "--workers", "0",
                           "--no-progress")  # fmt: skip
        assert code == 0
    assert "claims (cells of the quick grid)" in out
    assert "max error 0 over 6 cells" in (tmp_path / "quick" / "index.html").read_text()
    code, out, _ = run(capsys, "report", "--store", store, "--out", tmp_path / "every")
    assert code == 0
    assert "claims (every stored cell)" in out
    assert "max error 0 over 10 cells" in (tmp_path / "every" / "index.html").read_text()
    code, out, _ = run(capsys, "report", "--store", store, "--out", tmp_path / "q",
                       "--preset", "quick")  # fmt: skip
    assert (code, "claims (cells of the quick grid)" in out) == (0, True)
    assert "max error 0 over 6 cells" in (tmp_path / "q" / "index.html").read_text()


def test_unknown_experiment(capsys, tmp_path):
    code, _, err = run(capsys, "reproduce", "nope", "--store", tmp_path / "r.sqlite")
    assert code == 1
    assert "unknown experiment 'nope'" in err


def test_negative_workers_is_a_usage_error(capsys, tmp_path):
    code, _, _ = run(capsys, "reproduce", "--workers", "-1", "--store", tmp_path / "r.sqlite")
    assert code == 2


SMALL = ["teacher_relu", "-p", "n=12", "-p", "d=2", "-p", "seed=3"]


def test_convex_fit_save_and_certify(capsys, tmp_path):
    saved = tmp_path / "net.pt"
    code, out, _ = run(capsys, "convex", "fit", *SMALL, "--lam", "0.05", "--gates", "2000",
                       "--tol", "1e-9", "--save", saved)  # fmt: skip
    assert code == 0, out
    assert "globally optimal" in out
    assert "yes" in out
    assert saved.exists()
    code, out, _ = run(capsys, "convex", "certify", saved, *SMALL)  # the saved lam, 0.05
    assert code == 0, out
    assert "lam=0.05" in out
    assert "is_global" in out
    assert "True" in out
    code, out, _ = run(capsys, "convex", "certify", saved, *SMALL, "--lam", "0.5")
    assert code == 0, out
    assert "lam=0.5" in out
    assert "False" in out  # optimal at 0.05, not at 0.5
    junk = tmp_path / "junk.pt"
    junk.write_text("not a network")
    code, _, err = run(capsys, "convex", "certify", junk, *SMALL, "--lam", "0.05")
    assert code == 1
    assert "is not a network saved by `losslab convex fit --save`" in err
    code, _, err = run(capsys, "convex", "fit", *SMALL, "--tol", "0")
    assert code == 1
    assert "tol must be a finite number > 0" in err


def test_convex_path_prune_and_bad_data(capsys, tmp_path):
    figure = tmp_path / "path.png"
    code, out, _ = run(capsys, "convex", "path", *SMALL, "--n-lams", "5", "--gates", "30",
                       "--figure", figure)  # fmt: skip
    assert code == 0, out
    assert "lam_max" in out
    assert figure.read_bytes().startswith(b"\x89PNG")
    code, out, _ = run(capsys, "convex", "prune", *SMALL, "--lam", "0.05", "--gates", "30")
    assert code == 0, out
    assert "pruned" in out
    code, _, err = run(capsys, "convex", "prune", "iris")
    assert code == 1
    assert "3 classes" in err


def test_convex_fit_one_vs_all(capsys):
    code, out, _ = run(capsys, "convex", "fit", "iris", "--standardize", "--formulation",
                       "gated", "--gates",
                       "20", "--lam", "0.01")  # fmt: skip
    assert code == 0, out
    assert out.count("vs the rest") == 3
    for name in ("setosa", "versicolor", "virginica"):  # meta["target_names"], not codes
        assert f"class {name} vs the rest" in out
    accuracy = float(out.split("training accuracy")[1].split()[0])
    assert accuracy > 0.9


def test_convex_refuses_a_single_class_target(capsys, tmp_path):
    path = tmp_path / "oneclass.csv"
    pd.DataFrame({"a": [0.1, -1.0, 2.0, 0.5], "b": [1.0, 0.0, 3.0, -2.0],
                  "label": ["spam"] * 4}).to_csv(path, index=False)  # fmt: skip
    for command in ("fit", "prune", "path"):
        code, out, err = run(capsys, "convex", command, path, "--gates", "10")
        assert code == 1, out
        assert "every row has the same class (spam)" in err
        assert "at least 2 classes" in err
        assert "globally optimal" not in out


def test_task_regression_fits_an_integer_target(capsys, tmp_path):
    from losslab.convex import ConvexReLU

    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 2))
    counts = rng.poisson(1.0, size=12).astype(float)
    path = tmp_path / "counts.csv"
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "count": counts}).to_csv(path, index=False)
    code, out, _ = run(capsys, "data", "show", path)
    assert "task classification" in out  # at most 20 distinct integers: inferred as labels
    code, out, _ = run(capsys, "data", "show", path, "--task", "regression", "--standardize")
    assert code == 0, out
    assert "task regression" in out
    saved = tmp_path / "net.pt"
    code, out, _ = run(capsys, "convex", "fit", path, "--task", "regression", "--standardize",
                       "--lam", "0.05", "--gates", "100", "--save", saved)  # fmt: skip
    assert code == 0, out
    Xs = (X - X.mean(0)) / X.std(0)
    ys = (counts - counts.mean()) / counts.std()
    direct = ConvexReLU(lam=0.05, n_gates=100, seed=0, tol=1e-6).fit(Xs, ys)
    objective = float(out.split("│ objective")[1].split("│")[1])
    assert objective == pytest.approx(direct.objective_, rel=1e-8)
    # certify reads the target as the saved fit did: a regression, standardised
    code, out, _ = run(capsys, "convex", "certify", saved, path)
    assert code == 0, out
    assert "standardised" in out
    assert "is_stationary" in out


def test_fixedpoints_count_with_proof(capsys):
    code, out, _ = run(capsys, "fixedpoints", "count", "--N", "3", "--L", "3", "--init",
                       "cauchy", "--scale", "64", "--seed", "0", "--certify")  # fmt: skip
    assert code == 0, out
    assert "fixed points of SquareNet(N=3, L=3, cauchy" in out
    assert "proved: exactly 3 fixed point(s) (agrees with the search)" in out
    assert "attractor" in out
    assert "index check: the indices sum to 1" in out


def test_fixedpoints_count_reports_a_failed_index_check(monkeypatch, capsys):
    # with the retries off, one start (seed 29) finds 6 of this net's 9 fixed points
    import losslab.fixedpoints.search as search

    search_once = search.find_fixed_points
    monkeypatch.setattr(search, "find_fixed_points",
                        lambda net, **kw: search_once(net, index_retries=0, **kw))  # fmt: skip
    code, out, _ = run(capsys, "fixedpoints", "count", "--N", "3", "--L", "2", "--init",
                       "cauchy", "--scale", "64", "--seed", "29", "--starts", "1")  # fmt: skip
    assert code == 0, out
    assert "index check failed: the indices sum to 0, not 1" in " ".join(out.split())


def test_fixedpoints_count_bad_input(capsys):
    code, _, err = run(capsys, "fixedpoints", "count", "--N", "2", "--scale", "nan")
    assert code == 1
    assert "weight_scale must be a finite number" in err
    code, _, err = run(capsys, "fixedpoints", "count", "--certify", "--time-limit", "0")
    assert code == 1
    assert "--time-limit must be a finite number of seconds > 0" in err
    code, _, err = run(capsys, "fixedpoints", "count", "--init", "cauchy", "--scale", "1e308")
    assert code == 1
    assert "overflow" in err
    code, _, err = run(capsys, "fixedpoints", "restore", "--stored", "1500")
    assert code == 1
    assert "--stored 1500: at most 1497" in err


def test_fixedpoints_restore_writes_a_figure(capsys, tmp_path):
    figure = tmp_path / "restore.png"
    code, out, _ = run(capsys, "fixedpoints", "restore", "--L", "1", "--epochs", "300",
                       "--stored", "5", "--corruption", "salt-pepper",
                       "--figure", figure)  # fmt: skip
    assert code == 0, out
    assert "5 stored" in out
    assert "200 unseen" in out
    assert figure.stat().st_size > 0


def test_critical_spectrum_eigenpairs_match_dense(capsys, tmp_path):
    figure = tmp_path / "density.png"
    code, out, _ = run(capsys, "critical", "spectrum", "--data", "wine", "--depth", "1",
                       "--width", "4", "--epochs", "2", "--k", "2", "--figure", figure)  # fmt: skip
    assert code == 0, out
    assert "Hessian of E: ReLU MLP (1 x 4) on wine" in out
    assert "largest: converged" in out
    assert figure.stat().st_size > 0
    # the printed top eigenvalue against a dense Hessian of the same trained network
    import torch

    from losslab.critical import classification_data, squared_error, train_squared_loss
    from losslab.linalg import HessianOperator
    from losslab.nets import ReLUMLP

    inputs, targets = classification_data("wine", seed=0)
    model = ReLUMLP(13, [4], 3, seed=0)
    train_squared_loss(model, inputs, targets, weight_decay=1e-3, epochs=2, momentum=0.9)
    top = float(torch.linalg.eigvalsh(HessianOperator(model, squared_error, (inputs, targets))
                                      .dense())[-1])  # fmt: skip
    assert f"{top:.6g}" in out


def test_critical_classify_and_slice(capsys, tmp_path):
    spectrum = tmp_path / "eigenvalues.png"
    code, out, _ = run(capsys, "critical", "classify", "--epochs", "20", "--max-iter", "5",
                       "--figure", spectrum)  # fmt: skip
    assert code == 0, out
    assert "newton_mr:" in out or "levenberg_marquardt:" in out
    assert "threshold E*" in out
    assert "isolated minimum" in out
    assert spectrum.stat().st_size > 0
    for kind in ("line", "contour"):
        figure = tmp_path / f"{kind}.png"
        code, out, _ = run(capsys, "critical", "slice", "--data", "wine", "--depth", "1",
                           "--width", "4", "--epochs", "2", "--points", "5", "--kind", kind,
                           "--figure", figure)  # fmt: skip
        assert code == 0, out
        assert figure.stat().st_size > 0
        assert "E at the centre" in out
        assert "smallest E on the grid" in out


def test_critical_bad_input(capsys):
    code, _, err = run(capsys, "critical", "spectrum", "--data", "diabetes", "--epochs", "1")
    assert code == 1
    assert "classification" in err


def test_critical_spectrum_of_a_square_autoencoder(capsys):
    code, out, _ = run(capsys, "critical", "spectrum", "--model", "square", "--depth", "1",
                       "--epochs", "5", "--n-train", "50", "--k", "2")  # fmt: skip
    assert code == 0, out
    assert "SquareNet(64, 1) autoencoder on digits" in out
    assert "4160 parameters" in out  # 64 x 64 weights and 64 biases
    assert "largest: converged" in out
    # options of the MLP do not apply: an error, not silently ignored
    code, out, err = run(capsys, "critical", "spectrum", "--model", "square", "--data", "iris")
    assert code == 1
    assert "it does not use --data" in err
    assert out == ""


def test_bad_numbers_and_files_fail_in_one_line_before_the_work(capsys, tmp_path):
    import torch

    for args, message in (
        (["critical", "spectrum", "--tol", "0"], "--tol must lie in (0, 1)"),
        (["critical", "slice", "--span", "0"], "--span must be a positive number"),
    ):
        code, out, err = run(capsys, *args, "--figure", tmp_path / "f.png")
        assert code == 1
        assert message in err
        assert out == ""  # no training ran
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 1), module)
    code, _, err = run(capsys, "convex", "certify", module, *SMALL, "--lam", "0.05")
    assert code == 1
    assert err.count("\n") == 1
    assert "is not a network saved by `losslab convex fit --save`" in err
    code, _, _ = run(capsys, "convex", "fit", *SMALL, "--seed", "-1")
    assert code == 2  # out of range: a usage error, before the fit


#: Every command that computes, with the smallest options the tests above use.
DEVICE_COMMANDS = [
    ["convex", "fit", *SMALL, "--gates", "30"],
    ["convex", "prune", *SMALL, "--gates", "30"],
    ["convex", "path", *SMALL, "--n-lams", "3", "--gates", "30"],
    ["convex", "certify", "net.pt", *SMALL],
    ["fixedpoints", "count", "--N", "2", "--starts", "50"],
    ["fixedpoints", "restore", "--L", "1", "--epochs", "1", "--stored", "5"],
    ["critical", "spectrum", "--data", "wine", "--depth", "1", "--width", "4", "--epochs", "1"],
    ["critical", "classify", "--epochs", "1", "--max-iter", "1"],
    ["critical", "slice", "--data", "wine", "--depth", "1", "--width", "4", "--epochs", "1"],
]


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_bad_device_fails_in_one_line_before_the_work(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # where `critical slice` would write slice.png
    for device, message in (
        ("banana", "device must be 'cpu', 'cuda' or 'cuda:<index>'; got 'banana'"),
        ("mps", "--device 'mps': losslab computes on 'cpu' or 'cuda'"),
    ):
        code, out, err = run(capsys, *command, "--device", device)
        assert code == 1
        assert err.startswith("error: ")
        assert message in err
        assert err.count("\n") == 1
        assert "Traceback" not in err
        assert out == ""  # nothing was solved, trained or written
    assert list(tmp_path.iterdir()) == []


def _numbers(out: str) -> list[str]:
    """The numbers a command printed, less its timings (seconds vary from run to run)."""
    lines = [line for line in out.splitlines() if "seconds" not in line]
    text = re.sub(r"\d+\.\d+ s\b", "", "\n".join(lines))
    return re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?", text)


def test_device_cpu_prints_the_same_numbers_as_the_default(capsys, tmp_path):
    saved = tmp_path / "net.pt"
    for command in (
        ["convex", "fit", *SMALL, "--lam", "0.05", "--gates", "30"],
        ["fixedpoints", "count", "--N", "2", "--starts", "50"],
    ):
        code, default, _ = run(capsys, *command)
        assert code == 0, default
        code, on_cpu, _ = run(capsys, *command, "--device", "cpu")
        assert code == 0, on_cpu
        assert len(_numbers(default)) > 5
        assert _numbers(on_cpu) == _numbers(default)
    # a network fitted with --device is saved without it: certify takes its own
    code, out, _ = run(capsys, "convex", "fit", *SMALL, "--lam", "0.05", "--gates", "30",
                       "--device", "cpu", "--save", saved)  # fmt: skip
    assert code == 0, out
    assert "device" not in torch.load(saved, weights_only=True)
    code, default, _ = run(capsys, "convex", "certify", saved, *SMALL)
    assert code == 0, default
    code, on_cpu, _ = run(capsys, "convex", "certify", saved, *SMALL, "--device", "cpu")
    assert code == 0, on_cpu
    assert _numbers(on_cpu) == _numbers(default)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", [DEVICE_COMMANDS[i] for i in (0, 4, 8)],
                         ids=lambda c: " ".join(c[:2]))  # fmt: skip
def test_cuda_without_a_gpu_says_so_in_one_line(capsys, command):
    for device in ("cuda", "cuda:1"):
        code, out, err = run(capsys, *command, "--device", device)
        assert code == 1
        assert f"device {device!r}: this torch sees no CUDA device" in err
        assert err.count("\n") == 1
        assert out == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_numbers_of_the_cpu(capsys, tmp_path):
    def printed(out: str, row: str) -> float:
        return float(out.split(f"│ {row}")[1].split("│")[1])

    saved = tmp_path / "net.pt"
    fit = ["convex", "fit", *SMALL, "--lam", "0.05", "--gates", "30"]
    code, on_cpu, _ = run(capsys, *fit, "--save", saved)
    assert code == 0, on_cpu
    code, on_gpu, _ = run(capsys, *fit, "--device", "cuda")
    assert code == 0, on_gpu
    assert printed(on_gpu, "objective") == pytest.approx(printed(on_cpu, "objective"), rel=1e-6)
    for command in (
        ["convex", "certify", saved, *SMALL],
        ["convex", "path", *SMALL, "--n-lams", "3", "--gates", "30"],
        ["convex", "prune", *SMALL, "--lam", "0.05", "--gates", "30"],
        ["fixedpoints", "count", "--N", "3", "--L", "3", "--init", "cauchy", "--scale", "64",
         "--certify"],
        ["critical", "slice", "--data", "wine", "--depth", "1", "--width", "4", "--epochs",
         "2", "--points", "5", "--figure", tmp_path / "slice.png"],
    ):  # fmt: skip
        code, on_cpu, _ = run(capsys, *command)
        assert code == 0, on_cpu
        code, on_gpu, _ = run(capsys, *command, "--device", "cuda")
        assert code == 0, on_gpu
        expected = [float(n.rstrip("%")) for n in _numbers(on_cpu)]
        got = [float(n.rstrip("%")) for n in _numbers(on_gpu)]
        assert len(got) == len(expected)
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-6)
    for command in DEVICE_COMMANDS[5:8]:
        code, out, _ = run(capsys, *command, "--device", "cuda")
        assert code == 0, out
