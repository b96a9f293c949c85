"""The README's Python examples run as written, and print what their comments say.

The blocks run in order in one namespace (later blocks of a section use earlier ones'
names), in a scratch folder holding a copy of `examples/` and a `measurements.csv`. A
block guarded by `if __name__ == "__main__":` (it starts Dask worker processes, which
import the main script) runs as a script of its own.
"""

from __future__ import annotations

import doctest
import importlib
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def readme_python_blocks() -> list[str]:
    blocks = re.findall(r"^ *```python\n(.*?)^ *```", README.read_text(), re.S | re.M)
    return [textwrap.dedent(block) for block in blocks]


def test_the_readme_has_its_examples():
    blocks = readme_python_blocks()
    assert len(blocks) >= 9
    assert sum('if __name__ == "__main__":' in block for block in blocks) == 1


@pytest.mark.slow
def test_readme_examples_run_and_print_what_they_say(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    table["yield"] = table.sum(axis=1)
    table.to_csv(tmp_path / "measurements.csv", index=False)
    monkeypatch.chdir(tmp_path)

    namespace: dict = {}
    checked = set()
    for number, block in enumerate(readme_python_blocks()):
        if 'if __name__ == "__main__":' in block:
            script = tmp_path / f"readme_block_{number}.py"
            script.write_text(block)
            done = subprocess.run(
                [sys.executable, str(script)], capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr[-3000:]
            assert "done=8, skipped=0, failed=0" in done.stdout
            assert (tmp_path / "results" / "report").is_dir()
            continue
        exec(compile(block, f"README block {number}", "exec"), namespace)
        for marker, check in CHECKS.items():
            if marker in block:
                check(namespace)
                checked.add(marker)
    assert checked == set(CHECKS)


def _check_data(ns):
    assert ns["mine"].task == "regression"
    assert ns["mine"].X.shape == (40, 3)


def _check_convex_fit(ns):  # the solve's own duality gap, and a network of its neurons
    model = ns["model"]
    assert model.solution_.relative_gap <= 1e-6
    assert ns["net"][0].out_features == model.n_neurons_


def _check_optimal_set(ns):  # "0: the optimum is unique"
    assert ns["optimum"].dimension == 0
    assert ns["best"].objective_ == pytest.approx(ns["model"].objective_, rel=1e-9)


def _check_fixed_points(ns):  # "3, 2 saddles + 1 attractor (basin 100%)", "certified 3"
    found, proof = ns["found"], ns["proof"]
    assert (found.count, proof.status, proof.count) == (3, "certified", 3)
    assert sorted(found.kinds) == ["attractor", "saddle", "saddle"]


def _check_indices(ns):  # "[1, -1, 1] 1 True"
    assert ns["found"].index_sum == 1
    assert ns["found"].index_consistent is True


def _check_dogleg(ns):  # "100, rows +-1.4142"
    result = ns["result"]
    assert result.counts()["converged"] == 100
    assert np.allclose(np.abs(result.x.numpy()), math.sqrt(2), atol=1e-12)


def _check_hessian(ns):  # five converged Ritz pairs, largest first; SLQ weights sum to 1
    top = ns["top"]
    assert top.converged
    assert top.values.shape == (5,)
    assert (top.values[:-1] >= top.values[1:]).all()
    assert abs(float(ns["density"].weights.sum()) - 1) < 1e-8


def _check_device(ns):  # "True cpu": converged, the fitted model on the CPU
    model = ns["on_device"]
    assert model.solution_.converged
    assert model.solution_.relative_gap <= 1e-6
    assert model.solution_.blocks.device.type == "cpu"


CHECKS = {
    'load("measurements.csv"': _check_data,
    "model.to_torch()": _check_convex_fit,
    "model.optimal_set()": _check_optimal_set,
    "certify_fixed_points(net)": _check_fixed_points,
    "found.index_sum": _check_indices,
    "dogleg_batch(F, starts": _check_dogleg,
    "hessian.density(": _check_hessian,
    'ConvexReLU(lam=1e-3, formulation="gated", n_gates=500, device=device)': _check_device,
}


def modules_with_examples() -> list[str]:
    source = ROOT / "src"
    return sorted(
        ".".join(path.relative_to(source).with_suffix("").parts)
        for path in (source / "losslab").rglob("*.py")
        if ">>> " in path.read_text()
    )


@pytest.mark.parametrize("module", modules_with_examples())
def test_docstring_examples_run_and_print_what_they_say(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example may write files
    results = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0
    assert results.failed == 0
