"""scikit-learn's own estimator checks on ConvexReLU (small budgets: the checks test the
API contract, not the optimum)."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from losslab.convex import ConvexReLU

ESTIMATORS = [
    ConvexReLU(formulation=form, n_gates=10, max_iter=150, tol=1e-3, check_global=False)
    for form in ("gated", "relu")
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
