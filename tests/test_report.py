from __future__ import annotations

import json
from html.parser import HTMLParser

from losslab.engine import cell_key, run_cell, run_sweep
from losslab.report import write_report
from losslab.store import CellRecord, ResultStore


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text())
    return collector


def test_report_shows_claims_figures_counts_and_failures(sample, tmp_path):
    loaded = sample("SQUARES")
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep(loaded.experiment, store=store, workers=0, progress=False, source=loaded.source)
        report = write_report(store, tmp_path / "site")
    (section,) = report.sections
    assert (section.done, section.failed) == (5, 1)
    assert [c.passed for c in section.claims] == [True, False]
    # which cell failed (config, key as `losslab results` shows it), and why
    key = cell_key("squares", 1, {"x": 3})[:10]
    assert section.failures == [f'{{"x": 3}} (key {key}): ValueError: cell 3 fails on purpose']
    page = _parse(report.index)
    text = " ".join(page.text)
    assert "square equals x*x" in text
    assert "max error 0 over 5 cells" in text
    assert "FAIL" in text
    assert "pass" in text
    assert page.images == ["figures/squares-1.png"]
    png = (tmp_path / "site" / page.images[0]).read_bytes()
    assert png.startswith(b"\x89PNG")
    claims = json.loads((tmp_path / "site" / "claims.json").read_text())
    assert claims["squares"][1] == {
        "statement": "there are at least 100 cells",
        "measured": "5 cells",
        "passed": False,
    }


def test_report_reloads_the_experiment_from_its_stored_source(sample, tmp_path):
    loaded = sample("CLEAN")
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep(loaded.experiment, store=store, workers=0, progress=False, source=loaded.source)
        (section,) = write_report(store, tmp_path / "site").sections
    assert len(section.claims) == 2
    assert section.figures
    assert not section.problems


def test_report_survives_a_broken_figure_and_an_unloadable_source(sample, tmp_path):
    broken = sample("BROKEN_REPORT")
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep(broken.experiment, store=store, workers=0, progress=False, source=broken.source)
        clean = sample("CLEAN").experiment
        run_sweep(clean, store=store, workers=0, progress=False, source="/gone.py:X")
        sections = {s.name: s for s in write_report(store, tmp_path / "site").sections}
    assert "RuntimeError: cannot draw" in sections["broken-report"].problems[0]
    assert len(sections["broken-report"].claims) == 2  # claims still computed
    assert "cannot load the experiment again" in sections["clean-squares"].problems[0]
    assert sections["clean-squares"].done == 6
    text = (tmp_path / "site" / "index.html").read_text()
    assert "cannot draw" in text


def test_cells_without_an_experiment_record_still_count(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(
            CellRecord(
                "k", "orphan", 3, {"x": 1}, "done", {"m": 1.0}, {}, None, 1.5, {}, "h",
                "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:02+00:00",
            )
        )  # fmt: skip
        (section,) = write_report(store, tmp_path / "site").sections
    assert (section.name, section.version, section.done) == ("orphan", 3, 1)
    assert section.wall_seconds == 2.0
    assert "no source stored" in section.problems[0]


def test_empty_store_gives_an_empty_report(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        report = write_report(store, tmp_path / "site")
    assert report.sections == []
    assert "holds no experiments" in report.index.read_text()


def test_the_report_covers_the_cells_of_the_preset_it_is_given(sample, tmp_path):
    # quick, then full, then quick again: the quick report must not count the full cells
    loaded = sample("CLEAN")
    with ResultStore(tmp_path / "r.sqlite") as store:
        for preset in ("quick", "full", "quick"):
            run_sweep(
                loaded.experiment, preset=preset, store=store, workers=0, progress=False,
                source=loaded.source,
            )  # fmt: skip
        (quick,) = write_report(store, tmp_path / "q", preset="quick").sections
        (every,) = write_report(store, tmp_path / "all").sections
    assert (quick.preset, quick.grid_cells, quick.done) == ("quick", 6, 6)
    assert quick.claims[0].measured == "max error 0 over 6 cells"
    page = (tmp_path / "q" / "index.html").read_text()
    assert "the 6 cells of the quick grid (6 of them stored)" in page
    assert (every.preset, every.done) == (None, 10)
    assert every.claims[0].measured == "max error 0 over 10 cells"
    assert "every stored cell of version 1, whatever preset ran it (10)" in " ".join(
        _parse(tmp_path / "all" / "index.html").text
    )


def test_reproduce_filters_only_the_experiments_it_ran(sample, tmp_path):
    # a full sweep of one experiment, then a quick one of another: the quick report (as
    # reproduce writes it, with the experiments it ran) keeps the first one's full cells
    clean, squares = sample("CLEAN"), sample("SQUARES")
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep(clean.experiment, preset="full", store=store, workers=0, progress=False,
                  source=clean.source)  # fmt: skip
        run_sweep(squares.experiment, preset="quick", store=store, workers=0, progress=False,
                  source=squares.source)  # fmt: skip
        sections = write_report(store, tmp_path / "out", preset="quick",
                                experiments={"squares": squares.experiment}).sections  # fmt: skip
    by_name = {section.name: section for section in sections}
    assert by_name["squares"].preset == "quick"
    assert (by_name["clean-squares"].preset, by_name["clean-squares"].done) == (None, 10)


def test_claims_see_the_rows_in_the_same_order_however_the_cells_finished(sample, tmp_path):
    experiment = sample("CLEAN").experiment
    seen = []

    class FirstRow(type(experiment)):
        def claims(self, frame):
            seen.append(list(frame["x"]))
            return []

    for name, finish_order in (("a", range(6)), ("b", reversed(range(6)))):
        with ResultStore(tmp_path / f"{name}.sqlite") as store:
            for x in finish_order:
                store.put(run_cell(experiment, {"x": x}, cell_key("clean-squares", 1, {"x": x})))
            write_report(store, tmp_path / name, experiments={"clean-squares": FirstRow()})
    assert seen[0] == seen[1]
