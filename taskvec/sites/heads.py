"""Per-head outputs, read and written inside a trace, for every adapter.

A *head output* is the input of a layer's attention output projection (``o_proj``, ``dense``,
... as named by the architecture row), ``[batch, seq, n_heads * d_head]``, viewed as
``[batch, seq, n_heads, d_head]``. MTV, STV and MimIC all act here (docs/design.md §1).
Whole runs (means over prompts) are :func:`taskvec.sites.collect.collect` with ``site="heads"``.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from ..errors import TaskvecError
from ..models.model import Model
from .residual import check_mode, on_device


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., n_heads * d_head]`` -> ``[..., n_heads, d_head]``.

    Example:
        >>> split_heads(torch.zeros(2, 5, 1024), 4).shape
        torch.Size([2, 5, 4, 256])
    """
    if x.shape[-1] % n_heads:
        raise TaskvecError(f"last dimension {x.shape[-1]} is not a multiple of n_heads={n_heads}")
    return rearrange(x, "... (h d) -> ... h d", h=n_heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., n_heads, d_head]`` -> ``[..., n_heads * d_head]``.

    Example:
        >>> merge_heads(torch.zeros(2, 5, 4, 256)).shape
        torch.Size([2, 5, 1024])
    """
    return rearrange(x, "... h d -> ... (h d)")


def read_heads(model: Model, layer: int, rows: Any, pos: Any) -> torch.Tensor:
    """Inside a trace: head outputs of ``layer`` at ``(rows, pos)``, ``[n, n_heads, d_head]``.

    Read layers in forward order (nnsight requirement).

    Example:
        >>> with m.trace(batch):                                          # doctest: +SKIP
        ...     h = read_heads(m, 3, torch.arange(2), -1).save()
        >>> h.shape                                                       # doctest: +SKIP
        torch.Size([2, 4, 256])
    """
    x = model.head_input(layer).input
    return split_heads(x[on_device(rows, x.device), on_device(pos, x.device)], model.n_heads)


def write_heads(
    model: Model,
    layer: int,
    rows: Any,
    pos: Any,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: str = "replace",
) -> None:
    """Inside a trace: replace (or add to) head outputs of ``layer`` at ``(rows, pos)``.

    Args:
        rows: ``[n]`` batch rows (or a slice).
        pos: ``[n]`` token positions, or one int for every row (e.g. ``-1``).
        values: ``[n_heads, d_head]`` (same for every row) or ``[n, n_heads, d_head]``.
        mask: which heads to write, ``[n_heads]`` or ``[n, n_heads]`` bool; ``None``: all.
        mode: ``"replace"`` or ``"add"``.

    Values, mask and index tensors go to the activation's device (and the values to its dtype).

    Example:
        >>> with m.trace(batch):                                               # doctest: +SKIP
        ...     write_heads(m, 3, torch.arange(2), -1, means[3], mask=torch.tensor([1, 0, 0, 1]).bool())
    """
    check_mode(mode)
    x = model.head_input(layer).input
    rows, pos = on_device(rows, x.device), on_device(pos, x.device)
    cur = split_heads(x[rows, pos], model.n_heads)
    values = values.to(device=cur.device, dtype=cur.dtype)
    new = values if mode == "replace" else cur + values
    if mask is not None:
        new = torch.where(mask.to(device=cur.device, dtype=torch.bool)[..., None], new, cur)
    x[rows, pos] = merge_heads(new.expand_as(cur))
