"""Checks at the boundary of the convex ReLU tools: shapes, finiteness, parameters."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from losslab.errors import ConvexProblemError


def as_features(X: Any, *, bias: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``X`` as a 2-D floating tensor (float64 unless ``dtype`` or a float tensor says
    otherwise), with a column of ones appended when ``bias``. Rejects empty, NaN and
    constant (all-equal) data."""
    tensor = _as_tensor(X, dtype)
    _check_place(tensor, "X")
    if tensor.ndim != 2:
        raise ConvexProblemError(f"X must be 2-D (n, d); got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ConvexProblemError(f"X is empty: shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        rows = torch.nonzero(~torch.isfinite(tensor).all(dim=1)).flatten()[:5].tolist()
        raise ConvexProblemError(f"X has NaN or inf (rows {rows}, 0-based); clean the data first")
    if bool((tensor == tensor[0]).all()):
        raise ConvexProblemError(
            "X is constant across rows (every row the same point): there is nothing to fit; "
            "check the data"
        )
    if bias:
        ones = torch.ones(tensor.shape[0], 1, dtype=tensor.dtype, device=tensor.device)
        tensor = torch.cat([tensor, ones], dim=1)
    return tensor


def as_target(y: Any, X: torch.Tensor) -> torch.Tensor:
    """``y`` as a 1-D tensor of X's dtype and device, with one entry per row of ``X``."""
    tensor = _as_tensor(y, X.dtype).to(X.device)
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != 1 or tensor.shape[0] != X.shape[0]:
        raise ConvexProblemError(
            f"y must have shape ({X.shape[0]},) to match X; got {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ConvexProblemError("y has NaN or inf; clean the data first")
    return tensor


def solve_device(device: Any, X: Any = None) -> torch.device:
    """Where to solve: ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``)
    checked to be usable for float64 solves here; ``None``: the device of ``X`` when it is a
    torch tensor, else the CPU."""
    if device is None:
        return X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConvexProblemError(
            f"device must be 'cpu', 'cuda' or 'cuda:<index>'; got {device!r}"
        ) from error
    if resolved.type not in ("cpu", "cuda"):
        raise ConvexProblemError(
            f"device {device!r}: the convex solvers run in float64, on 'cpu' or 'cuda'"
        )
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConvexProblemError(
                f"device {device!r}: this torch sees no CUDA device (torch.cuda.is_available() "
                "is False); use device='cpu'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ConvexProblemError(
                f"device {device!r}: this machine has {count} CUDA device(s), 0 to {count - 1}"
            )
    return resolved


def host_array(values: Any) -> Any:
    """A torch tensor on any device (with or without grad) as a NumPy array on the host;
    anything else unchanged (scikit-learn's checks take it from there)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return values


def check_lam(lam: float) -> float:
    """``lam`` as a float: a finite real number > 0 (numpy scalars too, not a bool)."""
    if isinstance(lam, bool | np.bool_) or not isinstance(lam, numbers.Real):
        raise ConvexProblemError(f"lam must be a finite number > 0; got {lam!r}")
    if not np.isfinite(float(lam)) or lam <= 0:
        raise ConvexProblemError(f"lam must be a finite number > 0; got {lam!r}")
    return float(lam)


def _check_place(tensor: torch.Tensor, name: str) -> None:
    """float32 or float64 (the solvers factor matrices and the certificates need at least
    float32's range and precision), on a real device."""
    if tensor.dtype not in (torch.float32, torch.float64):
        raise ConvexProblemError(
            f"{name} has dtype {tensor.dtype}: the solvers and certificates need float32 or "
            f"float64; convert it (e.g. {name}.double())"
        )
    if tensor.device.type == "meta":
        raise ConvexProblemError(f"{name} is on the meta device: it holds no numbers")


def _as_tensor(values: Any, dtype: torch.dtype | None) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        target = dtype or (values.dtype if values.is_floating_point() else torch.float64)
        return values.detach().to(target)
    try:
        array = np.array(values, dtype=np.float64)  # a copy: torch wants it writable
    except (TypeError, ValueError) as error:
        raise ConvexProblemError(
            f"expected numbers, got {type(values).__name__}: {error}"
        ) from None
    return torch.as_tensor(array, dtype=dtype or torch.float64)
