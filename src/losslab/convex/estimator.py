r"""``ConvexReLU``: a two-layer ReLU network trained to the certified global optimum.

A scikit-learn regressor. ``fit`` samples gate vectors, builds the convex program over
their activation patterns (:mod:`losslab.convex.program`), solves it to a duality-gap
tolerance and certifies the solution (:mod:`losslab.convex.certificate`). The fitted
model is the ReLU network recovered from the solution (``formulation="relu"``), or the
gated network ``x -> sum_i 1[x . g_i >= 0] (x . u_i)`` (``formulation="gated"``).

Conventions (P3): the objective is ``1/(2n) ||f(X) - y||^2 + lam/2 sum_j (||w_j||^2 +
alpha_j^2)``; ``bias=True`` appends a column of ones to ``X``, so the bias is part of
each neuron and penalised with it. Targets are real numbers; for binary classification
pass labels as -1/+1 and threshold the prediction at 0.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from losslab.convex.certificate import Certificate, certify
from losslab.convex.optimal_set import OptimalSet, optimal_set
from losslab.convex.patterns import sample_gates, unique_pattern_columns
from losslab.convex.program import ConvexReLUProgram
from losslab.convex.pruning import prune_blocks
from losslab.convex.recovery import ReLUNetwork, neurons_from_blocks, split_gated_block
from losslab.convex.solvers import SolveResult, solve
from losslab.convex.validation import (
    as_features,
    as_target,
    check_lam,
    host_array,
    solve_device,
)
from losslab.errors import ConvexProblemError


class ConvexReLU(RegressorMixin, BaseEstimator):
    """Two-layer ReLU regression by its convex reformulation, with a certificate.

    Args:
        lam: weight decay ``lam > 0``.
        formulation: ``"relu"`` (the exact ReLU network; cone-constrained program) or
            ``"gated"`` (the gated-ReLU relaxation; faster).
        n_gates: number of Gaussian gate vectors sampled for the patterns.
        gates: explicit gates, shape ``(d, k)`` (``(d + 1, k)`` with ``bias``); overrides
            ``n_gates``.
        bias: append a column of ones to ``X`` (a penalised bias per neuron).
        tol: relative duality gap at which the solver stops.
        max_iter: iteration budget (ADMM iterations of the gated form, FISTA iterations
            above 6000 samples; interior-point iterations of the ReLU form, at most 200);
            past it the result is marked not converged.
        seed: seed of the gate sample (and of the certificate's check sample).
        check_global: certify the solution over all patterns (enumerated when the data
            allow, else a large fresh sample); off saves time.
        device: where the program is solved and certified: ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``; ``None`` (default): the device of ``X`` when ``fit`` gets a torch
            tensor, else the CPU. The fitted model (``solution_``, ``network_``, the
            methods below) lives on the CPU whatever the device; ``X`` and ``y`` may be
            NumPy arrays or torch tensors on any device. On an H100 the gated form with
            n = 20,000, d = 50 and 1000 patterns solved 21 times faster than on 16 CPU
            cores, and 6.5 times at n = 2000, d = 20 (``benchmarks/bench_gpu.py``).

    Attributes:
        objective_: the convex objective at the solution.
        certificate_: a :class:`~losslab.convex.Certificate` (``None`` without
            ``check_global``).
        solution_: the :class:`~losslab.convex.SolveResult`.
        network_: the recovered :class:`~losslab.convex.ReLUNetwork` (features with the
            bias column when ``bias``).
        n_neurons_: the fitted network's neurons, its non-zero blocks: ReLU neurons for
            ``"relu"``, gated neurons ``x -> 1[x . g_i >= 0] (x . u_i)`` for ``"gated"``
            (as :func:`regularization_path` counts them). A gated model's ``to_torch()``
            network has up to two ReLU neurons per gated one (``network_.n_neurons``).
        patterns_: boolean array (n, P) of the activation patterns used.
        gates_: array (d or d + 1, P), one gate per pattern.
        n_features_in_: number of input features.
        n_iter_: solver iterations.

    Example:
        >>> from losslab.convex import ConvexReLU
        >>> from losslab.data import load
        >>> data = load("teacher_relu", n=100, d=3, seed=0)
        >>> model = ConvexReLU(lam=1e-2, n_gates=50).fit(data.X.numpy(), data.y.numpy())
        >>> model.solution_.converged
        True
    """

    def __init__(
        self,
        lam: float = 1e-3,
        formulation: Literal["relu", "gated"] = "relu",
        n_gates: int = 500,
        gates: Any = None,
        bias: bool = False,
        tol: float = 1e-6,
        max_iter: int = 20_000,
        seed: int = 0,
        check_global: bool = True,
        device: str | None = None,
    ) -> None:
        self.lam = lam
        self.formulation = formulation
        self.n_gates = n_gates
        self.gates = gates
        self.bias = bias
        self.tol = tol
        self.max_iter = max_iter
        self.seed = seed
        self.check_global = check_global
        self.device = device

    def fit(self, X: Any, y: Any) -> ConvexReLU:
        """Solve the convex program on ``X`` (n, d) and ``y`` (n,); returns ``self``. A fit
        that fails or is interrupted (Ctrl-C) leaves the estimator as it was."""
        with unchanged_on_failure(self):
            return self._fit(X, y)

    def _fit(self, X: Any, y: Any) -> ConvexReLU:
        device = solve_device(self.device, X)
        X_np, y_np = validate_data(
            self, host_array(X), host_array(y), y_numeric=True, dtype=np.float64
        )
        if not np.issubdtype(np.asarray(y_np).dtype, np.number):
            raise ConvexProblemError(
                f"y must be numbers for a regression; got {np.asarray(y_np).dtype} values. "
                "For class labels use ConvexReLUClassifier"
            )
        lam = check_lam(self.lam)  # a plain float (np.float32 would round in float32)
        if X_np.shape[0] < 2:
            raise ConvexProblemError(
                f"ConvexReLU needs at least 2 samples; got n_samples={X_np.shape[0]}"
            )
        features = as_features(X_np, bias=self.bias)  # copies: any strides
        target = as_target(y_np, features)
        gates = self._gates(features.shape[1])
        masks = features @ gates >= 0
        kept = unique_pattern_columns(features, masks)
        if kept.numel() == 0:
            raise ConvexProblemError("no gate activates any sample; sample more gates")
        program = ConvexReLUProgram(features, target, masks[:, kept], lam, self.formulation)
        solution = solve(_moved(program, device), tol=self.tol, max_iter=self.max_iter)
        self.certificate_: Certificate | None = (
            certify(solution, tol=max(10 * self.tol, 1e-6), seed=self.seed)
            if self.check_global
            else None
        )
        self.solution_: SolveResult = _on_host(solution, program)
        self.gates_ = gates[:, kept].numpy()
        self.patterns_ = masks[:, kept].numpy()
        self.network_ = self._network(program)
        self.objective_ = self.solution_.objective
        self.n_neurons_ = int((self.solution_.blocks.norm(dim=1) > 0).sum())
        self.n_iter_ = self.solution_.iterations
        return self

    def _gates(self, d: int) -> torch.Tensor:
        if self.gates is None:
            if not isinstance(self.n_gates, int | np.integer) or self.n_gates < 1:
                raise ConvexProblemError(f"n_gates must be an integer >= 1; got {self.n_gates!r}")
            return sample_gates(d, int(self.n_gates), seed=self.seed)
        gates = torch.as_tensor(np.asarray(self.gates, dtype=np.float64))
        if gates.ndim != 2 or gates.shape[0] != d:
            extra = " (d + 1 rows with bias=True)" if self.bias else ""
            raise ConvexProblemError(
                f"gates must have shape ({d}, n_gates){extra}; got {tuple(gates.shape)}"
            )
        if not bool(torch.isfinite(gates).all()):
            raise ConvexProblemError("gates hold NaN or inf")
        return gates

    def _network(self, program: ConvexReLUProgram) -> ReLUNetwork:
        blocks, P = self.solution_.blocks, program.patterns.shape[1]
        if self.formulation == "relu":
            return neurons_from_blocks(blocks, torch.cat([torch.ones(P), -torch.ones(P)]))
        # The gated blocks' ReLU network: each u_i split into cone members v_i - w_i.
        v_blocks, w_blocks = torch.zeros_like(blocks), torch.zeros_like(blocks)
        for i in torch.nonzero(blocks.norm(dim=1) > 0).flatten().tolist():
            v_blocks[i], w_blocks[i] = split_gated_block(
                program.X, program.patterns[:, i], blocks[i]
            )
        signs = torch.cat([torch.ones(P), -torch.ones(P)])
        return neurons_from_blocks(torch.cat([v_blocks, w_blocks]), signs)

    def predict(self, X: Any) -> np.ndarray:
        """The fitted network's output on ``X`` (n, d)."""
        check_is_fitted(self, "solution_")
        features = self._features(X)
        if self.formulation == "relu":
            return self.network_.predict(features).numpy()
        gates = torch.as_tensor(self.gates_)
        active = (features @ gates >= 0).to(features.dtype)
        return ((features @ self.solution_.blocks.T) * active).sum(dim=1).numpy()

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R^2 of the prediction on ``X``, ``y`` (arrays, or torch tensors on any device)."""
        return float(super().score(host_array(X), host_array(y), sample_weight))

    def prune(self) -> ConvexReLU:
        """A copy holding the optimally pruned network: the same objective (up to
        rounding), with linearly independent neuron fits, hence at most n neurons
        (``n_neurons_``; a gated model's ``to_torch()`` has up to two ReLU neurons per
        gated one).

        The copy's ``pruned_`` is the :class:`~losslab.convex.pruning.PruneResult`
        (indices of the blocks removed, objective before and after).
        """
        check_is_fitted(self, "solution_")
        result = prune_blocks(self.solution_.program, self.solution_.blocks)
        pruned = self._with_blocks(result.blocks)
        pruned.pruned_ = result
        return pruned

    def optimal_set(self, *, include_uncertain: bool = True) -> OptimalSet:
        """The set of all optimal solutions of the fitted program: common fit, fixed
        direction per active block, polytope of non-negative rescalings; with
        ``include_uncertain``, the zero blocks whose dual constraint is tight to within
        ``1e-6`` join it (:mod:`losslab.convex.optimal_set`)."""
        check_is_fitted(self, "solution_")
        return optimal_set(self.solution_.program, self.solution_.blocks,
                           include_uncertain=include_uncertain,
                           dual_objective=self.solution_.dual_objective)  # fmt: skip

    def optimal_member(
        self,
        kind: Literal["min_norm", "sparsest", "vertex", "validation"] = "min_norm",
        X_val: Any = None,
        y_val: Any = None,
        seed: int = 0,
    ) -> ConvexReLU:
        """A copy holding another member of the optimal set (the same objective):
        ``"min_norm"`` (smallest ``sum ||u_b||^2``, unique), ``"sparsest"`` (a vertex with
        the fewest neurons found), ``"vertex"`` (the vertex minimising a random positive
        cost drawn from ``seed``), or ``"validation"`` (lowest squared error on ``X_val``,
        ``y_val``).

        Every member is checked to be within the solve's certified duality gap of the
        optimum (:attr:`OptimalSet.max_objective`; :class:`ConvexProblemError` otherwise:
        solve to a smaller ``tol``)."""
        check_is_fitted(self, "solution_")
        optimum = self.optimal_set()
        return self._with_blocks(
            optimum.blocks(self._member_scales(optimum, kind, X_val, y_val, seed))
        )

    def _member_scales(
        self, optimum: OptimalSet, kind: str, X_val: Any, y_val: Any, seed: int
    ) -> torch.Tensor:
        """The scales of the member ``kind`` of ``optimum`` (see :meth:`optimal_member`)."""
        if kind == "min_norm":
            scales = optimum.min_norm()
        elif kind == "sparsest":
            scales = optimum.sparsest(seed=seed)
        elif kind == "vertex":
            generator = torch.Generator().manual_seed(seed)
            cost = torch.rand(optimum.scales.shape[0], generator=generator, dtype=torch.float64)
            scales = optimum.vertex(cost + 0.5)
        elif kind == "validation":
            if X_val is None or y_val is None:
                raise ConvexProblemError("kind='validation' needs X_val and y_val")
            features = self._features(X_val)
            target = as_target(y_val, features)  # shape and finiteness checked
            scales = optimum.best_fit_to(self._block_outputs(features, optimum), target)
        else:
            raise ConvexProblemError(
                f"kind must be 'min_norm', 'sparsest', 'vertex' or 'validation'; got {kind!r}"
            )
        return scales

    def _features(self, X: Any) -> torch.Tensor:
        """Validated new data as float64 features, with the bias column when ``bias``."""
        features = torch.from_numpy(
            np.ascontiguousarray(validate_data(self, host_array(X), reset=False, dtype=np.float64))
        )
        if self.bias:
            ones = torch.ones(features.shape[0], 1, dtype=features.dtype)
            features = torch.cat([features, ones], dim=1)
        return features

    def _block_outputs(self, features: torch.Tensor, optimum: OptimalSet) -> torch.Tensor:
        """Each active block's output at unit scale on new ``features`` (n_val, k): a
        member with scales ``t`` predicts ``outputs @ t``."""
        P = self.patterns_.shape[1]
        pattern = optimum.active % P
        preactivations = features @ optimum.directions.T
        if self.formulation == "gated":
            gates = torch.as_tensor(self.gates_)[:, pattern]
            return preactivations * (features @ gates >= 0).to(features.dtype)
        signs = torch.where(optimum.active < P, 1.0, -1.0).to(features.dtype)
        return torch.relu(preactivations) * signs

    def _with_blocks(self, blocks: torch.Tensor) -> ConvexReLU:
        """A fitted copy whose solution is ``blocks`` of the same program (its gap is
        measured against the original solve's dual bound)."""
        program = self.solution_.program
        objective = program.objective(blocks)
        gap = max(objective - self.solution_.dual_objective, 0.0)
        relative = gap / max(abs(objective), 1e-300)
        within = relative <= max(self.tol, self.solution_.relative_gap)
        model = copy.deepcopy(self)
        model.solution_ = replace(
            self.solution_,
            blocks=blocks,
            objective=objective,
            duality_gap=gap,
            relative_gap=relative,
            converged=self.solution_.converged and within,
            reason=self.solution_.reason
            if within
            else f"the new blocks raised the relative gap to {relative:.2e} (tol {self.tol:.0e})",
        )
        model.network_ = model._network(program)
        model.objective_ = objective
        model.n_neurons_ = int((blocks.norm(dim=1) > 0).sum())
        return model

    def to_torch(self) -> nn.Sequential:
        """``Sequential(Linear(d, m, bias), ReLU(), Linear(m, 1, bias=False))`` in float64.

        For ``formulation="relu"`` its non-convex objective equals ``objective_``. For
        ``"gated"`` it is the ReLU network of the cone split of each gated block: the same
        fit on the training data, with the ReLU form's objective at that split (at least
        ``objective_``); on new data it differs from the gated model's ``predict``.
        """
        check_is_fitted(self, "solution_")
        return self.network_.to_torch(self.bias)


@contextmanager
def unchanged_on_failure(estimator: BaseEstimator) -> Iterator[None]:
    """Put back ``estimator``'s attributes if the block raises (``KeyboardInterrupt`` too):
    a refit that stops half-way must not leave a model of one fit with the shapes of
    another."""
    state = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(state)
        raise


def _moved(program: ConvexReLUProgram, device: torch.device) -> ConvexReLUProgram:
    """``program`` with its data on ``device`` (itself on the CPU)."""
    if device.type == "cpu":
        return program
    return ConvexReLUProgram(program.X.to(device), program.y.to(device),
                             program.patterns.to(device), program.lam,
                             program.formulation)  # fmt: skip


def _on_host(solution: SolveResult, program: ConvexReLUProgram) -> SolveResult:
    """``solution`` of a copy of ``program`` on another device, as a solution of
    ``program`` (on the CPU)."""
    if solution.program is program:
        return solution
    dual = solution.dual_point
    return replace(solution, program=program, blocks=solution.blocks.cpu(),
                   dual_point=None if dual is None else dual.cpu())  # fmt: skip
