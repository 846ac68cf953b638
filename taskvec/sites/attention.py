"""The attention's real query·key logits, read through nnsight (what MimIC needs).

Inside a trace, :func:`attention_logits` rebuilds, for one decoder layer, the exact scores the
model's attention soft-maxes: the query after the model's own per-head norm (if any) and rotary
embedding, the keys (this forward's, or the cache's during generation), the scaling, the logit
soft-capping and the causal / sliding-window / padding mask. Everything architecture-specific
comes from the architecture row (``q_proj``, ``k_proj``, ``q_norm``, ``k_norm``) and from the
attention module itself (``scaling``, ``attn_logit_softcapping``, ``sliding_window``, the
``apply_rotary_pos_emb`` of its own modeling file): no transformers class is patched.

``softmax(scores) @ values`` reproduces the attention output that enters the output projection;
the tests check exactly that.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TaskvecError
from ..models.architectures import resolve
from ..models.model import Model


@dataclass
class AttentionLogits:
    """One layer's attention pieces at the current forward.

    Attributes:
        query: ``[batch, n_heads, q_len, d_head]`` after norm and rotary embedding.
        scores: ``[batch, n_heads, q_len, kv_len]`` scaled (and soft-capped) logits, ``-inf``
            where the mask forbids attending.
        heads: ``[batch, q_len, n_heads * d_head]``, the attention output entering the output
            projection (read; write a replacement through ``envoy.input``).
        envoy: the output projection's envoy.
        hidden: ``[batch, q_len, d_model]``, the attention's input hidden states.
    """

    query: torch.Tensor
    scores: torch.Tensor
    heads: torch.Tensor
    envoy: Any
    hidden: torch.Tensor


def check_supported(model: Model) -> None:
    """Raise a clear error when query·key logits cannot be rebuilt for this architecture."""
    arch = model.arch
    if arch.q_proj == arch.k_proj:
        raise TaskvecError(
            f"{model.name} fuses the query/key/value projections ({arch.q_proj}); MimIC needs separate "
            "q_proj and k_proj: pick a model with separate projections, or add the split to taskvec/sites/attention.py"
        )
    attn = resolve(model.layer(0, traced=False), arch.attention)
    if _rotary(attn) is None:
        raise TaskvecError(
            f"{type(attn).__name__} has no standard apply_rotary_pos_emb in its modeling file (e.g. multimodal "
            "rotary embeddings): MimIC cannot rebuild its attention logits yet"
        )


def _rotary(attn: Any) -> Any:
    return getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)


def _per_head(x: torch.Tensor, d_head: int) -> torch.Tensor:
    """``[b, s, n*d]`` -> ``[b, s, n, d]``."""
    return x.view(*x.shape[:2], -1, d_head)


def _cached_keys(cache: Any, index: int) -> torch.Tensor | None:
    layers = getattr(cache, "layers", None)
    if layers is not None and index < len(layers):
        keys = getattr(layers[index], "keys", None)
        return keys if isinstance(keys, torch.Tensor) and keys.numel() else None
    key_cache = getattr(cache, "key_cache", None)  # older transformers
    if key_cache is not None and index < len(key_cache):
        return key_cache[index]
    return None


def _default_mask(q_len: int, kv_len: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Causal (and sliding-window) mask ``[1, 1, q_len, kv_len]``, True = may attend."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window:
        allowed &= (q_pos - k_pos) < window
    return allowed[None, None]


def attention_logits(model: Model, layer: int) -> AttentionLogits:
    """Inside a trace: the query and masked attention logits of ``layer``.

    Reaches, in forward order, the attention's inputs, the query/key projections (or norms) and
    the output projection's input; call it once per layer, layers in increasing order, before
    reading anything later in the forward. Write new head outputs with
    ``result.envoy.input = ...``.

    Example:
        >>> with m.trace(batch):                                          # doctest: +SKIP
        ...     a = attention_logits(m, 3)
        ...     lse = a.scores.logsumexp(-1).save()                       # [b, H, q]
    """
    arch = model.arch
    lay = model.layer(layer)
    plain_layer = model.layer(layer, traced=False)
    plain = resolve(plain_layer, arch.attention)
    rotary = _rotary(plain)
    if rotary is None or arch.q_proj == arch.k_proj:
        check_supported(model)
    d_head = model.d_head
    args, kwargs = resolve(lay, arch.attention).inputs
    hidden = args[0] if args else kwargs["hidden_states"]
    cos, sin = kwargs["position_embeddings"]
    mask = kwargs.get("attention_mask")
    # the attention module's cache keyword: `past_key_values` up to transformers 5.23, `cache` from 5.24
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    q = _per_head(resolve(lay, arch.q_proj).output, d_head)  # [b, s, heads, d]
    k = _per_head(resolve(lay, arch.k_proj).output, d_head)
    # the model's own per-head norms act on the last dimension, whatever layout its forward uses
    if arch.q_norm:
        q = resolve(plain_layer, arch.q_norm)(q)
    if arch.k_norm:
        k = resolve(plain_layer, arch.k_norm)(k)
    q, k = rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    envoy = resolve(lay, arch.out_proj)
    heads = envoy.input  # reached after the attention ran (and updated the cache)
    q_len = q.shape[-2]
    keys = k
    if cache is not None:
        cached = _cached_keys(cache, getattr(plain, "layer_idx", layer))
        if cached is not None and cached.shape[-2] > q_len:  # generation: earlier tokens live in the cache
            keys = cached
    if keys.shape[1] != q.shape[1]:  # grouped-query attention
        keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
    scaling = getattr(plain, "scaling", d_head ** -0.5)
    scores = torch.matmul(q, keys.transpose(-1, -2)) * scaling
    cap = getattr(plain, "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    kv_len = keys.shape[-2]
    if mask is None:
        mask = _default_mask(q_len, kv_len, getattr(plain, "sliding_window", None), scores.device)
    else:
        mask = mask[..., -kv_len:]
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask
    return AttentionLogits(q, scores, heads, envoy, hidden)
