"""Convex reformulation of two-layer ReLU networks (Mishkin & Pilanci 2023, P3).

Activation patterns (sampled or exactly enumerated), solvers of the gated and ReLU
(cone-constrained) convex programs with duality-gap certificates, the global-optimality
check over every pattern, the set of all optima, optimal pruning, regularization paths,
and recovery of the ReLU network.
"""

from losslab.convex.certificate import Certificate, certify
from losslab.convex.classifier import ConvexReLUClassifier
from losslab.convex.estimator import ConvexReLU
from losslab.convex.network import (
    NetworkCertificate,
    OwnPatternGap,
    certify_network,
    network_parameters,
    own_pattern_gap,
)
from losslab.convex.operator import PatternOperator
from losslab.convex.optimal_set import OptimalSet, optimal_set
from losslab.convex.path import PathPoint, RegularizationPath, regularization_path
from losslab.convex.patterns import (
    PatternCount,
    activation_patterns,
    count_bound,
    enumerate_patterns,
    network_patterns,
    sample_gates,
    try_enumerate_patterns,
    unique_pattern_columns,
    unique_patterns,
)
from losslab.convex.program import (
    ConvexReLUProgram,
    DualBound,
    project_onto_cone,
    projection_norm_bounds,
)
from losslab.convex.pruning import PruneResult, block_fits, prune_blocks
from losslab.convex.recovery import (
    ReLUNetwork,
    interior_point,
    neurons_from_blocks,
    split_gated_block,
)
from losslab.convex.solvers import SolveResult, solve
from losslab.convex.validation import as_features, as_target, check_lam

__all__ = [
    "Certificate",
    "ConvexReLU",
    "ConvexReLUClassifier",
    "ConvexReLUProgram",
    "DualBound",
    "NetworkCertificate",
    "OptimalSet",
    "OwnPatternGap",
    "PathPoint",
    "PatternCount",
    "PatternOperator",
    "PruneResult",
    "ReLUNetwork",
    "RegularizationPath",
    "SolveResult",
    "activation_patterns",
    "as_features",
    "as_target",
    "block_fits",
    "certify",
    "certify_network",
    "check_lam",
    "count_bound",
    "enumerate_patterns",
    "interior_point",
    "network_parameters",
    "network_patterns",
    "neurons_from_blocks",
    "optimal_set",
    "own_pattern_gap",
    "project_onto_cone",
    "projection_norm_bounds",
    "prune_blocks",
    "regularization_path",
    "sample_gates",
    "solve",
    "split_gated_block",
    "try_enumerate_patterns",
    "unique_pattern_columns",
    "unique_patterns",
]
