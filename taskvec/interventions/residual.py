"""Residual patching: replace (or add to) the residual stream at the query's delimiter with a
per-layer vector, at chosen layers (the cross-modal paper's patch, docs/design.md §2).

Only the prompt's position is patched; generated tokens are not.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..checks import finite, integer
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
        if isinstance(self.layers, (str, bytes)):
            raise TaskvecError(f"layers={self.layers!r} is a string: pass an integer or a list of integers")
        one = isinstance(self.layers, numbers.Integral) or getattr(self.layers, "ndim", None) == 0
        layers = [self.layers] if one else list(self.layers)
        if not layers:
            raise TaskvecError("no layer given: pass a layer index or a list of them")
        n = int(self.values.shape[0])
        # nnsight needs forward order; negative layers count from the end
        self.layers = sorted({integer(f"layers[{i}]", x, low=-n, high=n - 1) % n for i, x in enumerate(layers)})
        self._check_finite()

    def _check_finite(self) -> None:
        finite("patch values", self.values, where="layer, d_model",
               fix="patching them would make every prediction meaningless; rebuild the vector from finite values")

    def check(self, model: Model) -> None:
        """Raise unless the values have ``model``'s shape and are finite (checked again here:
        a tensor can be changed in place after the patch is made)."""
        shape = (model.n_layers, model.d_model)
        if tuple(self.values.shape) != shape:
            raise TaskvecError(f"patch values are {tuple(self.values.shape)} but {model.name} has (layers, d_model) = "
                               f"{shape}: extract the vector from this model (or one of the same shape)")
        self._check_finite()

    def apply(self, model: Model, rows: Any, pos: Any) -> None:
        for layer in self.layers:
            write_resid(model, layer, rows, pos, self.values[layer], self.mode)
