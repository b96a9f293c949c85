"""Finding experiments: the registered ones by name, and users' own as ``FILE.py:OBJECT``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cloudpickle

from losslab.errors import ExperimentError
from losslab.experiments.protocol import Experiment, check_experiment

#: Modules of the registered experiments; each defines ``EXPERIMENT``. Paper
#: experiments add themselves here as they arrive.
REGISTERED_MODULES: tuple[str, ...] = (
    "losslab.experiments.mishkin_pilanci",
    "losslab.experiments.berlyand_slavin",
    "losslab.experiments.milne",
)


@dataclass(frozen=True)
class LoadedExperiment:
    """An experiment and the ``source`` that finds it again (stored with its results)."""

    experiment: Experiment
    source: str


def registered_experiments() -> dict[str, Experiment]:
    """Every registered experiment by name (imports their modules)."""
    found: dict[str, Experiment] = {}
    for module_name in REGISTERED_MODULES:
        experiment = check_experiment(importlib.import_module(module_name).EXPERIMENT)
        found[experiment.name] = experiment
    return found


def load_experiment(spec: str) -> LoadedExperiment:
    """A registered experiment by name, or a user's one as ``path/to/file.py:OBJECT``.

    ``OBJECT`` may be an instance or a class (instantiated without arguments). The file
    is imported as a module whose code is sent to Dask workers by value, so the workers
    need only losslab installed, not the file.
    """
    path_text, separator, object_name = spec.rpartition(":")
    if separator and path_text.endswith(".py"):
        module = _import_file(Path(path_text))
        if not hasattr(module, object_name):
            raise ExperimentError(f"{path_text} defines no {object_name!r}")
        candidate = getattr(module, object_name)
        if isinstance(candidate, type):
            candidate = candidate()
        source = f"{Path(path_text).resolve()}:{object_name}"
        return LoadedExperiment(check_experiment(candidate), source)
    registered = registered_experiments()
    if spec not in registered:
        names = ", ".join(registered) or "none yet"
        raise ExperimentError(
            f"unknown experiment {spec!r}: registered experiments are {names}; "
            "or give your own as FILE.py:OBJECT"
        )
    return LoadedExperiment(registered[spec], spec)


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ExperimentError(f"no such experiment file: {str(path)!r}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"losslab_user_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ExperimentError(f"cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # As `python FILE.py` would: the file's folder is importable, for its own modules.
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    before = set(sys.modules)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ExperimentError(
            f"importing {str(path)!r} failed: {type(error).__name__}: {error}"
        ) from error
    cloudpickle.register_pickle_by_value(module)
    # Modules and packages it imported from its folder (not from a virtualenv that may
    # sit there) travel to Dask workers by value with it.
    for name in sorted(set(sys.modules) - before):
        top = resolved.parent / name.split(".")[0]
        source = getattr(sys.modules[name], "__file__", None)
        if (
            source is not None
            and (top.with_suffix(".py").is_file() or top.is_dir())
            and (Path(source).resolve().is_relative_to(resolved.parent))
        ):
            cloudpickle.register_pickle_by_value(sys.modules[name])
    return module
