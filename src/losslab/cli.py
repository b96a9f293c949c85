"""The ``losslab`` command: parses, calls the library, prints (Typer + Rich).

Every error a user can cause prints one line (what was wrong, what to do) and exits
with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from losslab import __version__
from losslab.errors import LosslabError

if TYPE_CHECKING:
    from losslab.fixedpoints.search import FixedPointSet

app = typer.Typer(
    name="losslab",
    help="Global optima, critical points and fixed points of neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Built-in datasets and your own files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
convex_app = typer.Typer(
    help="Two-layer ReLU networks by their convex reformulation (Mishkin & Pilanci).",
    no_args_is_help=True,
)
app.add_typer(convex_app, name="convex")
fixedpoints_app = typer.Typer(
    help="All fixed points of square networks f: R^N -> R^N (Berlyand & Slavin).",
    no_args_is_help=True,
)
app.add_typer(fixedpoints_app, name="fixedpoints")
critical_app = typer.Typer(
    help="Hessian spectra, critical points and strong convexity of ReLU MLPs (Milne).",
    no_args_is_help=True,
)
app.add_typer(critical_app, name="critical")


class Preset(StrEnum):
    quick = "quick"
    full = "full"


class Formulation(StrEnum):
    relu = "relu"
    gated = "gated"


class TaskChoice(StrEnum):
    regression = "regression"
    classification = "classification"


class Init(StrEnum):
    gaussian = "gaussian"
    cauchy = "cauchy"
    student_t = "student_t"


class Activation(StrEnum):
    sigmoid = "sigmoid"
    tanh = "tanh"


class Corruption(StrEnum):
    mask = "mask"
    salt_pepper = "salt-pepper"
    noise = "noise"


class ModelFamily(StrEnum):
    mlp = "mlp"
    square = "square"


class SliceKind(StrEnum):
    contour = "contour"
    surface = "surface"
    line = "line"


class StatusFilter(StrEnum):
    done = "done"
    failed = "failed"


StoreOption = Annotated[Path, typer.Option("--store", help="SQLite results store.")]
DEFAULT_STORE = Path("results/losslab.sqlite")
DEFAULT_OUT = Path("results/report")


def _out() -> Console:
    return Console()


def _write_figure(plot: Any, path: Path) -> None:
    """Save the matplotlib figure ``plot`` at ``path``, in the format of its extension
    (checked by :func:`_check_writable` first), and say so."""
    plot.savefig(path, dpi=120, bbox_inches="tight")
    _out().print(f"Wrote {path}")


#: Figure formats the commands write (matplotlib's, by file extension).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff")


def _check_writable(path: Path | None, option: str) -> None:
    """Fail before the work, not after it: ``path``'s folder is created and must be
    writable, ``path`` must not be a folder, and a ``--figure`` needs an image extension
    (matplotlib picks the format from it)."""
    if path is None:
        return
    if path.is_dir():
        raise LosslabError(f"{option} {str(path)!r} is a folder; give a file name")
    if option == "--figure" and path.suffix.lower() not in FIGURE_SUFFIXES:
        raise LosslabError(
            f"--figure {str(path)!r}: give a file name ending in one of "
            f"{', '.join(FIGURE_SUFFIXES)} (the format follows the extension)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LosslabError(f"{option} {str(path)!r}: cannot create its folder ({error})") from None
    if not os.access(path.parent, os.W_OK):
        raise LosslabError(f"{option} {str(path)!r}: its folder is not writable")


def _print_version(value: bool) -> None:
    if value:
        _out().print(f"losslab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """losslab: global optima, critical points and fixed points of neural networks."""


@app.command()
def info() -> None:
    """Versions of losslab and its engines, threads and devices."""
    from losslab.engine import machine_info

    table = Table(title="losslab info", show_header=False)
    for key, value in machine_info().items():
        text = ", ".join(value) if isinstance(value, list) else str(value)
        table.add_row(key, text)
    _out().print(table)


@data_app.command("list")
def data_list() -> None:
    """The built-in datasets with their shapes."""
    from losslab.data import BUILTIN_DATASETS

    table = Table(title="built-in datasets")
    for column in ("name", "source", "samples", "features", "task", "description"):
        table.add_column(column)
    for name, spec in BUILTIN_DATASETS.items():
        dataset = spec.make()
        table.add_row(
            name,
            spec.source,
            str(dataset.n_samples),
            str(dataset.n_features),
            dataset.task,
            spec.description,
        )
    _out().print(table)


@data_app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="A built-in name or a .csv/.npz/.parquet path.")],
    target: Annotated[str | None, typer.Option(help="Target column of a CSV/Parquet file.")] = None,
    standardize: Annotated[
        bool, typer.Option(help="Standardise the features (and a regression target) first.")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Generator parameter KEY=VALUE (synthetic sets)."),
    ] = None,
    task: TaskOption = None,
) -> None:
    """Shape, target type and summary statistics of a dataset."""
    dataset = _load_data(name, target, standardize, param, task)
    summary = dataset.describe()
    console = _out()
    console.print(
        f"[bold]{summary.name}[/]: {summary.n_samples} samples x {summary.n_features} "
        f"features, task [bold]{summary.task}[/]"
    )
    if summary.class_counts is not None:
        counts = ", ".join(f"{label:g}: {n}" for label, n in summary.class_counts.items())
        console.print(f"classes (label: count): {counts}")
    table = Table()
    for column in ("column", "mean", "std", "min", "max"):
        table.add_column(column, justify="left" if column == "column" else "right")
    shown = summary.features[:20]
    for stats in [*shown, summary.target]:
        is_target = stats is summary.target
        table.add_row(
            f"[bold]{stats.name} (target)[/]" if is_target else stats.name,
            *(f"{getattr(stats, k):.4g}" for k in ("mean", "std", "min", "max")),
        )
    console.print(table)
    if len(summary.features) > len(shown):
        console.print(f"... and {len(summary.features) - len(shown)} more feature columns")


def _load_data(
    name: str,
    target: str | None,
    standardize: bool,
    param: list[str] | None,
    task: TaskChoice | None = None,
) -> Any:
    """``losslab.data.load`` with the shared data options; ``task=None`` infers the task."""
    from losslab.data import load

    return load(name, target=target, task=None if task is None else task.value,
                standardize=standardize, **_parse_params(param or []))  # fmt: skip


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


DataArgument = Annotated[str, typer.Argument(help="A built-in name or a .csv/.npz/.parquet path.")]
TargetOption = Annotated[str | None, typer.Option(help="Target column of a CSV/Parquet file.")]
TaskOption = Annotated[
    TaskChoice | None,
    typer.Option(
        help="Fit the target as a regression or as class labels \\[default: inferred: "
        "a non-numeric target, or one of at most 20 distinct integers, is classes]."
    ),
]
StandardizeOption = Annotated[
    bool, typer.Option(help="Standardise the features (and a regression target) first.")
]
ParamOption = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="Generator parameter KEY=VALUE.")
]
LamOption = Annotated[float, typer.Option(help="Weight decay lam > 0.")]
FormulationOption = Annotated[
    Formulation, typer.Option(help="relu (the exact network) or gated (the relaxation).")
]
GatesOption = Annotated[int, typer.Option("--gates", help="Number of sampled gate vectors.")]
BiasOption = Annotated[bool, typer.Option(help="A penalised bias per neuron.")]
SeedOption = Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Seed of the gate sample.")]
TolOption = Annotated[float, typer.Option(help="Relative duality gap to stop at.")]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where to compute: cpu, cuda or cuda:1 (a GPU torch sees); the numbers "
        "agree with the CPU's up to rounding.",
    ),
]


def _device(text: str) -> Any:
    """``--device`` as a ``torch.device``, checked before the work: ``cpu`` or a CUDA
    device this torch sees (:func:`losslab.convex.validation.solve_device`), else a
    LosslabError (one line)."""
    import torch

    from losslab.convex.validation import solve_device

    try:
        kind: str | None = torch.device(text).type
    except (RuntimeError, TypeError):
        kind = None  # not a device name: solve_device says what to give
    if kind is not None and kind not in ("cpu", "cuda"):
        raise LosslabError(
            f"--device {text!r}: losslab computes on 'cpu' or 'cuda' ('cuda:1', ...)"
        )
    return solve_device(text)


def _convex_data(
    name: str,
    target: str | None,
    standardize: bool,
    param: list[str] | None,
    task: TaskChoice | None = None,
    multiclass: bool = False,
) -> Any:
    """Features and target for the convex tools: binary labels become -1/+1; more classes
    stay labels when ``multiclass`` (one-vs-all), else are an error; a single class is
    an error."""
    dataset = _load_data(name, target, standardize, param, task)
    y = dataset.y
    if dataset.task == "classification":
        classes = sorted(set(y.tolist()))
        if len(classes) < 2:
            only = _class_name(dataset, classes[0])
            raise LosslabError(
                f"{dataset.name}: every row has the same class ({only}); classification "
                "needs at least 2 classes (a numeric target can be fitted as a regression "
                "with --task regression)"
            )
        if len(classes) > 2 and multiclass:
            return dataset, dataset.X, y
        if len(classes) > 2:
            raise LosslabError(
                f"{dataset.name} has {len(classes)} classes; this command fits one output: "
                "use a regression or a binary target (--target), or `losslab convex fit` "
                "(one-vs-all)"
            )
        y = (y == classes[-1]).to(y.dtype) * 2 - 1
    return dataset, dataset.X, y


def _class_name(dataset: Any, label: float) -> str:
    """The name of class ``label`` from ``meta["target_names"]`` (labels 0..K-1 index it),
    else the label itself."""
    names = dataset.meta.get("target_names")
    if names and float(label).is_integer() and 0 <= label < len(names):
        return str(names[int(label)])
    return f"{label:g}"


def _fit_convex(X: Any, y: Any, lam: float, formulation: Formulation, gates: int, bias: bool,
                seed: int, tol: float, device: str = "cpu") -> Any:  # fmt: skip
    from losslab.convex import ConvexReLU

    form: Literal["relu", "gated"] = "relu" if formulation is Formulation.relu else "gated"
    model = ConvexReLU(lam=lam, formulation=form, n_gates=gates, bias=bias, seed=seed, tol=tol,
                       device=device)  # fmt: skip
    with _out().status(f"solving the {form} program ({gates} gates) and certifying it ..."):
        return model.fit(X.numpy(), y.numpy())


def _fit_one_vs_all(dataset: Any, X: Any, y: Any, lam: float, formulation: Formulation,
                    gates: int, bias: bool, seed: int, tol: float,
                    device: str = "cpu") -> None:  # fmt: skip
    from losslab.convex import ConvexReLUClassifier

    form: Literal["relu", "gated"] = "relu" if formulation is Formulation.relu else "gated"
    model = ConvexReLUClassifier(
        lam=lam, formulation=form, n_gates=gates, bias=bias, seed=seed, tol=tol, device=device
    )
    with _out().status(f"solving one {form} program per class ({gates} gates) ..."):
        model.fit(X.numpy(), y.numpy())
    for label, estimator in zip(model.classes_, model.estimators_, strict=True):
        name = _class_name(dataset, float(label))
        title = f"convex {formulation.value} fit of {dataset.name}: class {name} vs the rest"
        _out().print(_solution_table(title, estimator))
    accuracy = model.score(X.numpy(), y.numpy())
    _out().print(
        f"one-vs-all over {len(model.classes_)} classes: total objective "
        f"{model.objective_:.10g}, {model.n_neurons_} neurons"
    )
    _out().print(f"training accuracy {accuracy:.3f}")


def _solution_table(title: str, model: Any) -> Table:
    solution, certificate = model.solution_, model.certificate_
    table = Table(title=title, show_header=False)
    rows = [
        ("objective", f"{solution.objective:.10g}"),
        ("dual objective", f"{solution.dual_objective:.10g}"),
        ("relative duality gap", f"{solution.relative_gap:.2e}"),
        ("converged", f"{solution.converged} ({solution.reason})"),
        ("constraint violation", f"{solution.constraint_violation:.1e}"),
        ("neurons", str(model.n_neurons_)),
        ("patterns", str(model.patterns_.shape[1])),
        ("iterations", str(solution.iterations)),
        ("seconds", f"{solution.seconds:.2f}"),
    ]
    if certificate is not None:
        verdict = "[green]yes[/]" if certificate.is_global else "[yellow]not proved[/]"
        rows += [
            ("globally optimal", f"{verdict} ({certificate.global_check})"),
            ("largest dual ratio", f"{certificate.max_dual_ratio:.6f}"),
            ("certificate", certificate.message),
        ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@convex_app.command("fit")
def convex_fit(
    data: DataArgument,
    lam: LamOption = 1e-3,
    formulation: FormulationOption = Formulation.relu,
    gates: GatesOption = 500,
    bias: BiasOption = False,
    seed: SeedOption = 0,
    tol: TolOption = 1e-6,
    save: Annotated[Path | None, typer.Option(help="Save the network (.pt) here.")] = None,
    target: TargetOption = None,
    standardize: StandardizeOption = False,
    param: ParamOption = None,
    task: TaskOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Fit the convex program, certify it, and show the certificate (a dataset with more
    than two classes: one network per class, one-vs-all). --save writes the network on the
    CPU whatever --device, so it loads and certifies on any machine."""
    _check_writable(save, "--save")
    _device(device)
    import torch

    dataset, X, y = _convex_data(data, target, standardize, param, task, multiclass=True)
    if dataset.task == "classification" and len(set(y.tolist())) > 2:
        if save is not None:
            raise LosslabError("--save holds one network; a one-vs-all fit has one per class")
        _fit_one_vs_all(dataset, X, y, lam, formulation, gates, bias, seed, tol, device)
        return
    model = _fit_convex(X, y, lam, formulation, gates, bias, seed, tol, device)
    title = f"convex {formulation.value} fit of {dataset.name}, lam={lam:g}"
    _out().print(_solution_table(title, model))
    if save is not None:
        torch.save(
            {"state_dict": model.to_torch().state_dict(), "bias": bias, "lam": lam,
             "standardize": standardize, "n_features": X.shape[1],
             "task": None if task is None else task.value, "objective": model.objective_},
            save,
        )  # fmt: skip
        _out().print(f"Saved the network to {save}")


@convex_app.command("prune")
def convex_prune(
    data: DataArgument,
    lam: LamOption = 1e-3,
    formulation: FormulationOption = Formulation.relu,
    gates: GatesOption = 500,
    bias: BiasOption = False,
    seed: SeedOption = 0,
    tol: TolOption = 1e-6,
    target: TargetOption = None,
    standardize: StandardizeOption = False,
    param: ParamOption = None,
    task: TaskOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Fit, then prune optimally to linearly independent neurons (same objective)."""
    _device(device)
    dataset, X, y = _convex_data(data, target, standardize, param, task)
    model = _fit_convex(X, y, lam, formulation, gates, bias, seed, tol, device)
    with _out().status("pruning ..."):
        pruned = model.prune()
    table = Table(title=f"optimal pruning of {dataset.name}, lam={lam:g}")
    for column in ("", "neurons", "objective"):
        table.add_column(column)
    table.add_row("fitted", str(model.n_neurons_), f"{model.objective_:.10g}")
    table.add_row("pruned", str(pruned.n_neurons_), f"{pruned.objective_:.10g}")
    _out().print(table)
    _out().print(
        f"at most n = {X.shape[0]} neurons are needed; removed {len(pruned.pruned_.removed)}"
    )


@convex_app.command("path")
def convex_path(
    data: DataArgument,
    n_lams: Annotated[int, typer.Option(min=2, help="Points on the log grid.")] = 20,
    lam_min_ratio: Annotated[float, typer.Option(help="Smallest lam / lam_max.")] = 1e-3,
    formulation: FormulationOption = Formulation.gated,
    gates: GatesOption = 500,
    bias: BiasOption = False,
    seed: SeedOption = 0,
    tol: TolOption = 1e-6,
    figure: Annotated[Path | None, typer.Option(help="Write the path figure (PNG) here.")] = None,
    target: TargetOption = None,
    standardize: StandardizeOption = False,
    param: ParamOption = None,
    task: TaskOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """The regularization path from lam_max down, with a certificate per point."""
    _check_writable(figure, "--figure")
    where = _device(device)
    from losslab.convex import regularization_path

    dataset, X, y = _convex_data(data, target, standardize, param, task)
    X, y = X.to(where), y.to(where)  # the path solves where its data are
    form: Literal["relu", "gated"] = "relu" if formulation is Formulation.relu else "gated"
    from rich.progress import Progress

    with Progress(console=_out(), transient=True) as progress:
        bar = progress.add_task(f"solving the {form} path", total=n_lams)
        path = regularization_path(
            X, y, n_lams=n_lams, lam_min_ratio=lam_min_ratio, formulation=form, n_gates=gates,
            bias=bias, tol=tol, seed=seed,
            callback=lambda i, total, point: progress.update(
                bar, completed=i + 1, description=f"lam {point.lam:.3g}"),
        )  # fmt: skip
    table = Table(
        title=f"{formulation.value} path of {dataset.name} (lam_max = {path.lam_max:.4g})"
    )
    for column in ("lam", "objective", "gap", "neurons", "fit change", "flag"):
        table.add_column(column, justify="right")
    for i, point in enumerate(path.points):
        change = f"{path.fit_change[i]:.2e}" if i < len(path.fit_change) else ""
        flag = "[yellow]fast[/]" if i in path.jumps else ""
        gap = f"{point.result.relative_gap:.1e}" + ("" if point.result.converged else " [red]![/]")
        table.add_row(f"{point.lam:.4g}", f"{point.result.objective:.6g}", gap,
                      str(point.n_neurons), change, flag)  # fmt: skip
    _out().print(table)
    if figure is not None:
        from losslab.report.figures import path_figure

        _write_figure(path_figure(path), figure)


@convex_app.command("certify")
def convex_certify(
    network: Annotated[
        Path, typer.Argument(help="A network saved by `losslab convex fit --save`.")
    ],
    data: DataArgument,
    lam: Annotated[
        float | None, typer.Option(help="Weight decay lam > 0 \\[default: the saved fit's].")
    ] = None,
    target: TargetOption = None,
    standardize: Annotated[
        bool | None,
        typer.Option(
            "--standardize/--no-standardize",
            help="Standardise the features (and a regression target) first "
            "\\[default: as the saved fit did].",
        ),
    ] = None,
    param: ParamOption = None,
    task: TaskOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Is a saved two-layer ReLU network stationary, optimal for its own patterns, global?
    The network is certified at the lam and on the features it was fitted with, unless
    --lam or --standardize/--no-standardize say otherwise; likewise the target is read
    with the saved fit's --task unless --task says otherwise (--device is not saved: give
    it here)."""
    import torch
    from torch import nn

    from losslab.convex import certify_network

    where = _device(device)
    if not network.is_file():
        raise LosslabError(f"no such network file: {str(network)!r}")
    try:
        saved = torch.load(network, map_location="cpu", weights_only=True)
        state = saved["state_dict"]
        m, d = state["0.weight"].shape
        net = nn.Sequential(nn.Linear(d, m, bias=saved["bias"], dtype=torch.float64), nn.ReLU(),
                            nn.Linear(m, 1, bias=False, dtype=torch.float64))  # fmt: skip
        net.load_state_dict(state)
        saved_task = None if saved.get("task") is None else TaskChoice(saved["task"])
    except Exception as error:  # a file that is not a saved network, whatever the failure
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", (str(error).splitlines() or [""])[0])
        raise LosslabError(
            f"{str(network)!r} is not a network saved by `losslab convex fit --save` "
            f"({type(error).__name__}: {first_line.strip()})"
        ) from None
    if lam is None:
        lam = float(saved.get("lam", 1e-3))
    if standardize is None:
        standardize = bool(saved.get("standardize", False))
    if task is None:
        task = saved_task
    dataset, X, y = _convex_data(data, target, standardize, param, task)
    with _out().status("certifying the network ..."):
        certificate = certify_network(net.to(where), X.to(where), y.to(where), lam)
    scaled = ", standardised" if standardize else ""
    table = Table(
        title=f"certificate of {network.name} on {dataset.name}{scaled}, lam={lam:g}",
        show_header=False,
    )
    for key, value in certificate.to_dict().items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    _out().print(table)


@fixedpoints_app.command("count")
def fixedpoints_count(
    N: Annotated[int, typer.Option("--N", min=1, help="Width (input = output dimension).")] = 4,
    L: Annotated[int, typer.Option("--L", min=1, help="Depth (affine layers).")] = 2,
    init: Annotated[Init, typer.Option(help="Law of the weights and biases.")] = Init.gaussian,
    scale: Annotated[float, typer.Option(help="weight_scale (see SquareNet).")] = 1.0,
    bias_scale: Annotated[float, typer.Option(help="Scale of the biases.")] = 1.0,
    activation: Annotated[Activation, typer.Option(help="Activation.")] = Activation.sigmoid,
    df: Annotated[float, typer.Option(help="Degrees of freedom (student_t).")] = 3.0,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed of the weights and of the starts.")
    ] = 0,
    starts: Annotated[int, typer.Option(min=1, help="Random starts of the search.")] = 1000,
    certify: Annotated[bool, typer.Option(help="Prove the count (interval arithmetic).")] = False,
    time_limit: Annotated[
        float,
        typer.Option(
            help="Seconds the proof may take, checked between batches of up to 4096 "
            "boxes (a batch takes milliseconds at N <= 12, seconds at N = 64)."
        ),
    ] = 60.0,
    device: DeviceOption = "cpu",
) -> None:
    """Find every fixed point of a random square network, classify it, estimate its
    basin, and (with --certify) prove the count."""
    from losslab.fixedpoints.certify import certify_fixed_points
    from losslab.fixedpoints.search import find_fixed_points
    from losslab.nets import SquareNet

    where = _device(device)
    if certify and not (math.isfinite(time_limit) and time_limit > 0):
        raise LosslabError(f"--time-limit must be a finite number of seconds > 0; got {time_limit}")
    # drawn on the CPU (the same weights on every device), then moved
    net = SquareNet(N, L, activation.value, init.value, weight_scale=scale,
                    bias_scale=bias_scale, df=df, seed=seed).to(where)  # fmt: skip
    with _out().status(f"searching from {starts} starts ..."):
        found = find_fixed_points(net, n_starts=starts, seed=seed)
    table = Table(title=f"fixed points of SquareNet(N={N}, L={L}, {init.value}, scale={scale:g}, "
                        f"seed={seed}): {found.count}")  # fmt: skip
    for column in ("#", "point (first 6 coordinates)", "residual", "spectral radius", "kind",
                   "index", "basin"):  # fmt: skip
        table.add_column(column)
    # Python numbers on the host, whatever the device of the search
    points, residuals = found.points[:, :6].tolist(), found.residuals.tolist()
    radii, basins = found.spectral_radius.tolist(), found.basin_fraction.tolist()
    indices = [int(index) for index in found.indices.tolist()]
    for i in range(found.count):
        point = ", ".join(f"{v:.4g}" for v in points[i])
        basin = basins[i]
        table.add_row(str(i), point + (", ..." if N > 6 else ""), f"{residuals[i]:.1e}",
                      f"{radii[i]:.4g}", found.kinds[i],
                      f"{indices[i]:+d}" if indices[i] else "?",
                      "-" if basin != basin else f"{basin:.1%}")  # fmt: skip
    console = _out()
    console.print(table)
    console.print(f"{found.n_converged} of {found.n_starts} starts converged "
                  f"({found.rounds} round(s)); {found.unassigned_fraction:.1%} of forward "
                  f"iterations reached no attractor; {found.seconds:.2f} s")  # fmt: skip
    console.print(_index_line(found))
    degenerate = found.kinds.count("non-hyperbolic")
    if degenerate:
        console.print(
            f"[yellow]{degenerate} non-hyperbolic point(s)[/]: an eigenvalue of the Jacobian on "
            "the unit circle, or unresolved at the search's tolerance. A degenerate fixed "
            "point is counted once; a continuum of fixed points gives one point per start."
        )
    if certify:
        with console.status(f"proving the count (at most {time_limit:g} s) ..."):
            proof = certify_fixed_points(net, time_limit=time_limit)
        if proof.status == "certified":
            agree = "[green]agrees[/]" if proof.count == found.count else "[red]DISAGREES[/]"
            console.print(
                f"proved: exactly {proof.count} fixed point(s) ({agree} with the search); "
                f"{proof.boxes_processed} boxes, {proof.seconds:.2f} s"
            )
        else:
            console.print(
                f"[yellow]proof incomplete[/]: at least {proof.count} fixed point(s); "
                f"unresolved volume {proof.unresolved_volume:.2e} ({proof.reason})"
            )


def _index_line(found: FixedPointSet) -> str:
    """The index check of a fixed-point search, in words."""
    if not found.maps_into_box:
        return "index check: not applicable (the map is not known to map the box into itself)"
    if found.index_consistent is None:
        return "index check: undecided (an eigenvalue within rounding of 1, or unresolved)"
    if found.index_consistent:
        return ("index check: the indices sum to 1, as they must (a missed pair of opposite "
                "indices would not show)")  # fmt: skip
    return (f"[red]index check failed[/]: the indices sum to {found.index_sum}, not 1, so fixed "
            "points are missing; raise --starts")  # fmt: skip


@fixedpoints_app.command("restore")
def fixedpoints_restore(
    L: Annotated[int, typer.Option("--L", min=1, help="Depth of the autoencoder.")] = 2,
    init: Annotated[Init, typer.Option(help="Initial law of the weights.")] = Init.gaussian,
    scale: Annotated[float, typer.Option(help="weight_scale of the initialisation.")] = 1.0,
    stored: Annotated[int, typer.Option(min=1, help="Digits the network stores.")] = 10,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 1500,
    input_noise: Annotated[float, typer.Option(help="Denoising noise in training.")] = 0.3,
    corruption: Annotated[Corruption, typer.Option(help="How to damage the digits.")] = (
        Corruption.mask
    ),
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed of the weights, split and damage.")
    ] = 0,
    figure: Annotated[Path | None, typer.Option(help="Write examples (PNG) here.")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Train SquareNet(64, L) as a denoising autoencoder on a few digits, damage them (and
    200 unseen digits), iterate the network from the damaged images to its attractors,
    and report PSNR and a classifier's accuracy before and after."""
    _check_writable(figure, "--figure")
    where = _device(device)
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from losslab.fixedpoints import (
        digits_unit,
        mean_psnr,
        restoration_figure,
        restore,
        standard_corruptions,
        train_autoencoder,
    )
    from losslab.nets import SquareNet

    images, labels = digits_unit()
    if stored > len(labels) - 300:
        raise LosslabError(
            f"--stored {stored}: at most {len(labels) - 300} of the {len(labels)} digits "
            "(200 are kept unseen, and at least 100 train the classifier)"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    # the classifier learns from digits neither stored nor unseen
    kept, unseen, rest = order[:stored], order[-200:], order[stored:-200]
    net = SquareNet(64, L, init=init.value, weight_scale=scale, seed=seed).to(where)
    from rich.progress import Progress

    with Progress(console=_out(), transient=True) as progress:
        task = progress.add_task("training", total=epochs)
        training = train_autoencoder(
            net, images[kept], epochs=epochs, lr=1e-2, batch_size=64, seed=seed,
            input_noise=input_noise, record_tails=False,
            callback=lambda epoch, loss: progress.update(task, completed=epoch,
                                                         description=f"loss {loss:.2e}"),
        )  # fmt: skip
    damage = standard_corruptions(seed)[corruption.name]
    classifier = LogisticRegression(max_iter=2000).fit(images[rest].numpy(), labels[rest])
    images = images.to(where)
    table = Table(title=f"restoring damaged digits ({corruption.value}) with SquareNet(64, {L}, "
                        f"{init.value}), final training loss {training.loss[-1]:.3g}")  # fmt: skip
    for column in ("digits", "PSNR damaged (dB)", "PSNR restored (dB)", "accuracy damaged",
                   "accuracy restored", "converged"):  # fmt: skip
        table.add_column(column)
    examples = None
    for name, rows in ((f"{stored} stored", kept), ("200 unseen", unseen)):
        clean = images[rows]
        damaged = damage(clean)
        with torch.no_grad():
            result = restore(net, damaged, max_iter=500)
        table.add_row(name, f"{mean_psnr(clean, damaged):.2f}",
                      f"{mean_psnr(clean, result.images):.2f}",
                      f"{classifier.score(damaged.cpu().numpy(), labels[rows]):.3f}",
                      f"{classifier.score(result.images.cpu().numpy(), labels[rows]):.3f}",
                      f"{float(result.converged.double().mean()):.0%}")  # fmt: skip
        examples = examples or (clean[:8], damaged[:8], result.images[:8])
    _out().print(table)
    if figure is not None and examples is not None:
        _write_figure(restoration_figure(*examples), figure)


ClassificationData = Annotated[
    str, typer.Option("--data", help="A built-in classification dataset (losslab data list).")
]
DepthOption = Annotated[int, typer.Option(min=0, help="Hidden layers of the ReLU MLP.")]
WidthOption = Annotated[int, typer.Option(min=1, help="Units per hidden layer.")]
EpochsOption = Annotated[int, typer.Option(min=0, help="SGD epochs before the analysis.")]
DecayOption = Annotated[float, typer.Option(help="Weight decay lambda of the squared loss.")]
NTrainOption = Annotated[int | None, typer.Option(help="Training samples (default: all).")]


def _trained_mlp(
    data: str,
    depth: int,
    width: int,
    epochs: int,
    weight_decay: float,
    n_train: int | None,
    seed: int,
    float32: bool = False,
    device: Any = "cpu",
) -> tuple[Any, Any]:
    """A ReLU MLP trained by SGD on the weight-decayed squared loss, with a progress bar;
    drawn on the CPU (the same start on every device), trained and returned, with its
    data, on ``device``."""
    import math

    import torch
    from rich.progress import Progress

    from losslab.critical import classification_data, train_squared_loss
    from losslab.nets import ReLUMLP

    inputs, targets = classification_data(data, n_train, seed=seed)
    dtype = torch.float32 if float32 else torch.float64
    inputs, targets = inputs.to(device, dtype), targets.to(device, dtype)
    model = ReLUMLP(inputs.shape[1], [width] * depth, targets.shape[1], seed=seed, dtype=dtype)
    model = model.to(device)
    total = epochs * math.ceil(len(inputs) / 32)
    with Progress(console=_out(), transient=True) as progress:
        task = progress.add_task(f"SGD on {data}", total=total)
        train_squared_loss(model, inputs, targets, weight_decay=weight_decay, epochs=epochs,
                           momentum=0.9, seed=seed,
                           on_step=lambda step: progress.update(task, completed=step))  # fmt: skip
    return model, (inputs, targets)


def _trained_square_net(
    depth: int, epochs: int, n_train: int | None, seed: int, float32: bool, device: Any = "cpu"
) -> tuple[Any, Any]:
    """SquareNet(64, depth) trained as an autoencoder on the first digits (scaled to
    [0, 1]), with a progress bar, on ``device``; the data are ``(images, images)``."""
    import torch
    from rich.progress import Progress

    from losslab.fixedpoints import digits_unit, train_autoencoder
    from losslab.nets import SquareNet

    images, _ = digits_unit(n_train or 200)
    images = images.to(device)
    dtype = torch.float32 if float32 else torch.float64
    net = SquareNet(64, depth, seed=seed).to(device)
    with Progress(console=_out(), transient=True) as progress:
        task = progress.add_task("training the autoencoder", total=epochs)

        def advance(epoch: int, loss: float) -> None:
            progress.update(task, completed=epoch)

        train_autoencoder(net, images, epochs=epochs, lr=1e-2, batch_size=64, seed=seed,
                          record_tails=False, callback=advance)  # fmt: skip
    net = net.to(dtype).eval()
    return net, (images.to(dtype), images.to(dtype))


def _model_title(data: str, depth: int, width: int, epochs: int, weight_decay: float) -> str:
    return f"ReLU MLP ({depth} x {width}) on {data}, {epochs} epochs, weight decay {weight_decay:g}"


@critical_app.command("spectrum")
def critical_spectrum(
    data: ClassificationData = "digits",
    depth: DepthOption = 2,
    width: WidthOption = 32,
    epochs: EpochsOption = 20,
    weight_decay: DecayOption = 1e-3,
    n_train: NTrainOption = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed of the weights, data and probes.")
    ] = 0,
    k: Annotated[int, typer.Option("--k", min=1, help="Eigenpairs at each end.")] = 5,
    tol: Annotated[float, typer.Option(help="Relative residual of the eigenpairs.")] = 1e-6,
    gauss_newton: Annotated[bool, typer.Option(help="The Gauss-Newton matrix instead.")] = False,
    float32: Annotated[bool, typer.Option(help="Analyse in float32.")] = False,
    model_family: Annotated[
        ModelFamily,
        typer.Option(
            "--model",
            help="mlp: a ReLU MLP classifier on --data; square: SquareNet(64, depth) trained "
            "as an autoencoder on the digits (P5).",
        ),
    ] = ModelFamily.mlp,
    figure: Annotated[Path | None, typer.Option(help="Write the density (PNG) here.")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Extreme eigenpairs (Lanczos), trace (Hutch++) and spectral density (stochastic
    Lanczos quadrature) of the Hessian of the training error E of a briefly trained model."""
    _check_writable(figure, "--figure")
    where = _device(device)
    if not (0 < tol < 1):
        raise LosslabError(
            f"--tol must lie in (0, 1) (relative to the largest eigenvalue); got {tol}"
        )
    from losslab.critical import squared_error
    from losslab.linalg import GaussNewtonOperator, HessianOperator

    if model_family == ModelFamily.square:
        unused = [option for option, value, default in (("--data", data, "digits"),
                  ("--width", width, 32), ("--weight-decay", weight_decay, 1e-3))
                  if value != default]  # fmt: skip
        if unused or depth < 1:
            why = f"it does not use {', '.join(unused)}" if unused else "it needs --depth >= 1"
            raise LosslabError(
                f"--model square trains SquareNet(64, depth) as an autoencoder on the digits: "
                f"{why} (it takes --depth, --epochs, --n-train, --seed)"
            )
        model, batch = _trained_square_net(depth, epochs, n_train, seed, float32, where)
        title = f"SquareNet(64, {depth}) autoencoder on digits, {epochs} epochs"
    else:
        model, batch = _trained_mlp(data, depth, width, epochs, weight_decay, n_train, seed,
                                    float32, where)  # fmt: skip
        title = _model_title(data, depth, width, epochs, weight_decay)
    kind = GaussNewtonOperator if gauss_newton else HessianOperator
    operator = kind(model, squared_error, batch)
    console = _out()
    with console.status("Lanczos ..."):
        top = operator.eigenpairs(k, tol=tol, seed=seed)
        bottom = operator.eigenpairs(k, which="smallest", tol=tol, seed=seed)
        trace = operator.trace(seed=seed)
        density = operator.density(seed=seed)
    name = "Gauss-Newton" if gauss_newton else "Hessian"
    table = Table(title=f"{name} of E: {title}, {operator.dim} parameters")
    for column in ("end", "#", "eigenvalue", "residual ||Hv - lambda v||"):
        table.add_column(column)
    for end, pairs in (("largest", top), ("smallest", bottom)):
        for i, (value, residual) in enumerate(zip(pairs.values.tolist(), pairs.residuals.tolist(),
                                                  strict=True)):  # fmt: skip
            table.add_row(end if i == 0 else "", str(i + 1), f"{value:.6g}", f"{residual:.1e}")
    console.print(table)
    for end, pairs in (("largest", top), ("smallest", bottom)):
        state = "converged" if pairs.converged else f"[yellow]not converged[/] ({pairs.reason})"
        console.print(f"{end}: {state}, {pairs.matvecs} products, {pairs.seconds:.2f} s")
    console.print(f"trace (Hutch++, {trace.matvecs} products): {trace.value:.6g} "
                  f"+- {trace.std_error:.2g}; density: {density.matvecs} products")  # fmt: skip
    if figure is not None:
        from matplotlib.figure import Figure

        plot = Figure(figsize=(6, 3.5))
        axes = plot.subplots()
        axes.semilogy(density.grid.cpu().numpy(), density.curve.clamp_min(1e-12).cpu().numpy())
        axes.set_xlabel("eigenvalue")
        axes.set_ylabel("density (smoothed)")
        axes.set_title(f"{name} spectral density (SLQ)")
        plot.tight_layout()
        _write_figure(plot, figure)


@critical_app.command("classify")
def critical_classify(
    data: ClassificationData = "wine",
    depth: DepthOption = 1,
    width: WidthOption = 16,
    epochs: EpochsOption = 150,
    weight_decay: DecayOption = 1e-2,
    n_train: NTrainOption = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed of the weights and data.")
    ] = 0,
    max_iter: Annotated[int, typer.Option(min=1, help="Critical-point search iterations.")] = 50,
    figure: Annotated[
        Path | None, typer.Option(help="Write the Hessian's eigenvalues (PNG) here.")
    ] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Train an MLP, refine its end point to a critical point of the weight-decayed loss
    on its activation region (find_critical_point on the region's polynomial), say whether it
    stayed in the region, classify it by the Hessian of the region it ends in (the network's
    own loss there), and certify strong convexity there."""
    _check_writable(figure, "--figure")
    where = _device(device)
    import torch

    from losslab.critical import classify, find_critical_point, region_objective, strong_convexity

    model, batch = _trained_mlp(data, depth, width, epochs, weight_decay, n_train, seed,
                                device=where)  # fmt: skip
    objective = region_objective(model, batch, weight_decay)
    console = _out()
    with console.status("searching for a critical point ..."):
        search = find_critical_point(objective.function, objective.theta, max_iter=max_iter)
        assert isinstance(search.params, torch.Tensor)
        inside = objective.contains(search.params)
        torch.nn.utils.vector_to_parameters(search.params, model.parameters())
        # classified on the polynomial of the region the end point lies in: the network's loss
        final = region_objective(model, batch, weight_decay)
        point = classify(final.function, final.theta)
        region = strong_convexity(model, batch, weight_decay)
    where = "inside its region" if inside else "[yellow]outside its start's region[/]"
    console.print(
        f"{search.method}: {search.reason} after {search.iterations} iterations, "
        f"||grad|| {search.gradient_norm:.2e} (from {search.gradient_norms[0]:.2e}), {where}"
    )
    table = Table(title=f"{_model_title(data, depth, width, epochs, weight_decay)}: "
                        f"{objective.theta.numel()} parameters")  # fmt: skip
    table.add_column("quantity")
    table.add_column("value")
    rows = [
        ("kind", point.kind), ("Morse index", str(point.morse_index)),
        ("nullity", str(point.nullity)), ("smallest eigenvalue", f"{point.min_eigenvalue:.4g}"),
        ("largest eigenvalue", f"{point.max_eigenvalue:.4g}"),
        ("training error E", f"{region.training_error:.4g}"),
        ("threshold E*", f"{region.error_threshold:.3g}"),
        ("below threshold", str(region.below_threshold)),
        ("proven lower bound", f"{region.lower_bound:.4g}"),
        ("region margin", f"{region.margin:.3g}"),
        ("strongly convex in region", str(region.strongly_convex)),
        ("isolated minimum", str(region.isolated_minimum)),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if figure is not None:
        from matplotlib.figure import Figure

        plot = Figure(figsize=(6, 3.5))
        axes = plot.subplots()
        values = point.eigenvalues.cpu().numpy()
        axes.hist(values, bins=80, color="C0")
        axes.set_xscale("symlog", linthresh=max(point.zero_tol, 1e-12))
        axes.set_yscale("log")
        axes.axvline(0, color="k", lw=0.6)
        axes.set_xlabel("Hessian eigenvalue (symmetric log scale)")
        axes.set_ylabel("count")
        axes.set_title(f"{point.kind}: Morse index {point.morse_index}, nullity {point.nullity}")
        plot.tight_layout()
        _write_figure(plot, figure)


@critical_app.command("slice")
def critical_slice(
    data: ClassificationData = "digits",
    depth: DepthOption = 2,
    width: WidthOption = 32,
    epochs: EpochsOption = 20,
    weight_decay: DecayOption = 1e-3,
    n_train: NTrainOption = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed of the weights, data and directions.")
    ] = 0,
    kind: Annotated[SliceKind, typer.Option(help="Contour, surface or a line.")] = (
        SliceKind.contour
    ),
    points: Annotated[int, typer.Option(min=2, help="Grid points per axis.")] = 25,
    span: Annotated[float, typer.Option(help="Half-width of the grid in direction units.")] = 1.0,
    figure: Annotated[Path, typer.Option(help="Write the slice (PNG) here.")] = Path("slice.png"),
    device: DeviceOption = "cpu",
) -> None:
    """Loss of a briefly trained MLP along filter-normalised random directions (Li et al.
    2018): a 1-D line or a 2-D contour / surface, written as a PNG."""
    _check_writable(figure, "--figure")
    where = _device(device)
    if not (0 < span < math.inf):
        raise LosslabError(f"--span must be a positive number; got {span}")
    from losslab.critical import plot_slice_1d, plot_slice_2d, slice_1d, slice_2d, squared_error

    model, batch = _trained_mlp(data, depth, width, epochs, weight_decay, n_train, seed,
                                device=where)  # fmt: skip
    console = _out()
    with console.status("evaluating the grid ..."):
        if kind == SliceKind.line:
            line = slice_1d(model, squared_error, batch, span=(-span, span), n_points=points,
                            seed=seed)  # fmt: skip
            plot, losses, centre = plot_slice_1d(line), line.losses, line.center_loss
        else:
            plane = slice_2d(model, squared_error, batch, span=(-span, span), n_points=points,
                             seed=seed)  # fmt: skip
            plot = plot_slice_2d(plane, kind="surface" if kind == SliceKind.surface else "contour")
            losses, centre = plane.losses, plane.center_loss
    finite = losses[losses.isfinite()]
    table = Table(title=f"{_model_title(data, depth, width, epochs, weight_decay)}: "
                        f"{kind.value} slice", show_header=False)  # fmt: skip
    for name, value in (
        ("directions", "filter-normalised Gaussian (Li et al. 2018), biases excluded"),
        ("grid", f"{points} points per axis over [-{span:g}, {span:g}]"),
        ("E at the centre", f"{centre:.6g}"),
        ("smallest E on the grid", f"{float(finite.min()):.6g}"),
        ("largest E on the grid", f"{float(finite.max()):.6g}"),
        ("non-finite grid points", str(int(losses.numel() - finite.numel()))),
    ):
        table.add_row(name, value)
    console.print(table)
    _write_figure(plot, figure)


@app.command()
def reproduce(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Registered experiment names or FILE.py:OBJECT; default: all."),
    ] = None,
    preset: Annotated[Preset, typer.Option(help="Grid size.")] = Preset.quick,
    store: StoreOption = DEFAULT_STORE,
    out: Annotated[Path, typer.Option(help="Folder of the HTML report.")] = DEFAULT_OUT,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Local Dask worker processes (0: run in this process)."),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running Dask scheduler, tcp://HOST:PORT.")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run cells stored as failed again.")] = False,
    report: Annotated[bool, typer.Option(help="Write the HTML report at the end.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run experiments' grids (skipping stored cells) and write the report."""
    from losslab.engine import run_sweep
    from losslab.experiments import LoadedExperiment, load_experiment, registered_experiments
    from losslab.store import ResultStore

    console = _out()
    if report:
        _check_folder(out, "--out")
    address = r"([a-z]+://)?(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d+"  # [SCHEME://]HOST:PORT
    if scheduler is not None and not re.fullmatch(address, scheduler):
        raise LosslabError(
            f"--scheduler {scheduler!r}: give the address of a running Dask scheduler, "
            "tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786)"
        )
    if names:
        loaded = [load_experiment(name) for name in names]
    else:
        loaded = [LoadedExperiment(e, n) for n, e in registered_experiments().items()]
    if not loaded:
        console.print(
            "No experiments are registered yet; pass your own as FILE.py:OBJECT (see the README)."
        )
        return
    summaries = []
    with ResultStore(store) as results:
        for item in loaded:
            summaries.append(
                run_sweep(
                    item.experiment,
                    preset=preset.value,
                    store=results,
                    workers=workers,
                    scheduler=scheduler,
                    retry_failed=retry_failed,
                    progress=progress,
                    source=item.source,
                )
            )
        table = Table(title=f"sweep summary (preset {preset.value}, store {store})")
        for column in ("experiment", "cells", "done", "skipped", "failed", "seconds"):
            table.add_column(column, justify="left" if column == "experiment" else "right")
        for s in summaries:
            failed = f"[red]{s.failed}[/]" if s.failed else "0"
            if s.failed_before:
                failed += f" (+[red]{s.failed_before}[/] stored)"
            table.add_row(
                s.experiment, str(s.total), str(s.done), str(s.skipped), failed, f"{s.seconds:.1f}"
            )
        console.print(table)
        broken = 0
        if report:
            given = {i.experiment.name: i.experiment for i in loaded}
            broken = _write_report(results, out, given, preset.value)
    n_failed = sum(s.failed + s.failed_before for s in summaries)
    if n_failed:
        before = sum(s.failed_before for s in summaries)
        earlier = f" ({before} stored as failed by an earlier run)" if before else ""
        console.print(
            f"[red]{n_failed} cell(s) failed[/]{earlier}: see `losslab results --store {store} "
            "--status failed`; rerun with --retry-failed"
        )
    if n_failed or broken:
        raise typer.Exit(1)


@app.command()
def results(
    store: StoreOption = DEFAULT_STORE,
    experiment: Annotated[str | None, typer.Option(help="Only this experiment.")] = None,
    status: Annotated[StatusFilter | None, typer.Option(help="Only cells of this status.")] = None,
    csv: Annotated[Path | None, typer.Option(help="Also write the rows to this CSV file.")] = None,
) -> None:
    """A table of stored cells; --csv exports them."""
    _check_writable(csv, "--csv")
    from losslab.store import ResultStore

    with ResultStore(store, read_only=True) as results:
        frame = results.frame(experiment, status=status.value if status else None)
    console = _out()
    if frame.empty:
        console.print("No stored cells match.")
        return
    if csv is not None:
        frame.to_csv(csv, index=False)
        console.print(f"Wrote {len(frame)} rows to {csv}")
    hidden = {"error", "started_at", "finished_at", "host"}
    columns = [c for c in frame.columns if c not in hidden]
    shown = columns[:MAX_RESULT_COLUMNS]
    failed = "status" in frame.columns and bool((frame["status"] == "failed").any())
    if failed and "error" in frame.columns:
        shown = [*shown[: MAX_RESULT_COLUMNS - 1], "error"]
    table = Table(title=f"{len(frame)} cells in {store}")
    for column in shown:
        table.add_column(str(column), overflow="fold")
    for row in frame[shown].itertuples(index=False):
        table.add_row(*(_cell_text(c, value) for c, value in zip(shown, row, strict=True)))
    console.print(table)
    rest = [c for c in columns if c not in shown]
    if rest:
        console.print(f"{len(rest)} more columns ({', '.join(map(str, rest[:6]))}"
                      f"{', ...' if len(rest) > 6 else ''}): --csv writes them all")  # fmt: skip


#: ``losslab results`` shows this many columns in the terminal (``--csv`` writes all).
MAX_RESULT_COLUMNS = 8


def _cell_text(column: str, value: Any) -> str:
    if column == "key":
        return str(value)[:10]
    if column == "error":  # the exception's own line, the last of the traceback
        lines = [line for line in str(value or "").splitlines() if line.strip()]
        return lines[-1] if lines else ""
    if column == "status" and value == "failed":
        return "[red]failed[/]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command()
def report(
    store: StoreOption = DEFAULT_STORE,
    out: Annotated[Path, typer.Option(help="Folder of the HTML report.")] = DEFAULT_OUT,
    preset: Annotated[
        Preset | None,
        typer.Option(help="Only the cells of this preset's grid (default: every stored cell)."),
    ] = None,
) -> None:
    """Write the static HTML report of every experiment in the store."""
    from losslab.store import ResultStore

    with ResultStore(store, read_only=True) as results:
        _check_folder(out, "--out")
        if _write_report(results, out, None, preset.value if preset else None):
            raise typer.Exit(1)


def _check_folder(path: Path, option: str) -> None:
    """Fail before the work: ``path`` is created as a folder and must be writable."""
    if path.exists() and not path.is_dir():
        raise LosslabError(f"{option} {str(path)!r} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LosslabError(f"{option} {str(path)!r}: cannot create it ({error})") from None
    if not os.access(path, os.W_OK):
        raise LosslabError(f"{option} {str(path)!r} is not writable")


def _write_report(
    results: Any, out: Path, experiments: dict[str, Any] | None, preset: str | None
) -> int:
    """Write the report (over ``preset``'s cells, or every stored cell) and print its
    claims table; returns the number of experiments whose figures or claims could not be
    made (listed under Problems in the report)."""
    from losslab.report import write_report

    written = write_report(results, out, experiments=experiments, preset=preset)
    console = _out()
    if written.sections:
        cells = f"cells of the {preset} grid" if preset else "every stored cell"
        table = Table(title=f"claims ({cells})")
        for column in ("experiment", "cells done", "failed", "claims passed"):
            table.add_column(column)
        for s in written.sections:
            ok = s.claims_passed == len(s.claims)
            passed = f"[{'green' if ok else 'red'}]{s.claims_passed} / {len(s.claims)}[/]"
            table.add_row(s.name, str(s.done), str(s.failed), passed)
        console.print(table)
    console.print(f"Report: {written.index.resolve()}")
    raised = ("figures() raised", "claims() raised")
    broken = [s.name for s in written.sections
              if any(p.startswith(raised) for p in s.problems)]  # fmt: skip
    if broken:
        console.print(
            f"[red]figures() or claims() raised[/] for {', '.join(broken)}: the tracebacks "
            "are under Problems in the report"
        )
    return len(broken)


#: What Ctrl-C prints (exit status 130): a sweep keeps its finished cells; nothing else
#: keeps anything.
INTERRUPTED_SWEEP = "interrupted: finished cells are stored; run the same command to go on"
INTERRUPTED = "interrupted: nothing was saved"


def _interrupted_message(args: list[str]) -> str:
    command = next((arg for arg in args if not arg.startswith("-")), "")
    return INTERRUPTED_SWEEP if command == "reproduce" else INTERRUPTED


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``losslab`` command."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    err = Console(stderr=True)
    try:
        app(args=args, prog_name="losslab")
    except SystemExit as exit_:
        # Typer turns Ctrl-C (KeyboardInterrupt) into exit status 130 before it gets here.
        if exit_.code == 130:
            err.print(_interrupted_message(args))
        raise
    except LosslabError as error:
        if debug:
            raise
        err.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print(_interrupted_message(args))
        sys.exit(130)
    except Exception as error:
        if debug:
            raise
        err.print(
            f"[red]internal error:[/] {type(error).__name__}: {error} "
            "(rerun with --debug for the traceback, and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
