r"""The loss of a model on data as a function of one flat parameter vector.

Matrix-free curvature (Hessian- and Gauss-Newton-vector products), critical-point search
and loss-landscape slices all need the same object: the map

.. math::  \theta \mapsto L(\theta) = \frac{\sum_b m_b\, \ell(f_\theta(X_b), y_b)}{\sum_b m_b},

where ``theta`` stacks the model's trainable parameters (in ``model.named_parameters()``
order, each flattened row-major), ``f_theta`` is the model evaluated with those
parameters by :func:`torch.func.functional_call`, ``(X_b, y_b)`` are the data's batches of
``n_b`` samples and ``loss_fn(outputs, targets)`` returns the *mean* loss of a batch (as
``torch.nn.MSELoss()`` and ``torch.nn.CrossEntropyLoss()`` do by default), whose
denominator is ``m_b``: the batch's ``n_b`` samples, or for a cross-entropy with class
weights or ``ignore_index`` the weight of its counted targets (:func:`batch_mass`). With
one batch this is ``loss_fn(model(X), y)``; with several it is the loss of all the data
as one batch. A plain function with its own weighted mean cannot be told apart: give one
batch.

Parameters are passed functionally, so the model's are never modified; buffers are the
model's own (a change to them shows in the loss), and a model in training mode with batch
norm, or a ``spectral_norm`` hook, updates them on every evaluation. Put the model in
``eval()`` mode first when it has dropout or batch norm, or the loss will be random:
:meth:`ModelLoss.check_fixed_function` refuses such models (restoring the buffers its
test evaluations touched), and the curvature operators and the critical-point tools call
it before they evaluate anything; the slices restore the buffers after evaluating. The modes of its
modules are recorded: after ``model.train()`` or ``model.eval()`` has switched a module
whose output can depend on it (dropout, normalisation, recurrent and attention layers, or
a user-defined module), using the loss raises :class:`CurvatureError`.

Batch norm with batch statistics (``track_running_stats=False``) makes the loss a function
of the whole batch; torch 2.13's ``torch.func`` second derivatives of it are wrong (0.2 off
on a small net, against finite differences), while :class:`~losslab.linalg.HessianOperator`
on one batch (its cached reverse-over-reverse products) is right. Do not hand such a loss
to ``torch.func.hessian`` or to :func:`~losslab.critical.find_critical_point`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from losslab.errors import CurvatureError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
Data = Batch | Iterable[Batch]


def as_batches(data: Data) -> list[Batch]:
    """The data as a list of ``(inputs, targets)`` batches, checked: at least one batch,
    no empty batch, inputs and targets with the same number of rows, every floating
    tensor finite (:class:`ModelLoss` then casts floating tensors to the parameters' dtype
    and device). ``data`` is one ``(inputs, targets)`` pair or an iterable of them (a
    ``DataLoader`` is read once and kept)."""
    if isinstance(data, torch.utils.data.Dataset):
        raise CurvatureError(
            f"data is a {type(data).__name__}, whose items are single samples, not batches: "
            "wrap it in a torch.utils.data.DataLoader(dataset, batch_size=...)"
        )
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        batches = [(data[0], data[1])]
    else:
        try:
            batches = [tuple(batch) for batch in data]
        except TypeError as error:
            raise CurvatureError(
                "data must be an (inputs, targets) pair of tensors or an iterable of them"
            ) from error
    if not batches:
        raise CurvatureError("data holds no batch: give at least one (inputs, targets) pair")
    checked: list[Batch] = []
    for index, batch in enumerate(batches):
        if len(batch) != 2 or not all(isinstance(t, torch.Tensor) for t in batch):
            raise CurvatureError(f"batch {index} is not an (inputs, targets) pair of tensors")
        inputs, targets = batch
        if inputs.ndim == 0 or targets.ndim == 0:
            raise CurvatureError(
                f"batch {index} holds a 0-dimensional tensor: batches have a leading "
                "dimension of samples (iterating a Dataset gives single samples; use a "
                "DataLoader)"
            )
        if inputs.shape[0] == 0:
            raise CurvatureError(f"batch {index} is empty")
        if inputs.shape[0] != targets.shape[0]:
            raise CurvatureError(
                f"batch {index}: {inputs.shape[0]} inputs but {targets.shape[0]} targets"
            )
        for name, tensor in (("inputs", inputs), ("targets", targets)):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CurvatureError(f"batch {index}: {name} hold NaN or inf; clean the data")
        checked.append((inputs, targets))
    return checked


@dataclass(frozen=True)
class ParameterLayout:
    """Where each named parameter sits in the flat vector: ``names[i]`` has shape
    ``shapes[i]`` and occupies ``flat[offsets[i] : offsets[i] + numels[i]]``."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        starts, total = [], 0
        for count in self.numels:
            starts.append(total)
            total += count
        return tuple(starts)

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector as a dict of named tensors (views, no copy)."""
        if flat.shape != (self.dim,):
            raise CurvatureError(
                f"expected a flat vector of shape ({self.dim},), got {tuple(flat.shape)}"
            )
        pieces = torch.split(flat, list(self.numels))
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes, strict=True)}

    def flatten(self, named: dict[str, torch.Tensor]) -> torch.Tensor:
        """The named tensors stacked into one flat vector, in layout order."""
        return torch.cat([named[name].reshape(-1) for name in self.names])


def parameter_layout(model: nn.Module) -> ParameterLayout:
    """The layout of ``model``'s trainable parameters (``requires_grad``), in
    ``named_parameters()`` order; a model without any is an error."""
    if isinstance(model, torch.jit.ScriptModule):
        raise CurvatureError(
            "a TorchScript model cannot be called functionally (torch.func.functional_call): "
            "pass the module before torch.jit.script"
        )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise CurvatureError(
            f"{type(model).__name__} has no trainable parameters: nothing to differentiate"
        )
    return ParameterLayout(tuple(n for n, _ in named), tuple(p.shape for _, p in named))


#: torch.nn module types whose output depends on their train/eval mode.
MODE_DEPENDENT = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._NormBase,
    nn.RNNBase,
    nn.MultiheadAttention,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def _mode_free(module: nn.Module) -> bool:
    """Whether a module's own computation cannot read its ``training`` flag: one of
    torch.nn's modules that is not :data:`MODE_DEPENDENT`, or a ``Sequential`` subclass
    that keeps its ``forward``. A user-defined module may read it."""
    if isinstance(module, MODE_DEPENDENT):
        return False
    if type(module).__module__.startswith("torch.nn."):
        return True
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def output_difference(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """How two evaluations of one model output differ, or ``None`` when they agree: floating
    outputs element by element to ``64 eps`` of the largest finite entry (summation orders
    may differ between evaluations, as GPU atomics do: a few eps; a random layer changes
    single outputs by far more, e.g. one dropped unit of 64 moves its sample's output by
    about 1e-2), with NaN and infinite entries in the same places; other outputs exactly."""
    if not a.is_floating_point():
        return None if torch.equal(a, b) else "integer outputs differ"
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    same_special = torch.equal(finite_a, finite_b) and bool(
        ((a == b) | finite_a | (torch.isnan(a) & torch.isnan(b))).all()
    )
    if not same_special:
        return "NaN or infinite outputs differ"
    a, b = a[finite_a], b[finite_b]
    if a.numel() == 0:
        return None
    tol = 64 * torch.finfo(a.dtype).eps * float(torch.maximum(a.abs().max(), b.abs().max()))
    largest = float((a - b).abs().max())
    return None if largest <= tol + 1e-300 else f"by up to {largest:.3g}"


@contextmanager
def preserved_buffers(*models: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``models`` on exit (batch norm in training mode and hooks
    such as ``spectral_norm``'s update buffers in place even when called functionally)."""
    saved = [(b, b.detach().clone()) for m in models for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def batch_mass(loss_fn: LossFn, targets: torch.Tensor) -> float:
    """The denominator of a batch's mean loss: ``n_b`` (its samples), except for
    ``nn.CrossEntropyLoss`` / ``nn.NLLLoss`` with class-index targets, whose mean is
    weighted: ``sum_i weight[y_i]`` over the targets not equal to ``ignore_index``. Batches
    combine exactly, ``L = sum_b m_b l_b / sum_b m_b``, whatever the batch sizes."""
    if not isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss) or targets.is_floating_point():
        return float(targets.shape[0])
    labels = targets.reshape(-1)
    kept = labels[labels != loss_fn.ignore_index]
    weight = loss_fn.weight
    if weight is None:
        return float(kept.numel())
    return float(weight.detach().to(kept.device)[kept].sum())


#: torch losses that compare outputs and targets elementwise: targets of another shape
#: broadcast (an (n, 1) output against an (n,) target gives an (n, n) difference) where the
#: model's own training would have failed or warned.
ELEMENTWISE_LOSSES: tuple[type, ...] = (
    nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss, nn.KLDivLoss, nn.PoissonNLLLoss,
)  # fmt: skip
ELEMENTWISE_FUNCTIONS: tuple[Callable[..., torch.Tensor], ...] = (
    F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits, F.soft_margin_loss, F.kl_div, F.poisson_nll_loss,
)  # fmt: skip


def check_target_shape(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse an elementwise torch loss (:data:`ELEMENTWISE_LOSSES`, or the functional
    forms) whose outputs and targets differ in shape: torch broadcasts them, with only a
    warning, into another loss."""
    elementwise = isinstance(loss_fn, ELEMENTWISE_LOSSES) or any(
        loss_fn is function for function in ELEMENTWISE_FUNCTIONS
    )
    if elementwise and isinstance(targets, torch.Tensor) and outputs.shape != targets.shape:
        _refuse_shapes(outputs.shape, targets.shape)


def _refuse_shapes(outputs: torch.Size, targets: torch.Size) -> None:
    try:
        shape = tuple(torch.broadcast_shapes(outputs, targets))
        broadcast = f"would broadcast them to {shape}, another loss"
    except RuntimeError:
        broadcast = "cannot compare them"
    raise CurvatureError(
        f"the model's outputs have shape {tuple(outputs)} and the targets {tuple(targets)}: "
        f"an elementwise loss {broadcast}. Reshape the targets to the outputs' shape "
        "(e.g. y.reshape(-1, 1))"
    )


def evaluate_loss(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn(outputs, targets)`` with the shapes checked (:func:`check_target_shape`),
    and torch's warning that a target size differs from the input size made an error: a
    wrapped elementwise loss (``lambda o, t: F.mse_loss(o, t)``) broadcasts too."""
    check_target_shape(loss_fn, outputs, targets)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*target size.*input size", category=UserWarning)
        try:
            return loss_fn(outputs, targets)
        except UserWarning:
            _refuse_shapes(outputs.shape, targets.shape)
            raise  # unreachable: _refuse_shapes raises


class ModelLoss:
    """``L(theta)``, the mean loss of ``model`` on ``data`` at flat parameters ``theta``.

    Args:
        model: any ``nn.Module``; its trainable parameters define ``theta``.
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch (a loss module
            with ``reduction`` other than ``"mean"`` is refused; a plain function that sums
            cannot be told apart and gives ``n_b`` times the Hessian).
        data: an ``(inputs, targets)`` pair or an iterable of such batches.

    Attributes:
        layout: the :class:`ParameterLayout` of ``theta``.
        batches: the checked batches.
        weights: each batch's share of the mean, ``m_b / sum m`` (:func:`batch_mass`).
        theta0: the model's current parameters, flat and detached.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Data) -> None:
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction not in ("mean", "batchmean"):
            raise CurvatureError(
                f"loss_fn has reduction={reduction!r}; the curvature tools need the mean loss "
                f"of a batch (reduction='mean'): batches are weighted by their sizes, and a "
                "sum's Hessian is n times the mean's"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.layout = parameter_layout(model)
        dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
        if len(dtypes) > 1:  # theta is one tensor: one dtype
            raise CurvatureError(
                f"the trainable parameters have dtypes {sorted(str(d) for d in dtypes)}: the "
                "flat parameter vector needs one; cast the model (e.g. model.double())"
            )
        if not dtypes <= {torch.float32, torch.float64}:
            raise CurvatureError(
                f"the parameters have dtype {dtypes.pop()}: curvature needs float32 or "
                "float64 (half precision has no eigensolvers); cast the model (model.double())"
            )
        reference = next(p for p in model.parameters() if p.requires_grad)
        self.batches = [
            tuple(  # floating data follow the parameters' dtype and device
                t.to(dtype=reference.dtype, device=reference.device)
                if t.is_floating_point()
                else t.to(device=reference.device)
                for t in batch
            )
            for batch in as_batches(data)
        ]
        sizes = [inputs.shape[0] for inputs, _ in self.batches]
        self.n_samples = sum(sizes)
        masses = [batch_mass(loss_fn, targets) for _, targets in self.batches]
        total = sum(masses)
        if not total > 0:
            raise CurvatureError(
                "every target is ignored (ignore_index) or has class weight 0: the mean loss "
                "is undefined"
            )
        # a batch whose every target is ignored has no mean (NaN): it is left out
        keep = [index for index, mass in enumerate(masses) if mass > 0]
        self.batches = [self.batches[index] for index in keep]
        self.weights = tuple(masses[index] / total for index in keep)
        params = dict(model.named_parameters())
        self.theta0 = self.layout.flatten({n: params[n].detach() for n in self.layout.names})
        self._buffers = dict(model.named_buffers())  # the model's own, live
        self._module_list = list(model.modules())
        self._modes = tuple(module.training for module in self._module_list)

    @property
    def dim(self) -> int:
        return self.layout.dim

    def check_modes(self) -> None:
        """Raise :class:`CurvatureError` when a module whose output can depend on its
        train/eval mode has changed mode since this loss was built (dropout, normalisation,
        recurrent and attention layers, and any user-defined module, which may read
        ``self.training``): the loss would be another function. Flips of modules that
        cannot depend on it (``Linear``, activations, a plain ``Sequential``) are accepted:
        putting a plain MLP in ``eval()`` changes nothing."""
        modes = tuple(module.training for module in self._module_list)
        if modes == self._modes:
            return
        pairs = zip(self._module_list, modes, self._modes, strict=True)
        flipped = [module for module, now, before in pairs if now != before]
        changed = sorted({type(m).__name__ for m in flipped if not _mode_free(m)})
        if changed:
            raise CurvatureError(
                "the model's train/eval mode changed after this loss was built "
                f"(model.train() or model.eval() since) in {', '.join(changed)}, whose output "
                "depends on it: the loss is another function now; build the loss (or the "
                "operator) again"
            )
        self._modes = modes

    def check_fixed_function(self) -> None:
        """Refuse models whose loss is not one fixed function of the parameters: dropout in
        training mode (random masks), normalisation layers that update running statistics
        in training mode, and batch norm that uses batch statistics
        (``track_running_stats=False``) when the data come in several batches (the loss
        would depend on the batching), and any model whose outputs differ between two
        evaluations at ``theta0`` (a random layer, a hook that updates buffers). Raises
        :class:`CurvatureError`."""
        random, updating, batch_dependent = [], [], []
        for module in self.model.modules():
            name = type(module).__name__
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
                random.append(name)
            if isinstance(module, nn.modules.batchnorm._NormBase):
                if module.training and module.track_running_stats:
                    updating.append(name)
                elif isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                    module.training or not module.track_running_stats
                ):
                    batch_dependent.append(name)
        if random or updating:
            layers = ", ".join(sorted(set(random + updating)))
            raise CurvatureError(
                f"the model is in training mode with {layers}: its loss changes from call to "
                "call (random masks, batch statistics). Call model.eval() first"
            )
        if batch_dependent and len(self.batches) > 1:
            raise CurvatureError(
                f"{', '.join(sorted(set(batch_dependent)))} uses batch statistics "
                "(track_running_stats=False): with the data in several batches the loss "
                "depends on how they are split; give one batch"
            )
        # random layers or hooks that module types cannot reveal; the model's buffers are
        # restored, whatever the two evaluations wrote into them
        with torch.no_grad(), preserved_buffers(self.model):
            first, again = (tree_leaves(self.batch_outputs(self.theta0, 0)) for _ in range(2))
        differences = [
            difference
            for a, b in zip(first, again, strict=True)
            if isinstance(a, torch.Tensor) and (difference := output_difference(a, b))
        ]
        if differences:
            raise CurvatureError(
                "the model's outputs differ between two evaluations at the same parameters "
                f"({differences[0]}): the model is random (e.g. F.dropout with training=True) "
                "or a hook updates its buffers (e.g. spectral_norm in training mode); put it "
                "in eval() mode or make it deterministic"
            )

    def batch_loss(self, theta: torch.Tensor, index: int) -> torch.Tensor:
        """The mean loss of batch ``index`` at ``theta`` (differentiable by torch.func)."""
        self.check_modes()
        return self._batch_loss(theta, index)

    def batch_outputs(self, theta: torch.Tensor, index: int) -> torch.Tensor:
        """The model's outputs on batch ``index`` at ``theta``."""
        named = self.layout.unflatten(theta)
        return functional_call(self.model, (named, self._buffers), (self.batches[index][0],))

    def _batch_loss(self, theta: torch.Tensor, index: int) -> torch.Tensor:
        outputs = self.batch_outputs(theta, index)
        value = evaluate_loss(self.loss_fn, outputs, self.batches[index][1])
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CurvatureError(
                f"loss_fn must return the mean loss of a batch as a scalar; got {shape}"
            )
        return value.reshape(())

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """``L(theta)``, the sample-weighted mean over every batch."""
        self.check_modes()
        return self._total(theta)

    def _total(self, theta: torch.Tensor) -> torch.Tensor:
        total = self._batch_loss(theta, 0) * self.weights[0]
        for index in range(1, len(self.batches)):
            total = total + self._batch_loss(theta, index) * self.weights[index]
        return total
