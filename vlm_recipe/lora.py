"""A low-rank update of the language model, trained as side matrices.

During training a target ``Linear`` computes ``W x + scale * B (A x)`` with ``W`` frozen; the
shipped delta is only ``A`` and ``B`` (:func:`lora_state`), and the library's
:func:`taskvec.embedded.lora.merge_lora` folds ``scale * B @ A`` into ``W`` at load, so the
assembled model is a plain transformers model with no extra modules.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from taskvec.errors import TaskvecError


class LoRALinear(nn.Module):
    """``base(x) + scale * x @ A.T @ B.T`` with ``base`` frozen; ``B`` starts at zero.

    Args:
        base: the frozen linear layer (``[out, in]`` weight).
        rank: rank of the update.
        scale: multiplier of the update.

    Example:
        >>> layer = LoRALinear(nn.Linear(8, 4, bias=False), rank=2, scale=1.0)
        >>> layer(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype) * self.scale


@contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """Inside the block every :class:`LoRALinear` under ``module`` computes its base layer alone.

    The teacher of :mod:`vlm_recipe.distill`: the base model without a second copy of it.

    Example:
        >>> layer = LoRALinear(nn.Linear(2, 2, bias=False), rank=1, scale=1.0)
        >>> with torch.no_grad():
        ...     _ = layer.lora_B.fill_(1.0)
        >>> x = torch.ones(1, 2)
        >>> with lora_disabled(layer):
        ...     torch.equal(layer(x), layer.base(x))
        True
    """
    wrapped = [m for m in module.modules() if isinstance(m, LoRALinear)]
    scales = [m.scale for m in wrapped]
    for m in wrapped:
        m.scale = 0.0
    try:
        yield
    finally:
        for m, s in zip(wrapped, scales):
            m.scale = s


def _targets(layers: nn.ModuleList, paths: Iterable[str]) -> list[tuple[str, nn.Module, str]]:
    out = []
    for i, layer in enumerate(layers):
        for path in paths:
            *parents, leaf = path.split(".")
            owner = layer
            for p in parents:
                owner = getattr(owner, p)
            out.append((f"{i}.{path}", owner, leaf))
    return out


def add_lora(layers: nn.ModuleList, paths: Iterable[str], rank: int, scale: float) -> list[nn.Parameter]:
    """Wrap each ``layers[i].<path>`` Linear in a :class:`LoRALinear`; returns the new parameters.

    Example:
        >>> ls = nn.ModuleList([nn.Sequential(nn.Linear(4, 4))])
        >>> len(add_lora(ls, ["0"], rank=2, scale=1.0))
        2
    """
    params: list[nn.Parameter] = []
    for _, owner, leaf in _targets(layers, paths):
        base = getattr(owner, leaf)
        if not isinstance(base, nn.Linear):
            raise TaskvecError(f"LoRA target {leaf!r} is a {type(base).__name__}, not a Linear: fix VLMSpec.lora_targets")
        wrapped = LoRALinear(base, rank, scale).to(base.weight.device)
        setattr(owner, leaf, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_state(layers: nn.ModuleList, paths: Iterable[str]) -> dict[str, torch.Tensor]:
    """The update as ``{"<i>.<path>.lora_A": [r, in], "<i>.<path>.lora_B": [out, r]}``."""
    out = {}
    for key, owner, leaf in _targets(layers, paths):
        mod = getattr(owner, leaf)
        if isinstance(mod, LoRALinear):
            out[f"{key}.lora_A"] = mod.lora_A.detach().clone()
            out[f"{key}.lora_B"] = mod.lora_B.detach().clone()
    return out


def remove_lora(layers: nn.ModuleList, paths: Iterable[str], *, merge: bool) -> None:
    """Replace each :class:`LoRALinear` by its base layer, folding the update in when ``merge``."""
    for _, owner, leaf in _targets(layers, paths):
        mod = getattr(owner, leaf)
        if isinstance(mod, LoRALinear):
            if merge:
                with torch.no_grad():
                    mod.base.weight += (mod.lora_B.float() @ mod.lora_A.float()).to(mod.base.weight.dtype) * mod.scale
            setattr(owner, leaf, mod.base)


def load_lora(layers: nn.ModuleList, saved: dict[str, torch.Tensor]) -> None:
    """Copy a saved update (:func:`lora_state`) into the :class:`LoRALinear` layers it names (a resumed run)."""
    for key, value in saved.items():
        stem, which = key.rsplit(".", 1)
        index, path = stem.split(".", 1)
        mod = layers[int(index)]
        for p in path.split("."):
            mod = getattr(mod, p)
        if not isinstance(mod, LoRALinear):
            raise TaskvecError(f"checkpoint names a LoRA update at {stem!r} the model does not have: delete the checkpoint")
        getattr(mod, which).data.copy_(value)
