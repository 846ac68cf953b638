"""The shipped low-rank update of the language model, merged at load.

The shipped delta (``lm_delta.safetensors``) holds, per target linear layer of each decoder layer,
the two factors of ``W + scale * B @ A``: ``"<i>.<path>.lora_A"`` (``[rank, in]``) and
``"<i>.<path>.lora_B"`` (``[out, rank]``). :func:`merge_lora` folds them into the weights, so the
assembled model is a plain transformers model with no extra modules. (They are trained as side
matrices by the training recipe, ``vlm_recipe/lora.py`` in a source checkout.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TaskvecError


@torch.no_grad()
def merge_lora(layers: nn.ModuleList, state: dict[str, torch.Tensor], scale: float) -> int:
    """Add ``scale * B @ A`` to each target weight named in ``state``; returns how many were merged.

    Args:
        layers: the decoder layers (``model.language_model.layers``).
        state: ``{"<i>.<path>.lora_A": [r, in], "<i>.<path>.lora_B": [out, r]}`` (any float dtype).
        scale: the update's multiplier (``VLMSpec.lora_scale``).

    Example:
        >>> ls = nn.ModuleList([nn.Sequential(nn.Linear(2, 2, bias=False))])
        >>> merge_lora(ls, {"0.0.lora_A": torch.ones(1, 2), "0.0.lora_B": torch.ones(2, 1)}, 1.0)
        1
    """
    n = 0
    for key in sorted(k for k in state if k.endswith(".lora_A")):
        stem = key[: -len(".lora_A")]
        index, path = stem.split(".", 1)
        owner = layers[int(index)]
        for p in path.split("."):
            owner = getattr(owner, p)
        if not isinstance(owner, nn.Linear):
            raise TaskvecError(f"the shipped LM delta names {stem!r}, which is not a Linear layer: retrain the VLM")
        delta = state[f"{stem}.lora_B"].float() @ state[key].float() * scale
        if delta.shape != owner.weight.shape:
            raise TaskvecError(f"LM delta for {stem!r} has shape {tuple(delta.shape)}, the layer {tuple(owner.weight.shape)}: retrain the VLM")
        owner.weight += delta.to(owner.weight.dtype)
        n += 1
    return n
