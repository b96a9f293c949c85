"""Forward hooks: a module that carries one may compute anything, whatever its type.

Tools that use a network's structure rather than calling it (the chain-rule Jacobian and
interval enclosures of a SquareNet, the in-region polynomial of a ReLU MLP) must refuse
such modules, as they refuse subclasses that override ``forward``.
"""

from __future__ import annotations

from torch import nn


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether ``module`` or any of its submodules carries a forward hook or pre-hook."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
