"""Critical points of any PyTorch model's loss: find them (saddles too) and classify them
by the Hessian spectrum; piecewise strong convexity of ReLU networks with weight decay
(Milne, P4); loss-landscape slices along filter-normalised directions."""

from losslab.critical.points import (
    CriticalPoint,
    CriticalPointSearch,
    classify,
    find_critical_point,
)
from losslab.critical.regions import (
    RegionCertificate,
    RegionObjective,
    output_hessian_bounds,
    region_objective,
    strong_convexity,
)
from losslab.critical.slices import (
    Slice1D,
    Slice2D,
    filter_normalized_direction,
    interpolate,
    plot_slice_1d,
    plot_slice_2d,
    slice_1d,
    slice_2d,
)
from losslab.critical.training import (
    classification_data,
    squared_error,
    train_squared_loss,
)

__all__ = [
    "CriticalPoint",
    "CriticalPointSearch",
    "RegionCertificate",
    "RegionObjective",
    "Slice1D",
    "Slice2D",
    "classification_data",
    "classify",
    "filter_normalized_direction",
    "find_critical_point",
    "interpolate",
    "output_hessian_bounds",
    "plot_slice_1d",
    "plot_slice_2d",
    "region_objective",
    "slice_1d",
    "slice_2d",
    "squared_error",
    "strong_convexity",
    "train_squared_loss",
]
