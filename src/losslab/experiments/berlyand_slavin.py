r"""Experiment ``berlyand-slavin``: fixed points of deep square networks (P5).

Five parts, each a kind of cell:

- ``gaussian``: untrained sigmoid ``SquareNet(N, L)`` with Gaussian weights over a grid
  of ``N``, ``L`` and seeds: the number of fixed points, found by the batched search and,
  for ``N <= CERTIFY_MAX_N``, proved by interval branch-and-bound (Krawczyk); every
  search also records its index check (the fixed-point indices of a complete set sum to
  1: :mod:`losslab.fixedpoints.search`).
- ``heavy``: the same with Cauchy weights (``weight_scale = 64``: below about 32 almost
  every net has one fixed point): ``Q(N, L)``, the mean number of fixed points, over
  ``L`` for ``N = 3`` and over ``N`` for ``L = 3``, with the proof where it runs.
- ``trained``: ``SquareNet(64, L)`` trained as a denoising autoencoder (input noise 0.3)
  on 10 ``digits`` (scaled to [0, 1]) or 10 ``lfw_faces`` images (25 x 25, averaged
  down to 8 x 8), from Gaussian and from Cauchy initialisation (``weight_scale = 1``):
  fixed points after training (search from random starts and from the stored images),
  their kinds and basins, the power-law exponent of each layer's ``W^T W`` eigenvalue
  tail before and after training, and restoration of damaged images (masked 4x4 block,
  20% salt and pepper, Gaussian noise 0.2), stored ones and unseen ones: PSNR before and
  after iterating the map to its attractor, and the accuracy of a logistic-regression
  classifier trained on clean images (digit classes; faces vs non-faces).
- ``spectra``: eigenvalues and squared singular values of the input-output Jacobian at
  random inputs and at fixed points over an ensemble of nets; for Gaussian weights, the
  free-probability prediction of the squared singular values' density.

Scales (the paper leaves them open): Gaussian ``weight_scale = 1``, Cauchy
``weight_scale = 64`` for untrained nets, biases of the same law with ``bias_scale = 1``;
see :mod:`losslab.nets.square` for the ``N`` scalings.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure

from losslab.experiments.protocol import Claim
from losslab.fixedpoints.certify import certify_fixed_points
from losslab.fixedpoints.search import find_fixed_points
from losslab.nets import SquareNet

if TYPE_CHECKING:
    import pandas as pd

#: Largest N whose count is proved by interval branch-and-bound in the grids.
CERTIFY_MAX_N = 4
#: Boxes a proof may evaluate: a budget of work, not of seconds, so that whether a proof
#: completes does not depend on the machine or its load (the hardest quick-preset net,
#: N = 3, L = 8, seed 4, needs about 108,000).
CERTIFY_MAX_BOXES = 400_000
#: Weight scale of the untrained heavy-tailed (Cauchy) nets.
CAUCHY_SCALE = 64.0
#: Weight scale of the Cauchy initialisation of trained nets (larger ones train poorly).
TRAINED_CAUCHY_SCALE = 1.0
#: Width and depth of the Q(N, L) slices.
N0, L0 = 3, 3
#: Names of the initialisations and the corruptions in the figures.
INIT_NAMES = {"gaussian": "Gaussian", "cauchy": "Cauchy"}
CORRUPTION_LABELS = {"mask": "4x4 block\nmasked", "noise": "Gaussian noise\n(sigma 0.2)",
                     "salt_pepper": "salt and pepper\n(20% of pixels)"}  # fmt: skip


def _count(cell: dict[str, Any]) -> dict[str, Any]:
    gaussian = cell["part"] == "gaussian"
    net = SquareNet(cell["N"], cell["L"], init="gaussian" if gaussian else "cauchy",
                    weight_scale=1.0 if gaussian else CAUCHY_SCALE, seed=cell["seed"])  # fmt: skip
    found = find_fixed_points(net, n_starts=cell["starts"], seed=cell["seed"])
    row: dict[str, Any] = {
        "count": found.count,
        "attractors": sum(kind == "attractor" for kind in found.kinds),
        "index_sum": found.index_sum,
        "index_consistent": found.index_consistent,
        "search_rounds": found.rounds,
        "search_seconds": found.seconds,
        "certified": None,
        "certified_count": None,
    }
    if cell["N"] <= CERTIFY_MAX_N:
        proof = certify_fixed_points(net, max_boxes=CERTIFY_MAX_BOXES, time_limit=math.inf)
        row.update(
            certified=proof.status == "certified",
            certified_count=proof.count,
            certify_seconds=proof.seconds,
            certify_boxes=proof.boxes_processed,
        )
    return row


def _tail_alphas(net: SquareNet) -> list[float]:
    """Power-law exponent of each layer's ``W^T W`` eigenvalue tail (WeightWatcher style)."""
    from losslab.fixedpoints.training import layer_tails

    return [float(tail.esd.alpha) for tail in layer_tails(net)]


def _trained(cell: dict[str, Any]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from losslab.fixedpoints.restore import mean_psnr, restore, standard_corruptions
    from losslab.fixedpoints.training import digits_unit, faces_unit, train_autoencoder

    images, labels = faces_unit(8) if cell.get("data") == "faces" else digits_unit()
    order = np.random.default_rng(cell["seed"]).permutation(len(labels))
    n_unseen = min(200, len(labels) // 4)
    # the classifier learns from the other images: neither stored (it would recognise its
    # own training images) nor unseen
    stored, test = order[: cell["n_train"]], order[-n_unseen:]
    rest = order[cell["n_train"] : -n_unseen]
    scale = 1.0 if cell["init"] == "gaussian" else TRAINED_CAUCHY_SCALE
    net = SquareNet(64, cell["L"], init=cell["init"], weight_scale=scale, seed=cell["seed"])
    alphas_before = _tail_alphas(net)
    training = train_autoencoder(net, images[stored], epochs=cell["epochs"], lr=cell["lr"],
                                 batch_size=64, seed=cell["seed"],
                                 input_noise=cell["input_noise"], record_tails=False)  # fmt: skip
    alphas_after = _tail_alphas(net)
    with torch.no_grad():
        found = find_fixed_points(net, starts=images[stored], n_starts=cell["starts"],
                                  seed=cell["seed"])  # fmt: skip
    classifier = LogisticRegression(max_iter=2000).fit(images[rest].numpy(), labels[rest])
    corruptions = standard_corruptions(cell["seed"])
    restoration: dict[str, dict[str, float]] = {}
    examples: dict[str, np.ndarray] = {}
    for split, rows in (("stored", stored), ("unseen", test)):
        clean = images[rows]
        for name, corrupt in corruptions.items():
            damaged = corrupt(clean)
            with torch.no_grad():
                result = restore(net, damaged, max_iter=500)
            restoration[f"{split}/{name}"] = {
                "psnr_before": mean_psnr(clean, damaged),
                "psnr_after": mean_psnr(clean, result.images),
                "converged": float(result.converged.double().mean()),
                "accuracy_corrupted": float(classifier.score(damaged.numpy(), labels[rows])),
                "accuracy_restored": float(classifier.score(result.images.numpy(), labels[rows])),
            }
            if split == "stored" and name == "mask":
                examples = {"clean": clean[:8].numpy(), "damaged": damaged[:8].numpy(),
                            "restored": result.images[:8].numpy()}  # fmt: skip
    return {
        "final_loss": float(training.loss[-1]),
        "count": found.count,
        "attractors": sum(kind == "attractor" for kind in found.kinds),
        "kinds": list(found.kinds),
        "index_sum": found.index_sum,
        "index_consistent": found.index_consistent,
        "search_rounds": found.rounds,
        "basin_fraction": [float(b) for b in found.basin_fraction.tolist()],
        "unassigned_fraction": float(found.unassigned_fraction),
        "alpha_before": alphas_before,
        "alpha_after": alphas_after,
        "restoration": restoration,
        "arrays": {"loss": np.asarray(training.loss, dtype=float), **examples},
    }


def _spectra(cell: dict[str, Any]) -> dict[str, Any]:
    from losslab.fixedpoints.spectra import (
        free_probability_singular_density,
        jacobian_spectrum,
    )

    scale = 1.0 if cell["init"] == "gaussian" else TRAINED_CAUCHY_SCALE
    generator = torch.Generator().manual_seed(cell["seed"])
    singular, eigen_moduli, at_fixed = [], [], []
    for seed in range(cell["nets"]):
        net = SquareNet(cell["N"], cell["L"], init=cell["init"], weight_scale=scale,
                        seed=1000 * cell["seed"] + seed)  # fmt: skip
        points = torch.rand(cell["points"], cell["N"], generator=generator, dtype=torch.float64)
        spectrum = jacobian_spectrum(net, points)
        singular.append(spectrum.singular_values_sq.flatten())
        eigen_moduli.append(spectrum.eigenvalues.abs().flatten())
        found = find_fixed_points(net, n_starts=64, seed=seed, basin_starts=0)
        if found.count:
            at_fixed.append(jacobian_spectrum(net, found.points).singular_values_sq.flatten())
    arrays = {
        "squared_singular_values": torch.cat(singular).numpy(),
        "eigenvalue_moduli": torch.cat(eigen_moduli).numpy(),
        "at_fixed_points": torch.cat(at_fixed).numpy() if at_fixed else np.zeros(0),
    }
    if cell["init"] == "gaussian":
        law = free_probability_singular_density(cell["L"], "sigmoid", 1.0, 1.0)
        arrays.update(prediction_grid=np.asarray(law.grid),
                      prediction_density=np.asarray(law.density))  # fmt: skip
    return {"arrays": arrays}


RUNNERS = {
    "gaussian": _count,
    "heavy": _count,
    "trained": _trained,
    "spectra": _spectra,
}


class BerlyandSlavin:
    """Fixed points of square sigmoid networks (module docstring)."""

    name = "berlyand-slavin"
    paper = "Berlyand & Slavin (2025), Fixed Points of Deep Neural Networks"
    version = 4

    def grid(self, preset: str) -> list[dict[str, Any]]:
        full = preset == "full"
        seeds = range(40 if full else 8)
        starts = 2000 if full else 1000
        cells: list[dict[str, Any]] = [
            {"part": "gaussian", "N": N, "L": L, "seed": seed, "starts": starts}
            for N in ((2, 3, 4, 8, 16) if full else (2, 4))
            for L in ((1, 2, 4, 8) if full else (1, 2, 4))
            for seed in seeds[:4]
        ]
        for_L = (1, 2, 3, 4, 6, 8, 12) if full else (1, 2, 3, 4, 6, 8)
        for_N = (2, 3, 4, 5, 6) if full else (2, 3, 4)
        cells += [{"part": "heavy", "N": N0, "L": L, "seed": seed, "starts": starts}
                  for L in for_L for seed in seeds]  # fmt: skip
        cells += [{"part": "heavy", "N": N, "L": L0, "seed": seed, "starts": starts}
                  for N in for_N if N != N0 for seed in seeds]  # fmt: skip
        cells += [{"part": "trained", "data": data, "init": init, "L": L, "seed": seed,
                   "n_train": 10, "epochs": 1500, "lr": 1e-2, "input_noise": 0.3,
                   "starts": 1000 if full else 300}
                  for data in ("digits", "faces")
                  for init in ("gaussian", "cauchy")
                  for L in ((1, 2, 3) if full else (2,))
                  for seed in range(3 if full else 1)]  # fmt: skip
        cells += [{"part": "spectra", "init": init, "N": N, "L": L, "nets": 10 if full else 4,
                   "points": 20, "seed": 0}
                  for init in ("gaussian", "cauchy")
                  for N in ((64, 200) if full else (64,))
                  for L in ((1, 2, 4) if full else (2,))]  # fmt: skip
        return cells

    def run(self, cell: dict[str, Any]) -> dict[str, Any]:
        return RUNNERS[cell["part"]](cell)

    def figures(self, frame: pd.DataFrame) -> list[Figure]:
        figures = []
        counts = frame[frame["part"].isin(["gaussian", "heavy"])]
        if not counts.empty:
            figures.append(_count_figure(counts))
        spectra = frame[frame["part"] == "spectra"]
        if not spectra.empty:
            figures.append(_spectra_figure(spectra))
        trained = frame[frame["part"] == "trained"]
        if not trained.empty:
            from losslab.fixedpoints.restore import restoration_figure

            # cells without a "data" key trained on digits (see _trained)
            data = trained["data"].fillna("digits") if "data" in trained else "digits"
            trained = trained.assign(data=data)
            figures.append(_restoration_figure(trained))
            first = trained.iloc[0]
            clean, damaged, restored = (torch.as_tensor(first["arrays"][k])
                                        for k in ("clean", "damaged", "restored"))  # fmt: skip
            examples = restoration_figure(clean, damaged, restored)
            examples.suptitle(
                f"{len(clean)} of the {int(first['n_train'])} stored {first['data'][:-1]} "
                f"images with a 4x4 block masked, restored by SquareNet(64, L = {int(first['L'])}) "
                f"({INIT_NAMES.get(first['init'], first['init'])} init, seed "
                f"{int(first['seed'])})\nunder each image: its PSNR against the clean one (dB)",
                fontsize=10,
            )
            figures.append(examples)
        return figures

    def claims(self, frame: pd.DataFrame) -> list[Claim]:
        claims = []
        gaussian = frame[frame["part"] == "gaussian"]
        if not gaussian.empty:
            one = gaussian["count"] == 1
            proved = gaussian[gaussian["certified"] == True]  # noqa: E712
            claims.append(Claim(
                "untrained networks with Gaussian weights have exactly one fixed point",
                f"{int(one.sum())} of {len(gaussian)} nets have one fixed point "
                f"(N in {sorted({int(v) for v in gaussian['N']})}, "
                f"L in {sorted({int(v) for v in gaussian['L']})}); "
                f"{len(proved)} counts proved, "
                f"{int((proved['certified_count'] == 1).sum())} of them equal to 1",
                bool(one.all()),
            ))  # fmt: skip
        counts = frame[frame["part"].isin(["gaussian", "heavy"])]
        proved = counts[counts["certified"] == True]  # noqa: E712
        incomplete = counts[counts["certified"] == False]  # noqa: E712
        if not proved.empty:
            agree = proved["certified_count"] == proved["count"]
            checked = counts["index_consistent"] == True  # noqa: E712
            claims.append(Claim(
                "the search finds exactly the proved number of fixed points (losslab's own "
                "exactness)",
                f"{int(agree.sum())} of {len(proved)} proved counts equal the search's count"
                + (f"; {len(incomplete)} proofs incomplete within {CERTIFY_MAX_BOXES:,} boxes "
                   "(not compared, and the claim is not shown while any is)"
                   if len(incomplete) else "")
                + f"; the fixed-point indices of the search's points sum to 1 (the index "
                f"theorem's necessary condition) on {int(checked.sum())} of {len(counts)} nets",
                bool(agree.all()) and incomplete.empty,
            ))  # fmt: skip
        heavy = frame[(frame["part"] == "heavy") & (frame["N"] == N0)]
        if not heavy.empty:
            q = _exact_counts(heavy).groupby(heavy["L"]).mean().sort_index()
            peak = q.idxmax()
            rises = q.max() > q.iloc[0]
            # back toward 1: below the peak, and at least half of the way from it to 1
            falls = q.iloc[-1] < q.max() and q.iloc[-1] - 1 <= (q.max() - 1) / 2
            claims.append(Claim(
                "Q(N0, L) is non-monotone in L: it rises, then falls back toward 1 (untrained "
                "nets with Cauchy weights)",
                f"mean count over L (N = {N0}, untrained, Cauchy, weight_scale "
                f"{CAUCHY_SCALE:g}; the proved count where the proof completed, else the "
                "search's): " + ", ".join(f"L={L}: {v:.2f}" for L, v in q.items())
                + f"; peak at L = {peak}; passes when the peak is inside the range of L and "
                "the deepest value is at least halfway back from the peak to 1",
                bool(rises and falls and peak not in (q.index[0], q.index[-1])),
            ))  # fmt: skip
        trained = frame[frame["part"] == "trained"]
        if not trained.empty:
            kinds = [k for row in trained["kinds"] for k in row]
            attractors = sum(k == "attractor" for k in kinds)
            checked = trained["index_consistent"] == True  # noqa: E712
            retried = int((trained["search_rounds"] > 1).sum())
            claims.append(Claim(
                "fixed points of trained networks are stable attractors",
                f"{attractors} of {len(kinds)} fixed points of {len(trained)} trained nets "
                f"are attractors (no proof at N = 64; the points' indices sum to 1, as the "
                f"index theorem requires of a complete set, on {int(checked.sum())} of "
                f"{len(trained)} nets; {retried} needed a second search round)",
                bool(kinds) and attractors == len(kinds),
            ))  # fmt: skip
            tails = {
                init: (np.median([a for row in group["alpha_before"] for a in row]),
                       np.median([a for row in group["alpha_after"] for a in row]))
                for init, group in trained.groupby("init")
            }  # fmt: skip
            claims.append(Claim(
                "training makes the weights heavy-tailed (smaller power-law exponent of the "
                "W^T W eigenvalue tail)",
                "median tail exponent, before -> after training: "
                + ", ".join(f"{init!s} init {b:.2f} -> {a:.2f}" for init, (b, a) in tails.items()),
                all(a < b for b, a in tails.values()),
            ))  # fmt: skip
            gains = {
                name: float(np.mean([r[name]["psnr_after"] - r[name]["psnr_before"]
                                     for r in trained["restoration"]]))
                for name in trained["restoration"].iloc[0]
            }  # fmt: skip
            stored = {k: v for k, v in gains.items() if k.startswith("stored/")}
            claims.append(Claim(
                "iterating a trained network to its attractor restores damaged images "
                "(PSNR improves)",
                "mean PSNR gain (dB) on damaged stored images: "
                + ", ".join(f"{k.split('/')[1]} {v:+.2f}" for k, v in stored.items())
                + "; on unseen images: "
                + ", ".join(f"{k.split('/')[1]} {v:+.2f}" for k, v in gains.items()
                            if k.startswith("unseen/")),
                all(v > 0 for v in stored.values()),
            ))  # fmt: skip
        return claims


def _exact_counts(counts: pd.DataFrame) -> pd.Series:
    """Per cell, the proved count where the proof completed, else the search's count (a
    lower bound: the search can miss roots with tiny Newton basins in deep nets)."""
    proved = counts["certified"] == True  # noqa: E712  (None where no proof was run)
    return counts["certified_count"].where(proved, counts["count"]).astype(float)


def _count_figure(counts: pd.DataFrame) -> Figure:
    """Mean number of fixed points over depth (Gaussian nets per N; Cauchy nets at N0)
    and over width (Cauchy nets at L0)."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    by_L, by_N = figure.subplots(1, 2)
    gaussian = counts[counts["part"] == "gaussian"]
    for N in sorted({int(v) for v in gaussian["N"]}):
        subset = gaussian[gaussian["N"] == N]
        mean = _exact_counts(subset).groupby(subset["L"]).mean()
        by_L.plot(mean.index, mean.values, "o-", label=f"Gaussian, N = {N}")
    heavy = counts[counts["part"] == "heavy"]
    at_N0 = heavy[heavy["N"] == N0]
    slice_L = _exact_counts(at_N0).groupby(at_N0["L"]).mean()
    if not slice_L.empty:
        by_L.plot(slice_L.index, slice_L.values, "o-", color="C3",
                  label=f"Cauchy (scale {CAUCHY_SCALE:g}), N = {N0}")  # fmt: skip
    by_L.set_xscale("log", base=2)
    ticks = sorted({int(v) for v in counts["L"]})
    by_L.set_xticks(ticks, [str(t) for t in ticks])
    by_L.set_xlabel("depth L")
    by_L.set_ylabel("mean number of fixed points")
    by_L.legend(fontsize=7)
    at_L0 = heavy[heavy["L"] == L0]
    slice_N = _exact_counts(at_L0).groupby(at_L0["N"]).mean()
    if not slice_N.empty:
        by_N.plot(slice_N.index, slice_N.values, "o-", color="C3")
        by_N.set_xticks([int(v) for v in slice_N.index], [str(int(v)) for v in slice_N.index])
    by_N.set_xlabel(f"width N (Cauchy, scale {CAUCHY_SCALE:g}, L = {L0})")
    by_N.set_ylabel(f"mean number of fixed points Q(N, {L0})")
    by_L.set_title("over depth")
    by_N.set_title("over width")
    figure.suptitle("Number of fixed points of untrained sigmoid nets (mean over seeds; "
                    "proved counts where the proof completed)")  # fmt: skip
    return figure


def _spectra_figure(spectra: pd.DataFrame) -> Figure:
    """Densities of ``log10`` of the squared singular values (they span decades): for a
    density ``rho(x)`` the curve is ``rho(x) x ln 10`` against ``log10 x``."""
    columns = min(3, len(spectra))
    rows = -(-len(spectra) // columns)
    figure = Figure(figsize=(10, 0.6 + 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes[len(spectra) :]:
        ax.set_axis_off()
    for ax, (_, row) in zip(axes, spectra.iterrows(), strict=False):
        arrays = row["arrays"]
        values = arrays["squared_singular_values"]
        ax.hist(np.log10(values[values > 0]), bins=60, density=True, alpha=0.5,
                label="random inputs")  # fmt: skip
        fixed = arrays["at_fixed_points"]
        if len(fixed):
            ax.hist(np.log10(fixed[fixed > 0]), bins=60, density=True, alpha=0.5,
                    label="at fixed points")  # fmt: skip
        if "prediction_grid" in arrays:
            grid, density = arrays["prediction_grid"], arrays["prediction_density"]
            ax.plot(np.log10(grid), density * grid * np.log(10), "k-",
                    label="free probability")  # fmt: skip
        ax.set_title(f"{INIT_NAMES.get(row['init'], row['init'])} weights, "
                     f"N = {int(row['N'])}, L = {int(row['L'])}", fontsize=9)  # fmt: skip
        ax.set_xlabel("log10 of a squared singular value of J")
        ax.set_ylabel("probability density (per unit of log10)")
        ax.legend(fontsize=7)
    figure.suptitle("Squared singular values of the input-output Jacobian J of untrained nets "
                    f"(over {int(spectra['nets'].iloc[0])} nets)")  # fmt: skip
    return figure


def _restoration_figure(trained: pd.DataFrame) -> Figure:
    """PSNR of the restored images (bars) and of the damaged ones (black lines) per
    corruption, stored and unseen images side by side, one row of panels per depth; one
    colour per net (data, initialisation), means over seeds."""
    keys = list(trained["restoration"].iloc[0])
    splits = list(dict.fromkeys(key.split("/")[0] for key in keys))
    corruptions = list(dict.fromkeys(key.split("/")[1] for key in keys))
    depths = sorted({int(v) for v in trained["L"]})
    nets = list(dict.fromkeys(zip(trained["data"], trained["init"], strict=True)))
    figure = Figure(figsize=(10, 0.8 + 3 * len(depths)), layout="constrained")
    axes = figure.subplots(len(depths), len(splits), squeeze=False, sharey=True)
    x, width = np.arange(len(corruptions)), 0.8 / len(nets)
    for row_axes, L in zip(axes, depths, strict=True):
        for ax, split in zip(row_axes, splits, strict=True):
            for i, (data, init) in enumerate(nets):
                rows = trained[(trained["L"] == L) & (trained["data"] == data)
                               & (trained["init"] == init)]["restoration"]  # fmt: skip
                if rows.empty:
                    continue
                at = x + (i - (len(nets) - 1) / 2) * width
                before, after = (
                    [np.mean([r[f"{split}/{c}"][key] for r in rows]) for c in corruptions]
                    for key in ("psnr_before", "psnr_after")
                )
                ax.bar(at, after, 0.9 * width, color=f"C{i}",
                       label=f"restored: {data}, {INIT_NAMES.get(init, init)} init")  # fmt: skip
                ax.hlines(before, at - 0.45 * width, at + 0.45 * width, color="k", lw=2,
                          label="damaged (before restoring)" if i == 0 else None)  # fmt: skip
            ax.set_xticks(x, [CORRUPTION_LABELS.get(c, c) for c in corruptions], fontsize=8)
            ax.set_title(f"{split} images, SquareNet(64, L = {L})", fontsize=9)
        row_axes[0].set_ylabel("PSNR against the clean image (dB)")
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center",
                  ncols=3, fontsize=8)  # fmt: skip
    seeds = trained.groupby(["data", "init", "L"]).size().max()
    figure.suptitle("Restoring damaged images by iterating trained nets to their attractors\n"
                    f"({int(trained['n_train'].iloc[0])} stored images per net"
                    + (f", mean over {seeds} seeds)" if seeds > 1 else ")"))  # fmt: skip
    return figure


EXPERIMENT = BerlyandSlavin()
