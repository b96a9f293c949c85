"""Model families of the papers: square sigmoid/tanh networks with Gaussian or
heavy-tailed weights (P5)."""

from losslab.nets.square import SquareNet, sample_entries, weight_factor

__all__ = ["SquareNet", "sample_entries", "weight_factor"]
