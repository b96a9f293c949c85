from __future__ import annotations

import pytest

from losslab.engine import cell_key
from losslab.errors import ExperimentError
from losslab.experiments import check_experiment, load_experiment, registered_experiments
from tests.conftest import SAMPLES


def test_load_from_file_instance_and_class(sample):
    loaded = sample("SQUARES")
    assert loaded.experiment.name == "squares"
    assert loaded.source == f"{SAMPLES.resolve()}:SQUARES"
    from_class = load_experiment(f"{SAMPLES}:CleanSquares")
    assert from_class.experiment.name == "clean-squares"


def test_loading_twice_reuses_the_module(sample):
    assert type(sample("SQUARES").experiment) is type(sample("SQUARES").experiment)


def test_missing_object_file_and_name(tmp_path):
    with pytest.raises(ExperimentError, match="defines no 'NOPE'"):
        load_experiment(f"{SAMPLES}:NOPE")
    with pytest.raises(ExperimentError, match="no such experiment file"):
        load_experiment(f"{tmp_path / 'absent.py'}:X")
    with pytest.raises(ExperimentError, match="unknown experiment 'nope'"):
        load_experiment("nope")


def test_import_error_is_reported(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ExperimentError, match="ModuleNotFoundError"):
        load_experiment(f"{path}:X")


def test_check_experiment_names_what_is_missing():
    class Half:
        name = "half"
        version = "1"

        def run(self, cell):
            return {}

    with pytest.raises(ExperimentError, match=r"paper \(str\), version \(int\), grid\(\)"):
        check_experiment(Half())


def test_registered_experiments_follow_the_protocol():
    for name, experiment in registered_experiments().items():
        assert check_experiment(experiment).name == name
        assert experiment.grid("quick")


def test_cell_key_ignores_key_order_and_tracks_version():
    a = cell_key("e", 1, {"x": 1, "y": [1, 2]})
    assert a == cell_key("e", 1, {"y": [1, 2], "x": 1})
    assert a != cell_key("e", 2, {"x": 1, "y": [1, 2]})
    assert a != cell_key("f", 1, {"x": 1, "y": [1, 2]})
    assert a != cell_key("e", 1, {"x": 1.5, "y": [1, 2]})
    assert len(a) == 32


def test_cell_key_rejects_non_json():
    with pytest.raises(ExperimentError, match="not plain JSON"):
        cell_key("e", 1, {"x": object()})
    with pytest.raises(ExperimentError, match="not plain JSON"):
        cell_key("e", 1, {"x": float("nan")})
