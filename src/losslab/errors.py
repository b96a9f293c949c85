"""The exceptions losslab raises for input a user can fix.

Every error a user can cause is a :class:`LosslabError` subclass whose message says
what was wrong and what to do. The command line prints that message as one line.
"""

from __future__ import annotations


class LosslabError(Exception):
    """Base class of every error a user of losslab can cause and fix."""


class DatasetError(LosslabError, ValueError):
    """A dataset could not be found, read or validated."""


class ExperimentError(LosslabError, ValueError):
    """An experiment could not be found, loaded, or does not follow the protocol."""


class StoreError(LosslabError):
    """The results store could not be opened or holds something unexpected."""


class EngineError(LosslabError):
    """A sweep could not be started: bad arguments, or no Dask scheduler to reach."""


class ConvexProblemError(LosslabError, ValueError):
    """A convex ReLU problem is malformed: bad shapes, NaN, lam <= 0, too many patterns."""


class FixedPointError(LosslabError, ValueError):
    """A fixed-point question is malformed: a map whose output shape differs from its
    input, NaN from the map, an empty or inverted box, impossible parameters."""


class IntervalError(LosslabError, ValueError):
    """An interval is malformed: lo > hi, NaN end points, mismatched shapes or dtype."""


class CurvatureError(LosslabError, ValueError):
    """A curvature or critical-point question is malformed: a model without trainable
    parameters, data with NaN, ``k`` larger than the dimension, a non-finite loss."""


def reraise_interrupt(error: RuntimeError) -> None:
    """Raise ``KeyboardInterrupt`` if ``error`` is torch's wrapping of one (Ctrl-C inside a
    ``torch.func`` transform can surface as ``RuntimeError: KeyboardInterrupt``): a fallback
    that catches ``RuntimeError`` must not swallow the user's interrupt."""
    if "KeyboardInterrupt" in str(error):
        raise KeyboardInterrupt from error
