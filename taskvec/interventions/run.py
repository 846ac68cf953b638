"""Greedy first-token predictions, the quantity every accuracy in the cross-modal paper is built on."""

from __future__ import annotations

from typing import Sequence

import torch

from ..inputs.batching import batches
from ..models.model import Model
from ..inputs.prompts import Prompt


def first_token_logits(model: Model, prompts: Sequence[Prompt | str], *, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """Next-token logits at each prompt's last position, ``[n_prompts, vocab]`` (float32, CPU).

    Example:
        >>> m = taskvec.load()                                      # doctest: +SKIP
        >>> first_token_logits(m, ["Q:France\\nA:"]).shape           # doctest: +SKIP
        torch.Size([1, 262144])
    """
    out = []
    for chunk in batches(list(prompts), batch_size, desc="forward", progress=progress):
        batch = model.encode(chunk)
        with model.trace(batch, logits_to_keep=1):
            logits = model.nn.output.logits[:, -1].save()
        out.append(logits.float().cpu())
    return torch.cat(out)


def predict(model: Model, prompts: Sequence[Prompt | str], *, batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy first token of each prompt, decoded (the paper's prediction).

    The batch is left-padded, so the last position is every prompt's own last token.

    Example:
        >>> m = taskvec.load()                                                     # doctest: +SKIP
        >>> predict(m, [taskvec.icl_prompt([("France", "Paris")] * 3, "Japan")])    # doctest: +SKIP
        ['Tokyo']
    """
    ids = first_token_logits(model, prompts, batch_size=batch_size, progress=progress).argmax(dim=-1)
    return [model.tokenizer.decode([int(i)]) for i in ids]
