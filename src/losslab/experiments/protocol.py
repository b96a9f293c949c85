"""What an experiment is: the protocol the sweep engine and the report rely on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from losslab.errors import ExperimentError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, checked against the stored measurements.

    ``statement`` says what the paper claims, ``measured`` says what was measured
    (with the numbers), and ``passed`` whether the measurement supports the claim.
    """

    statement: str
    measured: str
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"statement": self.statement, "measured": self.measured, "passed": self.passed}


@runtime_checkable
class Experiment(Protocol):
    """A grid of independent, seeded cells and what to conclude from their results.

    - ``grid(preset)`` returns the cells (JSON-serialisable dicts) for a preset,
      ``"quick"`` (about a minute on a laptop) or ``"full"`` (a cluster's worth).
    - ``run(cell)`` is pure and seeded from the cell; it returns a dict of
      JSON-serialisable metrics, with NumPy arrays allowed under the key ``"arrays"``
      (a dict of name -> array).
    - ``figures(frame)`` and ``claims(frame)`` read the stored cells (one row per done
      cell: config keys and metric keys as columns, and ``arrays``) and return
      matplotlib figures and :class:`Claim` objects.

    Bump ``version`` when ``run`` changes meaning: cells of other versions are not reused.
    """

    name: str
    paper: str
    version: int

    def grid(self, preset: str) -> list[dict[str, Any]]: ...

    def run(self, cell: dict[str, Any]) -> dict[str, Any]: ...

    def figures(self, frame: pd.DataFrame) -> list[Figure]: ...

    def claims(self, frame: pd.DataFrame) -> list[Claim]: ...


def check_experiment(candidate: object) -> Experiment:
    """Return ``candidate`` if it follows :class:`Experiment`, else say what it lacks."""
    problems = []
    for attribute, kind in (("name", str), ("paper", str), ("version", int)):
        value = getattr(candidate, attribute, None)
        if not isinstance(value, kind) or isinstance(value, bool) or value == "":
            problems.append(f"{attribute} ({kind.__name__})")
    for method in ("grid", "run", "figures", "claims"):
        if not callable(getattr(candidate, method, None)):
            problems.append(f"{method}()")
    if problems:
        raise ExperimentError(
            f"{candidate!r} is not an experiment: it lacks {', '.join(problems)}; "
            "see losslab.experiments.Experiment"
        )
    return candidate  # type: ignore[return-value]
