"""Residual patching: replace (or add to) the residual stream at the query's delimiter with a
per-layer vector, at chosen layers (the cross-modal paper's patch, docs/design.md §2).

Only the prompt's position is patched; generated tokens are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import TaskvecError
from ..models.model import Model
from ..sites.residual import check_mode, write_resid


@dataclass
class ResidualPatch:
    """Write ``values[layer]`` into the residual after each of ``layers`` at the query's delimiter.

    Attributes:
        values: ``[n_layers, d_model]`` (e.g. a :class:`~taskvec.TaskVector`'s ``vectors``).
        layers: the decoder layers to patch (checked, sorted, 0-based).
        mode: ``"replace"`` (the paper) or ``"add"``.
        at: where in the prompt (default the query's delimiter).

    Example:
        >>> iv = ResidualPatch(v.vectors, [6])                                    # doctest: +SKIP
        >>> taskvec.predict(m, [taskvec.icl_prompt([], "Kenya")], intervention=iv)   # doctest: +SKIP
        ['Nairobi']
    """

    values: torch.Tensor
    layers: Sequence[int]
    mode: str = "replace"
    at: str | int = "query"
    every_step: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.values.dim() != 2:
            raise TaskvecError(f"patch values are [n_layers, d_model]; got shape {tuple(self.values.shape)}")
        self.layers = sorted({int(layer) for layer in self.layers})  # nnsight needs forward order

    def check(self, model: Model) -> None:
        shape = (model.n_layers, model.d_model)
        if tuple(self.values.shape) != shape:
            raise TaskvecError(f"patch values are {tuple(self.values.shape)} but {model.name} has (layers, d_model) = "
                               f"{shape}: extract the vector from this model (or one of the same shape)")

    def apply(self, model: Model, rows: Any, pos: Any) -> None:
        for layer in self.layers:
            write_resid(model, layer, rows, pos, self.values[layer], self.mode)
