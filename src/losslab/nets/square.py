r"""Square networks ``f: R^N -> R^N`` of Berlyand & Slavin (P5), with Gaussian or
heavy-tailed weights.

``f = sigma o A_L o ... o sigma o A_1`` with affine layers ``A_l(x) = W_l x + b_l``
(``W_l`` (N, N), ``b_l`` (N,)) and a monotone activation ``sigma`` (the logistic sigmoid,
whose output lies in ``(0, 1)^N``, or ``tanh``, in ``(-1, 1)^N``). Batched over leading
dimensions: an input of shape (..., N) gives an output of shape (..., N).

**Scalings.** Entries are i.i.d. draws of a centred law ``Z`` times a factor that keeps
the pre-activations ``sum_j W_ij x_j`` of order ``weight_scale`` whatever ``N``:

- ``init="gaussian"``: ``W_ij = weight_scale * Z / sqrt(N)``, ``Z ~ N(0, 1)`` (a sum of N
  terms of finite variance grows like ``sqrt(N)``);
- ``init="cauchy"``: ``W_ij = weight_scale * Z / N``, ``Z`` standard Cauchy (stable with
  index 1: a sum of N terms grows like ``N``, not ``sqrt(N)``);
- ``init="student_t"``: ``Z`` Student-t with ``df`` degrees of freedom; for ``df > 2``
  (finite variance) rescaled to unit variance, ``Z sqrt((df - 2) / df)``, and divided
  by ``sqrt(N)``; for ``df <= 2`` (in the domain of attraction of a stable law of index
  ``df``) divided by ``N^(1 / df)``.

Biases are drawn from the same law, times ``bias_scale``, without the ``N`` factor.
Defaults: sigmoid, Gaussian, ``weight_scale = bias_scale = 1``, float64.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from losslab.errors import FixedPointError
from losslab.nets.hooks import has_forward_hooks

Activation = Literal["sigmoid", "tanh"]
Init = Literal["gaussian", "cauchy", "student_t"]

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


def sigmoid_slope(z: torch.Tensor) -> torch.Tensor:
    """``sigmoid'(z) = sigmoid(z) sigmoid(-z)``: accurate where ``sigmoid(z)`` rounds to 1
    (``h (1 - h)`` is 0 there for ``z > 37`` in float64, the slope ``e^{-z}`` is not)."""
    return torch.sigmoid(z) * torch.sigmoid(-z)


def tanh_slope(z: torch.Tensor) -> torch.Tensor:
    """``tanh'(z) = 1 / cosh(z)^2``: accurate where ``tanh(z)`` rounds to +-1 (``1 - h^2`` is
    0 there for ``|z| > 19`` in float64); 0 once ``cosh`` overflows."""
    return torch.cosh(z).reciprocal().square()


#: The derivative of each activation, as a function of the pre-activation.
ACTIVATION_SLOPES = {"sigmoid": sigmoid_slope, "tanh": tanh_slope}


def sample_entries(
    shape: tuple[int, ...],
    init: Init,
    generator: torch.Generator,
    *,
    df: float = 3.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """I.i.d. draws of the standard law of ``init`` (N(0, 1), standard Cauchy, or Student-t
    with ``df`` degrees of freedom standardised to unit variance when ``df > 2``)."""
    if init == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
    if init == "cauchy":
        return torch.tan(math.pi * (uniform - 0.5)).to(dtype)
    if init == "student_t":
        from scipy.stats import t as student_t

        values = torch.as_tensor(student_t.ppf(uniform.numpy(), df), dtype=dtype)
        return values * math.sqrt((df - 2) / df) if df > 2 else values
    raise FixedPointError(f"init must be 'gaussian', 'cauchy' or 'student_t'; got {init!r}")


def weight_factor(N: int, init: Init, df: float = 3.0) -> float:
    """The factor on the standard draws that keeps ``sum_j W_ij x_j`` of order one."""
    if init == "cauchy":
        return 1.0 / N
    if init == "student_t" and df <= 2:
        return N ** (-1.0 / df)
    return 1.0 / math.sqrt(N)


class SquareNet(nn.Module):
    """``L`` affine layers of width ``N``, each followed by ``activation`` (module docstring).

    Attributes:
        layers: the ``nn.Linear(N, N)`` layers, in order.
        activation: ``"sigmoid"`` or ``"tanh"``.
    """

    def __init__(
        self,
        N: int,
        L: int,
        activation: Activation = "sigmoid",
        init: Init = "gaussian",
        *,
        weight_scale: float = 1.0,
        bias_scale: float = 1.0,
        df: float = 3.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise FixedPointError(f"N must be an integer >= 1; got {N!r}")
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise FixedPointError(f"L must be an integer >= 1; got {L!r}")
        if activation not in ACTIVATIONS:
            raise FixedPointError(f"activation must be 'sigmoid' or 'tanh'; got {activation!r}")
        if init not in ("gaussian", "cauchy", "student_t"):
            raise FixedPointError(f"init must be 'gaussian', 'cauchy' or 'student_t'; got {init!r}")
        for name, value in (("weight_scale", weight_scale), ("bias_scale", bias_scale)):
            if not (math.isfinite(value) and value >= 0):
                raise FixedPointError(f"{name} must be a finite number >= 0; got {value!r}")
        if not (math.isfinite(df) and df > 0):
            raise FixedPointError(f"df must be a finite number > 0; got {df!r}")
        self.N, self.L, self.activation, self.init = N, L, activation, init
        self.weight_scale, self.bias_scale, self.df, self.seed = weight_scale, bias_scale, df, seed
        generator = torch.Generator().manual_seed(seed)
        factor = weight_scale * weight_factor(N, init, df)
        self.layers = nn.ModuleList()
        for _ in range(L):
            layer = nn.Linear(N, N, dtype=dtype)
            with torch.no_grad():
                layer.weight.copy_(
                    factor * sample_entries((N, N), init, generator, df=df, dtype=dtype)
                )
                layer.bias.copy_(
                    bias_scale * sample_entries((N,), init, generator, df=df, dtype=dtype)
                )
            if not all(bool(torch.isfinite(t).all()) for t in (layer.weight, layer.bias)):
                raise FixedPointError(
                    f"weight_scale={weight_scale:g}, bias_scale={bias_scale:g}: the {init} "
                    f"weights overflow {dtype} (heavy tails reach ~1e300 times the scale at "
                    "worst); use smaller scales"
                )
            self.layers.append(layer)

    @classmethod
    def from_sequential(cls, model: nn.Module) -> SquareNet:
        """The SquareNet of a user's ``nn.Sequential(Linear(N, N), Sigmoid(), Linear(N, N),
        Sigmoid(), ...)`` (or ``Tanh()`` throughout): a copy of its weights and biases
        (zero where a layer has none), in its dtype and on its device, with
        ``init="copied"``. Anything else (another activation, a mixed one, a layer of
        another width, a subclass of ``Sequential``, ``Linear`` or the activation, a
        forward hook) raises :class:`FixedPointError`."""
        names = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
        plain = type(model) is nn.Sequential and not has_forward_hooks(model)
        children = list(model.children()) if plain else []
        linears = [c for c in children[0::2] if type(c) is nn.Linear]
        kinds = {names.get(type(c)) for c in children[1::2]}
        widths = {(c.in_features, c.out_features) for c in linears}
        if not (
            children
            and len(children) % 2 == 0
            and len(linears) == len(children) // 2
            and len(widths) == 1
            and len({*widths.pop()}) == 1
            and len(kinds) == 1
            and None not in kinds
        ):
            raise FixedPointError(
                "from_sequential needs a plain nn.Sequential(Linear(N, N), Sigmoid(), ...) "
                "without forward hooks: square Linear layers of one width, each followed by "
                "the same activation (Sigmoid or Tanh); got "
                f"{type(model).__name__}({', '.join(type(c).__name__ for c in model.children())})"
            )
        activation: Activation = "sigmoid" if kinds == {"sigmoid"} else "tanh"
        first = linears[0]
        net = cls(first.in_features, len(linears), activation, dtype=first.weight.dtype)
        net = net.to(first.weight.device)  # on the model's device too
        with torch.no_grad():
            for target, source in zip(net.layers, linears, strict=True):
                assert isinstance(target, nn.Linear)
                target.weight.copy_(source.weight)
                if source.bias is None:  # e.g. a Hopfield map tanh(beta W x)
                    target.bias.zero_()
                else:
                    target.bias.copy_(source.bias)
        net.init = "copied"  # type: ignore[assignment]
        net.weight_scale = net.bias_scale = math.nan
        return net

    @property
    def output_box(self) -> tuple[float, float]:
        """The open box the outputs lie in: ``(0, 1)`` for sigmoid, ``(-1, 1)`` for tanh
        (every fixed point lies in its closure)."""
        return (0.0, 1.0) if self.activation == "sigmoid" else (-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.N:
            raise FixedPointError(f"input must have shape (..., {self.N}); got {tuple(x.shape)}")
        sigma = ACTIVATIONS[self.activation]
        for layer in self.layers:
            x = sigma(layer(x))
        return x

    def weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(W_1, b_1), ..., (W_L, b_L)]``, detached (``b_l = 0`` for a layer built
        without bias)."""
        pairs = []
        for index, layer in enumerate(self.layers, start=1):
            if not isinstance(layer, nn.Linear):
                raise TypeError(
                    f"layer {index} is {type(layer).__name__}, not nn.Linear: the net is no "
                    "longer the affine layers a SquareNet describes"
                )
            weight = layer.weight.detach()
            bias = torch.zeros_like(weight[:, 0]) if layer.bias is None else layer.bias.detach()
            pairs.append((weight, bias))
        return pairs

    @property
    def computes_its_layers(self) -> bool:
        """Whether calling the net computes the layers :meth:`weights` lists, so that tools
        may use that structure (its Jacobian by the chain rule, interval enclosures, the
        index theorem): ``forward``, ``weights`` and the layers' own ``forward`` are not
        overridden by a subclass and no forward hook is registered on any module."""
        layers_plain = all(type(layer) is nn.Linear for layer in self.layers)
        hooked = has_forward_hooks(self)
        return (
            type(self).forward is SquareNet.forward
            and type(self).weights is SquareNet.weights
            and type(self).__call__ is nn.Module.__call__
            and self.activation in ACTIVATIONS
            and layers_plain
            and not hooked
        )

    def extra_repr(self) -> str:
        return (
            f"N={self.N}, L={self.L}, activation={self.activation!r}, init={self.init!r}, "
            f"weight_scale={self.weight_scale}, bias_scale={self.bias_scale}, seed={self.seed}"
        )
