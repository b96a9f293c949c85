"""The static HTML report: per experiment its paper, figures, claims, counts and timing.

The site is one ``index.html`` with its PNG figures beside it in ``figures/`` and a
machine-readable ``claims.json``; it needs no network and no JavaScript.
"""

from __future__ import annotations

import html
import json
import re
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from losslab.engine import plan_cells
from losslab.engine.environment import machine_info
from losslab.errors import LosslabError
from losslab.experiments import Claim, Experiment, load_experiment
from losslab.store import ExperimentRecord, ResultStore


@dataclass
class ExperimentSection:
    """What the report shows of one experiment."""

    name: str
    paper: str
    version: int
    source: str
    #: The preset whose grid the figures, claims and counts cover (None: every stored cell).
    preset: str | None = None
    #: Cells in that preset's grid (0 without a preset).
    grid_cells: int = 0
    done: int = 0
    failed: int = 0
    cell_seconds: float = 0.0
    wall_seconds: float = 0.0
    hosts: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    versions: list[dict[str, str]] = field(default_factory=list)

    @property
    def claims_passed(self) -> int:
        return sum(claim.passed for claim in self.claims)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    """The written site: ``index`` is the path of ``index.html``."""

    index: Path
    sections: list[ExperimentSection]

    def to_dict(self) -> dict[str, Any]:
        return {"index": str(self.index), "sections": [s.to_dict() for s in self.sections]}


def write_report(
    store: ResultStore,
    out_dir: str | Path,
    *,
    experiments: dict[str, Experiment] | None = None,
    preset: str | None = None,
) -> Report:
    """Write the report of every experiment in ``store`` to ``out_dir``.

    Figures and claims come from the experiment objects: those given in
    ``experiments`` (by name), else each one is loaded again from the source stored
    with its results. An experiment that cannot be loaded, or whose ``figures`` or
    ``claims`` raise, still gets its counts and timing, and the problem is shown.

    With ``preset``, each experiment's figures, claims and counts cover the cells of
    ``experiment.grid(preset)`` only (with ``experiments`` given, as ``reproduce`` does,
    only theirs: the store's other experiments show every stored cell); without, every
    stored cell of its version, whatever preset ran it. Each section says which. Rows
    reach ``figures`` and ``claims`` in key order (the same whenever and however the cells
    ran).
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    given = experiments or {}
    # reproduce gives the experiments it ran: the preset is theirs, the others' cells all show
    sections = [
        _section(store, record, given.get(record.name), out,
                 preset if not given or record.name in given else None)
        for record in _latest(store)
    ]  # fmt: skip
    index = out / "index.html"
    index.write_text(_render(sections), encoding="utf-8")
    claims = {s.name: [c.to_dict() for c in s.claims] for s in sections}
    (out / "claims.json").write_text(json.dumps(claims, indent=2), encoding="utf-8")
    return Report(index=index, sections=sections)


def _latest(store: ResultStore) -> list[ExperimentRecord]:
    """The newest recorded version of each experiment, plus any with cells but no record."""
    latest = {record.name: record for record in store.experiments()}
    for name in store.experiment_names():
        if name not in latest:
            versions = store.frame(name)["version"]
            latest[name] = ExperimentRecord(name, int(versions.max()), "", "")
    return [latest[name] for name in sorted(latest)]


def _section(
    store: ResultStore,
    record: ExperimentRecord,
    experiment: Experiment | None,
    out: Path,
    preset: str | None,
) -> ExperimentSection:
    section = ExperimentSection(record.name, record.paper, record.version, record.source)
    if experiment is None and record.source:
        try:
            experiment = load_experiment(record.source).experiment
        except LosslabError as error:
            section.problems.append(f"cannot load the experiment again: {error}")
    elif experiment is None:
        section.problems.append("no source stored for this experiment: figures and claims skipped")
    if experiment is not None:
        section.version, section.paper = experiment.version, experiment.paper
    frame = store.frame(record.name, version=section.version, arrays=True)
    if experiment is not None and preset is not None:
        try:
            keys = [cell.key for cell in plan_cells(experiment, preset)]
        except Exception:
            section.problems.append(
                f"grid({preset!r}) raised, so every stored cell is shown:\n"
                + traceback.format_exc(limit=-3)
            )
        else:
            section.preset, section.grid_cells = preset, len(keys)
            frame = frame[frame["key"].isin(keys)].reset_index(drop=True)
    if frame.empty:
        which = f"of the {preset} grid " if section.preset else ""
        section.problems.append(f"no stored cells {which}for version {section.version}")
        return section
    _fill_counts(section, frame, store)
    done = frame[frame["status"] == "done"].reset_index(drop=True)
    if experiment is None or done.empty:
        return section
    try:
        for i, figure in enumerate(experiment.figures(done)):
            name = f"{_slug(record.name)}-{i + 1}.png"
            figure.savefig(out / "figures" / name, dpi=120, bbox_inches="tight")
            _close(figure)
            section.figures.append(f"figures/{name}")
    except Exception:
        section.problems.append("figures() raised:\n" + traceback.format_exc(limit=-3))
    try:
        section.claims = list(experiment.claims(done))
    except Exception:
        section.problems.append("claims() raised:\n" + traceback.format_exc(limit=-3))
    return section


def _fill_counts(section: ExperimentSection, frame: pd.DataFrame, store: ResultStore) -> None:
    section.done = int((frame["status"] == "done").sum())
    section.failed = int((frame["status"] == "failed").sum())
    section.cell_seconds = float(frame["seconds"].sum())
    started = pd.to_datetime(frame["started_at"], utc=True, format="ISO8601")
    finished = pd.to_datetime(frame["finished_at"], utc=True, format="ISO8601")
    section.wall_seconds = float((finished.max() - started.min()).total_seconds())
    section.hosts = sorted(set(frame["host"]))
    # Which cell failed (its config and the start of its key, as `losslab results` shows
    # it) and why (the exception's own line, the last of the traceback).
    failed = set(frame.loc[frame["status"] == "failed", "key"])
    records = store.records(section.name, version=section.version, status="failed")
    section.failures = [
        f"{json.dumps(r.config, sort_keys=True)} (key {r.key[:10]}): {_last_line(r.error)}"
        for r in records
        if r.key in failed
    ][:5]
    seen = {json.dumps(r.versions, sort_keys=True) for r in store.records(section.name)}
    section.versions = [json.loads(v) for v in sorted(seen)]


def _last_line(text: str | None) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no error text)"


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.pass { color: #11772d; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3rem 0; }
pre { background: #f7f7f7; padding: 0.5rem; overflow-x: auto; }
section { border-top: 2px solid #444; margin-top: 2rem; }
"""


def _render(sections: list[ExperimentSection]) -> str:
    e = html.escape
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>losslab report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>losslab report</h1>",
        f"<p>Generated {e(generated)}.</p>",
    ]
    if not sections:
        parts.append("<p>The store holds no experiments: run <code>losslab reproduce</code>.</p>")
    else:
        rows = "".join(
            f"<tr><td><a href='#{e(_slug(s.name))}'>{e(s.name)}</a></td><td>{e(s.paper)}</td>"
            f"<td>{s.done}</td><td>{s.failed}</td>"
            f"<td>{s.claims_passed} / {len(s.claims)}</td></tr>"
            for s in sections
        )
        parts.append(
            "<table><tr><th>experiment</th><th>paper</th><th>cells done</th>"
            f"<th>cells failed</th><th>claims passed</th></tr>{rows}</table>"
        )
    parts.extend(_render_section(s) for s in sections)
    info = machine_info()
    env_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in info.items())
    parts.append(f"<section><h2>Environment of this report</h2><table>{env_rows}</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _render_section(s: ExperimentSection) -> str:
    e = html.escape
    parts = [
        f"<section id='{e(_slug(s.name))}'><h2>{e(s.name)} (version {s.version})</h2>",
        f"<p><b>Paper:</b> {e(s.paper or 'unknown')}<br><b>Source:</b> "
        f"<code>{e(s.source or 'unknown')}</code></p>",
        f"<p><b>Cells:</b> {e(_cells_used(s))}</p>",
        "<table><tr><th>cells done</th><th>cells failed</th><th>cell time (s)</th>"
        "<th>wall time (s)</th><th>hosts</th></tr>"
        f"<tr><td>{s.done}</td><td>{s.failed}</td><td>{s.cell_seconds:.1f}</td>"
        f"<td>{s.wall_seconds:.1f}</td><td>{e(', '.join(s.hosts))}</td></tr></table>",
    ]
    if s.claims:
        rows = "".join(
            f"<tr><td>{e(c.statement)}</td><td>{e(c.measured)}</td>{_verdict(c.passed)}</tr>"
            for c in s.claims
        )
        parts.append(
            "<h3>Claims</h3><table><tr><th>claim</th><th>measured</th><th>result</th></tr>"
            f"{rows}</table>"
        )
    if s.figures:
        parts.append("<h3>Figures</h3>")
        parts.extend(f"<img src='{e(path)}' alt='{e(s.name)} figure'>" for path in s.figures)
    if s.failures:
        items = "".join(f"<li><code>{e(line)}</code></li>" for line in s.failures)
        parts.append(f"<h3>Failed cells (first {len(s.failures)})</h3><ul>{items}</ul>")
    if s.problems:
        parts.append("<h3>Problems</h3>")
        parts.extend(f"<pre>{e(problem)}</pre>" for problem in s.problems)
    if s.versions:
        header = "".join(f"<th>{e(k)}</th>" for k in s.versions[0])
        rows = "".join(
            "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in versions.values()) + "</tr>"
            for versions in s.versions
        )
        parts.append(f"<h3>Packages the cells ran with</h3><table><tr>{header}</tr>{rows}</table>")
    parts.append("</section>")
    return "\n".join(parts)


def _cells_used(s: ExperimentSection) -> str:
    """Which cells the section's figures, claims and counts cover."""
    if s.preset is not None:
        stored = s.done + s.failed
        return (
            f"the {s.grid_cells} cell{'s' if s.grid_cells != 1 else ''} of the {s.preset} "
            f"grid ({stored} of them stored); "
            "stored cells outside that grid are left out"
        )
    return (
        f"every stored cell of version {s.version}, whatever preset ran it "
        f"({s.done + s.failed}); `losslab report --preset NAME` keeps one grid's cells"
    )


def _verdict(passed: bool) -> str:
    return "<td class='pass'>pass</td>" if passed else "<td class='fail'>FAIL</td>"
