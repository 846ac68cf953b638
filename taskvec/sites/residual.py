"""The residual stream after each decoder layer, read and written inside a trace."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import TaskvecError
from ..models.architectures import resolve
from ..models.model import Model

MODES = ("replace", "add")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is ``"replace"`` or ``"add"``, else raise.

    Example:
        >>> check_mode("add")
        'add'
    """
    if mode not in MODES:
        raise TaskvecError(f"mode={mode!r}: use one of {MODES}")
    return mode


def on_device(index: Any, device: torch.device) -> Any:
    """An index (a ``[n]`` tensor of rows or positions, a slice or an int) ready to index a tensor on
    ``device``: index tensors go there too, so no write or read mixes devices."""
    return index.to(device) if isinstance(index, torch.Tensor) else index


def resid(model: Model, layer: int) -> Any:
    """Inside a trace: the hidden states after decoder layer ``layer``, ``[batch, seq, d_model]``
    (a proxy: index it to read, assign into it to write). Touch layers in forward order."""
    return model.residual(model.layers()[layer].output)


def mlp_output(model: Model, layer: int) -> Any:
    """Inside a trace: the output of decoder layer ``layer``'s feed-forward block (MLP),
    ``[batch, seq, d_model]``, before it is added to the residual stream (and, on Gemma, before the
    post-feed-forward norm). Read it after the layer's attention, before the layer's output."""
    return resolve(model.layers()[layer], model.arch.mlp).output


def read_resid(model: Model, layer: int, rows: Any, pos: Any) -> torch.Tensor:
    """Inside a trace: the residual after ``layer`` at ``(rows, pos)``, ``[n, d_model]``."""
    h = resid(model, layer)
    return h[on_device(rows, h.device), on_device(pos, h.device)]


def write_resid(model: Model, layer: int, rows: Any, pos: Any, value: torch.Tensor, mode: str = "replace") -> None:
    """Inside a trace: replace (or add ``value`` ``[d_model]`` to) the residual after ``layer`` at
    ``(rows, pos)``. ``value`` goes to the activation's device and dtype."""
    h = resid(model, layer)
    value = value.to(device=h.device, dtype=h.dtype)
    rows, pos = on_device(rows, h.device), on_device(pos, h.device)
    if mode == "replace":
        h[rows, pos] = value
    else:
        h[rows, pos] += value
