r"""``ConvexReLUClassifier``: classification by certified convex two-layer ReLU networks.

The convex programs fit real targets by least squares (P3), so classes are coded as
targets: a binary problem is one :class:`~losslab.convex.ConvexReLU` on labels ``-1``
(``classes_[0]``) and ``+1`` (``classes_[1]``), predicting by the sign of its output; a
problem with ``K > 2`` classes is *one-vs-all*: ``K`` networks, network ``k`` fit to
``+1`` on class ``k`` and ``-1`` elsewhere, predicting the class whose network outputs
the most. Each network is solved and certified on its own; ``objective_`` is their sum.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from losslab.convex.estimator import ConvexReLU, unchanged_on_failure
from losslab.convex.validation import host_array, solve_device
from losslab.errors import ConvexProblemError


class ConvexReLUClassifier(ClassifierMixin, BaseEstimator):
    """Binary or one-vs-all classification by :class:`ConvexReLU` (module docstring).

    Takes the parameters of :class:`ConvexReLU` (``device`` too: every network is solved
    there; ``X`` may be a torch tensor on any device).

    Attributes:
        classes_: the class labels, sorted.
        estimators_: the fitted :class:`ConvexReLU` networks (one for two classes); each
            has its own ``certificate_``, ``optimal_set()``, ``prune()``.
        certificates_: their certificates (``certificates_[k].is_global``, ...).
        objective_: the sum of their convex objectives.
        n_neurons_: the total number of neurons.
        n_iter_: solver iterations of each network.
        n_features_in_: number of input features.

    Example:
        >>> from losslab.convex import ConvexReLUClassifier
        >>> from losslab.data import load
        >>> iris = load("iris", standardize=True)
        >>> model = ConvexReLUClassifier(lam=1e-2, n_gates=50, check_global=False)
        >>> X, y = iris.X.numpy(), iris.y.numpy()
        >>> round(model.fit(X, y).score(X, y), 2)  # training accuracy of the certified optimum
        0.87
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

    def fit(self, X: Any, y: Any) -> ConvexReLUClassifier:
        """Fit one network (two classes) or one per class (one-vs-all); returns ``self``. A
        fit that fails or is interrupted leaves the estimator as it was."""
        with unchanged_on_failure(self):
            return self._fit(X, y)

    def _fit(self, X: Any, y: Any) -> ConvexReLUClassifier:
        device = solve_device(self.device, X)
        X_np, y_np = validate_data(self, host_array(X), host_array(y), dtype=np.float64)
        check_classification_targets(y_np)
        self.classes_ = np.unique(y_np)
        if self.classes_.size < 2:
            raise ConvexProblemError(
                f"classification needs at least 2 classes; got {self.classes_.size} class"
            )
        columns = [self.classes_[1]] if self.classes_.size == 2 else list(self.classes_)
        self.estimators_ = [
            ConvexReLU(**{**self.get_params(), "device": device}).fit(
                X_np, np.where(y_np == label, 1.0, -1.0)
            )
            for label in columns
        ]
        self.certificates_ = [e.certificate_ for e in self.estimators_]
        self.objective_ = float(sum(e.objective_ for e in self.estimators_))
        self.n_neurons_ = int(sum(e.n_neurons_ for e in self.estimators_))
        self.n_iter_ = np.array([e.n_iter_ for e in self.estimators_])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The networks' outputs: (n,) for two classes (> 0 means ``classes_[1]``),
        (n, K) otherwise."""
        check_is_fitted(self, "estimators_")
        X_np = validate_data(self, host_array(X), reset=False, dtype=np.float64)
        scores = np.column_stack([e.predict(X_np) for e in self.estimators_])
        return scores[:, 0] if len(self.estimators_) == 1 else scores

    def to_torch(self) -> nn.Sequential:
        """The networks side by side as one float64 ``Sequential(Linear(d, m, bias), ReLU(),
        Linear(m, K, bias=False))`` (``K = 1`` for two classes): hidden units of network
        ``k`` feed only output ``k``, so its outputs are :meth:`decision_function`'s for the
        ``"relu"`` form (each network's :meth:`ConvexReLU.to_torch`)."""
        check_is_fitted(self, "estimators_")
        nets = [e.to_torch() for e in self.estimators_]
        firsts: list[nn.Linear] = [net[0] for net in nets]  # type: ignore[misc]
        seconds: list[nn.Linear] = [net[2] for net in nets]  # type: ignore[misc]
        widths = [layer.out_features for layer in firsts]
        hidden = nn.Linear(firsts[0].in_features, sum(widths), bias=self.bias,
                           dtype=torch.float64)  # fmt: skip
        output = nn.Linear(sum(widths), len(nets), bias=False, dtype=torch.float64)
        with torch.no_grad():
            hidden.weight.copy_(torch.cat([layer.weight for layer in firsts]))
            if self.bias:
                hidden.bias.copy_(torch.cat([layer.bias for layer in firsts]))
            output.weight.copy_(torch.block_diag(*[layer.weight for layer in seconds]))
        return nn.Sequential(hidden, nn.ReLU(), output)

    def predict(self, X: Any) -> np.ndarray:
        """The predicted class of each row of ``X``."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy on ``X``, ``y`` (arrays, or torch tensors on any device)."""
        return float(super().score(host_array(X), host_array(y), sample_weight))
