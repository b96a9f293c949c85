"""scikit-learn's own estimator checks on ConvexReLU and ConvexReLUClassifier (small
budgets: the checks test the API contract, not the optimum)."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from losslab.convex import ConvexReLU, ConvexReLUClassifier

ESTIMATORS = [
    ConvexReLU(formulation=form, n_gates=10, max_iter=150, tol=1e-3, check_global=False)
    for form in ("gated", "relu")
] + [ConvexReLUClassifier(formulation="gated", n_gates=20, lam=1e-2, max_iter=300, tol=1e-3,
                          check_global=False)]  # fmt: skip


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
