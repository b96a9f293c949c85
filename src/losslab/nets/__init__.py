"""Model families of the papers: ReLU MLPs (P4), square sigmoid/tanh networks with
Gaussian or heavy-tailed weights (P5)."""

from losslab.nets.mlp import ReLUMLP
from losslab.nets.square import SquareNet, sample_entries, weight_factor

__all__ = ["ReLUMLP", "SquareNet", "sample_entries", "weight_factor"]
