"""Patching a task vector into zero-shot queries, as an nnsight intervention.

The target is the query ``Q:{x}\\nA:``; at layer L the residual stream at the query's final
delimiter is **replaced** by the vector's row L (or the row is **added**). Only that prompt
position is patched; generated tokens are not (docs/design.md §2).

A layer sweep never recomputes what a patch cannot change: the query's delimiter is its last
token, and in a causal model a patch there leaves every earlier position untouched at every
layer. So :func:`layer_sweep` runs the prompt without its last token once, keeps its keys and
values, and for each layer runs only the last token on top of them with the patch applied
(:func:`cached_patched_logits`); the logits are those of the full patched forward.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Sequence

import pandas as pd
import torch

from ..checks import count
from ..errors import TaskvecError
from ..inputs.metric import is_correct
from ..inputs.prompts import Prompt, prompt_list
from ..interventions.residual import ResidualPatch
from ..interventions.run import batch_logits, decode_ids, generate, predict
from ..models.each_batch import each_batch
from ..models.model import Batch, Model
from ..sites.positions import resolve
from ..sites.residual import MODES, check_mode
from .vectors import TaskVector

__all__ = ["MODES", "best_layer", "cached_patched_logits", "layer_sweep", "patch_generate", "patch_predict",
           "patched_logits", "prefix_cache"]


def _queries(queries: Any) -> list[Prompt]:
    """The queries of a patching call, checked before any work (a non-empty list of prompts)."""
    return prompt_list(queries, "queries")


def _vector(vector: Any, model: Model, allow_transfer: bool, *, optional: bool = False) -> None:
    if vector is None and optional:
        return
    if not isinstance(vector, TaskVector):
        raise TaskvecError(f"vector={vector!r} is a {type(vector).__name__}: pass a taskvec.TaskVector (from "
                           "taskvec.extract_icl, extract_instruction or TaskVector.load)")
    vector.check_compatible(model, allow_transfer=allow_transfer)


def _patch(vector: TaskVector | None, layers: Sequence[int], mode: str) -> ResidualPatch | None:
    """The vector as an intervention at ``layers`` (``None`` for no vector), after checking ``mode``."""
    check_mode(mode)
    return None if vector is None else vector.patch(layers, mode=mode)


def patched_logits(
    model: Model,
    vector: TaskVector | None,
    batch: Batch,
    layers: Sequence[int],
    *,
    mode: str = "replace",
) -> torch.Tensor:
    """Next-token logits ``[batch, vocab]`` of one batch with the vector patched at ``layers``.

    ``vector=None`` runs the batch unpatched (the same code path, for fair baselines).
    """
    return batch_logits(model, batch, _patch(vector, layers, mode))


def prefix_cache(model: Model, batch: Batch) -> Any | None:
    """Keys and values of every token but the last, for :func:`cached_patched_logits`.

    Returns ``None`` when the shortcut does not apply (the model runs remotely, some prompt's
    query delimiter is not the batch's last column, or the architecture cannot run a last token
    alone: ``Architecture.cached_sweep``); callers then use :func:`patched_logits`.

    Example:
        >>> cache = prefix_cache(m, m.encode(taskvec.zero_shot(pairs)))   # doctest: +SKIP
    """
    if model.remote or not model.arch.cached_sweep:
        return None
    ids = batch.input_ids
    last = ids.shape[1] - 1
    if last < 1 or not all(p.has_query for p in batch.prompts) or \
            any(int(p) != last for p in resolve(model, batch, "query")):
        return None
    # every [batch, seq] tensor (ids, masks, token types) loses its last column; images stay
    prefix = {k: (v[:, :-1] if v.ndim == 2 and v.shape[1] == ids.shape[1] else v) for k, v in batch.inputs.items()}
    with torch.no_grad():
        out = model.hf(**prefix, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None)  # the output's field from transformers 5.24
    return cache if cache is not None else out.past_key_values


def _cache_keyword(model: Model) -> str:
    """The forward's KV-cache keyword: ``cache`` from transformers 5.24 (``past_key_values`` is deprecated
    there), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"


def cached_patched_logits(
    model: Model,
    vector: TaskVector | None,
    batch: Batch,
    cache: Any,
    layers: Sequence[int],
    *,
    mode: str = "replace",
) -> torch.Tensor:
    """:func:`patched_logits` from a :func:`prefix_cache`: only the last token is run.

    The cache is copied, never changed, so one cache serves every layer of a sweep.

    Returns:
        next-token logits ``[batch, vocab]``, equal (to float rounding) to the full patched forward.
    """
    inputs = {"input_ids": batch.input_ids[:, -1:], _cache_keyword(model): copy.deepcopy(cache)}
    if "attention_mask" in batch.inputs:
        inputs["attention_mask"] = batch.inputs["attention_mask"]
    return batch_logits(model, batch, _patch(vector, layers, mode), inputs=inputs, at=(slice(None), -1))


def patch_predict(
    model: Model,
    vector: TaskVector | None,
    queries: Sequence[Prompt],
    layers: int | Sequence[int],
    *,
    mode: str = "replace",
    allow_transfer: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy first token of each zero-shot query with the vector patched at ``layers``.

    Args:
        vector: from :func:`taskvec.extract_icl` / :func:`taskvec.extract_instruction`.
        queries: zero-shot query prompts (``icl_prompt([], x)``); text or image.
        layers: one layer or several (patched at each).
        mode: ``"replace"`` (the paper) or ``"add"``.
        allow_transfer: accept a vector from another model of the same shape (LLM→VLM).

    Example:
        >>> qs = [taskvec.icl_prompt([], x, label=y) for x, y in task.pairs("test")]   # doctest: +SKIP
        >>> taskvec.patch_predict(m, v, qs, layers=6)[:3]                               # doctest: +SKIP
        ['Paris', 'Tokyo', 'Rome']
    """
    check_mode(mode)
    _vector(vector, model, allow_transfer, optional=True)
    chosen = model.check_layers(layers)
    queries = _queries(queries)
    batch_size = count("batch_size", batch_size)
    patch = _patch(vector, chosen, mode)
    return predict(model, queries, intervention=patch, batch_size=batch_size, progress=progress, desc="patch")


def layer_sweep(
    model: Model,
    vector: TaskVector,
    queries: Sequence[Prompt],
    *,
    layers: Sequence[int] | None = None,
    mode: str = "replace",
    allow_transfer: bool = False,
    batch_size: int = 32,
    case_sensitive: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch at each layer in turn; one batched forward per (layer, batch of queries).

    Each query batch is encoded and run once without its last token; each layer then reruns only
    that token on the cached keys and values (see :func:`prefix_cache`), which gives the logits
    of the full patched forward at a fraction of its cost.

    Returns:
        DataFrame ``layer, query, prediction, label, correct``.

    Example:
        >>> df = layer_sweep(m, v, val_queries)                          # doctest: +SKIP
        >>> df.groupby("layer").correct.mean().idxmax()                  # doctest: +SKIP
        6
    """
    check_mode(mode)
    _vector(vector, model, allow_transfer)
    chosen = model.check_layers(layers)
    queries = _queries(queries)
    batch_size = count("batch_size", batch_size)
    def step(batch: Batch) -> torch.Tensor:
        """Greedy ids ``[n_layers_chosen, batch]``: the vector patched at each layer in turn."""
        cache = prefix_cache(model, batch)
        ids = []
        for layer in chosen:
            if cache is None:
                logits = patched_logits(model, vector, batch, [layer], mode=mode)
            else:
                logits = cached_patched_logits(model, vector, batch, cache, [layer], mode=mode)
            ids.append(logits.argmax(dim=-1))
        return torch.stack(ids)

    records = []
    offset = 0
    for chunk, ids in each_batch(model, queries, batch_size, step, desc="layer sweep", progress=progress):
        for layer, row in zip(chosen, ids):
            for i, (q, pred) in enumerate(zip(chunk, decode_ids(model, row))):
                records.append(dict(layer=layer, query=offset + i, prediction=pred, label=q.label,
                                    correct=is_correct(pred, q.label or "", case_sensitive=case_sensitive)))
        offset += len(chunk)
    return pd.DataFrame(records)


def best_layer(accuracy_by_layer: pd.DataFrame | pd.Series) -> int:
    """The layer with the highest mean validation accuracy (ties: the earliest layer).

    Accepts a sweep DataFrame (``layer``, ``correct`` and optionally ``task`` columns: the mean is
    taken per task first, then over tasks, as the paper selects one layer for all tasks) or a
    Series indexed by layer.

    Example:
        >>> best_layer(pd.Series([0.1, 0.5, 0.5, 0.2]))
        1
    """
    if isinstance(accuracy_by_layer, pd.DataFrame):
        df = accuracy_by_layer
        missing = [c for c in ("layer", "correct") if c not in df.columns]
        if missing:
            raise TaskvecError(f"accuracy_by_layer has no column {missing[0]!r}: pass a layer_sweep DataFrame "
                               "(columns layer, correct) or a Series of accuracies indexed by layer")
        if "task" in df.columns:
            series = df.groupby(["task", "layer"]).correct.mean().groupby("layer").mean()
        else:
            series = df.groupby("layer").correct.mean()
    elif isinstance(accuracy_by_layer, pd.Series):
        series = accuracy_by_layer
    else:
        raise TaskvecError(f"accuracy_by_layer={accuracy_by_layer!r} is a {type(accuracy_by_layer).__name__}: pass a "
                           "layer_sweep DataFrame or a Series of accuracies indexed by layer")
    if series.empty:
        raise TaskvecError("no accuracies given: run a layer sweep first")
    best = series.max()
    return int(series[series == best].index.min())


def patch_generate(
    model: Model,
    vector: TaskVector,
    queries: Sequence[Prompt],
    layers: int | Sequence[int],
    *,
    max_new_tokens: int = 8,
    mode: str = "replace",
    allow_transfer: bool = False,
) -> list[str]:
    """Greedy continuation of each query with the vector patched at the prompt's delimiter only
    (the first forward); later tokens run unpatched. For qualitative examples.

    Example:
        >>> patch_generate(m, v, [taskvec.icl_prompt([], "Kenya")], layers=6)   # doctest: +SKIP
        ['Nairobi\\n\\nQ:']
    """
    check_mode(mode)
    _vector(vector, model, allow_transfer)
    chosen = model.check_layers(layers)
    queries = _queries(queries)
    max_new_tokens = count("max_new_tokens", max_new_tokens, fix="the number of tokens to generate")
    return generate(model, queries, intervention=_patch(vector, chosen, mode), max_new_tokens=max_new_tokens)
