"""Plain text for the LoRA stages: sequences sampled once from the base LLM, and their next-token loss.

The caption stages mix plain-text sequences into every step so that the tuned LM keeps modelling
ordinary text (with the distillation term of :mod:`vlm_recipe.distill`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


#: Openings of the plain-text samples drawn from the base LLM for stage 3 (varied, none about the tasks).
TEXT_OPENINGS = (
    "The", "In 1998,", "Once upon a time", "def main():", "How to", "Water is", "She said that",
    "The following", "import numpy as np", "Yesterday", "Music", "A good way to", "The results show",
    "Dear", "Chapter 1", "If you", "Mathematics", "The weather", "My favourite", "There are many",
    "According to", "This week", "<html>", "It was", "Q: What is", "Scientists", "We", "The best",
    "Step 1:", "Summary:", "In the", "Note:",
)


def text_loss(model: Any, ids: torch.Tensor, positions: int, gen: torch.Generator) -> torch.Tensor:
    """Next-token cross-entropy of plain text at ``positions`` random positions per sequence."""
    lm = model.model.language_model
    hidden = lm(input_ids=ids, use_cache=False).last_hidden_state
    b, s = ids.shape
    pos = torch.stack([torch.randperm(s - 4, generator=gen)[:positions] + 3 for _ in range(b)])
    rows = torch.arange(b).unsqueeze(1).expand_as(pos)
    logits = model.lm_head(hidden[rows, pos]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[rows, pos + 1].reshape(-1))


def sample_text(base_dir: Path, n: int, length: int, seed: int, progress: bool = True) -> torch.Tensor:
    """``n`` plain-text sequences of ``length`` tokens sampled from the base LLM: ``[n, length]`` ids.

    Example:
        >>> sample_text(converted_dir("gemma-3-270m"), 4, 16, seed=0).shape     # doctest: +SKIP
        torch.Size([4, 16])
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    lm = Gemma3ForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    torch.manual_seed(seed)
    out = []
    per = 16
    openings = [TEXT_OPENINGS[i % len(TEXT_OPENINGS)] for i in range(n)]
    for start in tqdm(range(0, n, per), desc="sampling plain text", disable=not progress):
        chunk = openings[start : start + per]
        enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            ids = lm.generate(**enc, do_sample=True, top_k=50, temperature=1.0, min_new_tokens=length,
                              max_new_tokens=length, pad_token_id=tok.pad_token_id)
        out.append(ids[:, -length:])
    return torch.cat(out)[:n]
