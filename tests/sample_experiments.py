"""Small experiments for the engine, store, report and CLI tests (not collected by pytest).

They are loaded the way users load theirs, as ``FILE.py:OBJECT``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from losslab.experiments import Claim


class Squares:
    """x -> x^2 over a grid; cells listed in ``fail_on`` raise."""

    name = "squares"
    paper = "Arithmetic (test)"
    version = 1
    fail_on: tuple[int, ...] = (3,)

    def grid(self, preset: str) -> list[dict]:
        return [{"x": x} for x in range({"quick": 6, "full": 10}[preset])]

    def run(self, cell: dict) -> dict:
        x = cell["x"]
        if x in self.fail_on:
            raise ValueError(f"cell {x} fails on purpose")
        return {
            "square": x * x,
            "root": math.sqrt(x),
            "arrays": {"powers": np.array([1, x, x * x])},
        }

    def figures(self, frame) -> list[Figure]:
        figure = Figure(figsize=(3, 2))
        axes = figure.subplots()
        axes.plot(frame["x"], frame["square"], "o")
        return [figure]

    def claims(self, frame) -> list[Claim]:
        worst = float((frame["square"] - frame["x"] ** 2).abs().max())
        return [
            Claim("square equals x*x", f"max error {worst:g} over {len(frame)} cells", worst == 0),
            Claim("there are at least 100 cells", f"{len(frame)} cells", len(frame) >= 100),
        ]


class CleanSquares(Squares):
    name = "clean-squares"
    fail_on = ()


class SlowLogged:
    """Cells that sleep and append their index to the file named by $LOSSLAB_TEST_LOG."""

    name = "slow-logged"
    paper = "Sleeping (test)"
    version = 1

    def grid(self, preset: str) -> list[dict]:
        log = os.environ["LOSSLAB_TEST_LOG"]
        return [{"x": x, "log": log, "sleep": 0.3} for x in range(16)]

    def run(self, cell: dict) -> dict:
        with Path(cell["log"]).open("a") as log:
            log.write(f"{cell['x']}\n")
        time.sleep(cell["sleep"])
        return {"x_again": cell["x"]}

    def figures(self, frame) -> list[Figure]:
        return []

    def claims(self, frame) -> list[Claim]:
        return []


class WorkerKiller(CleanSquares):
    """Cell 1 kills the process that runs it, as a segfault in native code would."""

    name = "worker-killer"

    def run(self, cell: dict) -> dict:
        if cell["x"] == 1:
            os._exit(3)
        return super().run(cell)


class LateKiller(SlowLogged):
    """Like ``SlowLogged``; cell 12 kills its worker after the others had time to finish
    (their results already stored: a worker's death must not run them again)."""

    name = "late-killer"

    def run(self, cell: dict) -> dict:
        if cell["x"] == 12:
            time.sleep(2.0)
            os._exit(3)
        return super().run(cell)


class Exiter(CleanSquares):
    """Cell 2 calls ``sys.exit``, as a script's error path might."""

    name = "exiter"

    def run(self, cell: dict) -> dict:
        if cell["x"] == 2:
            sys.exit(2)
        return super().run(cell)


class BadResults(CleanSquares):
    """Cell 0 returns a list, cell 1 an object that JSON cannot hold."""

    name = "bad-results"

    def run(self, cell: dict):
        if cell["x"] == 0:
            return [1, 2]
        if cell["x"] == 1:
            return {"thing": object()}
        return super().run(cell)


class BrokenReport(CleanSquares):
    name = "broken-report"

    def figures(self, frame) -> list[Figure]:
        raise RuntimeError("cannot draw")


SQUARES = Squares()
CLEAN = CleanSquares()
SLOW = SlowLogged()
KILLER = WorkerKiller()
LATE_KILLER = LateKiller()
EXITER = Exiter()
BAD = BadResults()
BROKEN_REPORT = BrokenReport()
