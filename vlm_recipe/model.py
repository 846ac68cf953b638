"""The model under training: the frozen LM stored in bfloat16, the projector's start, the stage-1
classifier over the names, and the caption loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F


def frozen_lm_to_bf16(model: Any) -> None:
    """Store the frozen language model's linear weights in bfloat16, once.

    Under bf16 autocast a float32 weight that takes no gradient is cast to bfloat16 again at every
    call: four passes through the LM per caption step re-read its 270M weights each time (about
    half a second per step on this CPU). A weight already in bfloat16 is used as it is, and holds
    the very values the cast would have made, so the run's numbers do not change. The unembedding
    gets its own bfloat16 copy: it is tied to the input embedding, which stays float32.
    """
    lm = model.model.language_model
    for mod in lm.modules():
        if isinstance(mod, torch.nn.Linear) and not mod.weight.requires_grad:
            mod.weight.data = mod.weight.data.to(torch.bfloat16)
    tied = model.lm_head.weight
    head = torch.nn.Linear(tied.shape[1], tied.shape[0], bias=False, device="meta")
    head.weight = torch.nn.Parameter(tied.detach().to(torch.bfloat16), requires_grad=False)
    model.lm_head = head


def project_init(model: Any, seed: int) -> None:
    """Gemma-3 initialises the projection at zero; start it at unit per-dimension scale instead."""
    proj = model.model.multi_modal_projector
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = proj.mm_input_projection_weight
        w.copy_(torch.randn(w.shape, generator=g) / w.shape[0] ** 0.5)


class NameAnchoredHead(torch.nn.Module):
    """Stage-1 classifier whose class weights are a learned projection of the names' embeddings.

    A locked text tower, as in the contrastive pretraining of real VLM encoders (CLIP, SigLIP,
    LiT): the frozen LM's input embeddings of each class name (mean over the name's tokens) pass
    through a learned linear map into the encoder's space, and the logits are scaled cosines. The
    encoder so learns features laid out like the names, up to a linear map, which the captioning
    stage's linear projector can learn to undo. The image tokens are never set to the embeddings:
    the projector starts random and learns from the caption loss alone.

    Args:
        name_embeddings: ``[n_classes, d_model]``.
        hidden: width of the encoder's output.

    Example:
        >>> head = NameAnchoredHead(torch.randn(5, 640), 256)
        >>> head(torch.randn(2, 256)).shape
        torch.Size([2, 5])
    """

    def __init__(self, name_embeddings: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("names", F.normalize(name_embeddings.float(), dim=-1), persistent=False)
        self.proj = torch.nn.Linear(name_embeddings.shape[-1], hidden, bias=False)
        self.log_scale = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``[b, hidden]`` pooled encoder output -> ``[b, n_classes]`` logits."""
        w = F.normalize(self.proj(self.names), dim=-1)
        return self.log_scale.exp() * F.normalize(feats.float(), dim=-1) @ w.T


def name_embeddings(model: Any, tokenizer: Any, names: Sequence[str]) -> torch.Tensor:
    """Mean input embedding of each name's tokens (as they follow ``A:`` in a caption): ``[n, d_model]``.

    Example:
        >>> name_embeddings(vlm.hf, vlm.tokenizer, ["Wolf", "Pizza"]).shape    # doctest: +SKIP
        torch.Size([2, 640])
    """
    emb = model.model.language_model.embed_tokens
    with torch.no_grad():
        return torch.stack([emb(torch.tensor(tokenizer(n, add_special_tokens=False)["input_ids"])).float().mean(0)
                            for n in names])


def caption_loss(model: Any, batch: Any) -> torch.Tensor:
    """Cross-entropy of the caption tokens only (unembedding applied to those positions alone)."""
    out = model.model(**batch.model_inputs(), use_cache=False)
    hidden = out.last_hidden_state
    where = batch.targets >= 0
    logits = model.lm_head(hidden[where]).float()
    return F.cross_entropy(logits, batch.targets[where])
