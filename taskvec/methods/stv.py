"""STV, Sensitivity-aware Task Vectors (Ma, Gou et al. 2025), as we read the paper (docs/design.md §4).

- **Where**: the *activation delta* of head (l, h) is ``‖A(context + query) − A(query)‖₂`` at
  the query's last token, averaged over query/context pairs (:func:`activation_deltas`), here by
  default relative to ``‖A(query)‖₂`` (``reduce="relative"``; the paper's literal mean of norms is
  ``reduce="mean_norm"``); the top-K heads by mean delta are the insertion sites. :func:`delta_heatmap` draws the
  ``[layers, heads]`` deltas.
- **What**: per selected head, k-means (M clusters) over its with-context activations gives a
  bank of candidate vectors (:func:`cluster_bank`); a categorical policy per head over its
  clusters is trained with REINFORCE (reward = minus the first answer token's cross-entropy,
  normalised advantages; :func:`stv_search`); the argmax cluster of every head is inserted
  (replacement at the last token).

Defaults are scaled to Gemma-3-270m (72 heads): K=20 heads (the paper: ~300 of 1024 for 7B
models, about the same fraction), M=8 clusters (paper: ~32, from many more passes), 100 pairs,
200 steps of 32 samples.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import pandas as pd
import torch

from ..checks import count, finite, integer
from ..errors import TaskvecError
from ..inputs.prompts import GENERIC, Prompt, Template, zero_shot
from ..inputs.trials import cyclic_order
from ..interventions.heads import HeadIntervention, replaced_logits
from ..models.model import Model
from .answers import RepeatedQueries
from .deltas import activation_deltas, top_heads
from .fit import Fit
from .reinforce import CategoricalPolicy, first_token_reward, reinforce


def cluster_bank(context: torch.Tensor, mask: torch.Tensor, n_clusters: int, *, seed: int = 0) -> torch.Tensor:
    """k-means centroids per selected head: the pre-clustered activation bank.

    Args:
        context: ``[n_passes, n_layers, n_heads, d_head]`` with-context activations.
        mask: ``[n_layers, n_heads]`` selected heads (``K`` of them, in row-major order).
        n_clusters: ``M``; must not exceed ``n_passes``.

    Returns:
        ``[K, M, d_head]`` float32 centroids.

    Example:
        >>> bank = cluster_bank(d.context, top_heads(d.delta, 20), 8)    # doctest: +SKIP
        >>> bank.shape                                                    # doctest: +SKIP
        torch.Size([20, 8, 256])
    """
    from sklearn.cluster import KMeans

    n = context.shape[0]
    if not 1 <= n_clusters <= n:
        raise TaskvecError(f"n_clusters={n_clusters} but only {n} activations per head: use more pairs or fewer clusters")
    out = []
    for layer, head in mask.nonzero().tolist():
        finite(f"the with-context activations of layer {layer}, head {head}", context[:, layer, head],
               where="pass, d_head", fix="a bank built from them would be meaningless; collect the activations again")
        x = context[:, layer, head].double().numpy()
        km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(x)
        out.append(torch.from_numpy(km.cluster_centers_).float())
    return torch.stack(out)


def _values(model: Model, mask: torch.Tensor, bank: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """``[n, L, H, Dh]`` values with head k of each row set to ``bank[k, choice[row, k]]``."""
    n = choice.shape[0]
    vals = torch.zeros(n, model.n_layers, model.n_heads, model.d_head)
    idx = mask.nonzero()
    k = torch.arange(idx.shape[0])
    vals[:, idx[:, 0], idx[:, 1]] = bank[k[None, :], choice]
    return vals


def stv_search(
    model: Model,
    mask: torch.Tensor,
    bank: torch.Tensor,
    queries: Sequence[Prompt],
    *,
    steps: int = 200,
    n_samples: int = 32,
    lr: float = 0.1,
    seed: int = 0,
    template: Template = GENERIC,
    progress: bool = True,
) -> tuple[CategoricalPolicy, pd.DataFrame]:
    """REINFORCE over one categorical per selected head (its bank's clusters).

    Each step: one zero-shot query, ``n_samples`` sampled cluster choices in one batch, every
    selected head replaced at the last token by its chosen centroid; reward = minus the first
    answer token's cross-entropy.

    Returns:
        ``(policy, history)``; ``policy.probs()`` is ``[K, M]``.
    """
    queries = list(queries)
    if not queries:
        raise TaskvecError("no queries given: pass zero-shot queries with labels")
    K, M, _ = bank.shape
    if int(mask.sum()) != K:
        raise TaskvecError(f"the mask selects {int(mask.sum())} heads but the bank has {K}: build both from one top_k")
    qb = RepeatedQueries(model, queries, n_samples, template)
    order = cyclic_order(len(queries), steps, seed)
    policy = CategoricalPolicy(K, M)
    masks = mask[None].expand(n_samples, *mask.shape)

    def reward(choice: torch.Tensor, step: int) -> torch.Tensor:
        batch, targets = qb(order[step])
        return first_token_reward(replaced_logits(model, batch, _values(model, mask, bank, choice), masks), targets)

    history = reinforce(policy, reward, steps=steps, n_samples=n_samples, lr=lr, seed=seed, desc="STV search",
                        progress=progress)
    return policy, history


def fit_stv(
    model: Model,
    pairs: Sequence[tuple[Any, str]],
    *,
    n_pairs: int = 100,
    n_shots: int = 5,
    top_k: int = 20,
    n_clusters: int = 8,
    steps: int = 200,
    n_samples: int = 32,
    lr: float = 0.1,
    reduce: str = "relative",
    seed: int = 0,
    task: str = "custom",
    template: Template = GENERIC,
    batch_size: int = 16,
    progress: bool = True,
) -> Fit:
    """Deltas, top-K heads, cluster bank, REINFORCE over clusters, argmax insertion.

    Args:
        reduce: how heads are ranked (:func:`~taskvec.methods.deltas.activation_deltas`):
            ``"relative"`` (default) measures each head's context delta against its own output
            scale; ``"mean_norm"`` is the paper's literal formula, which on Gemma-3 ranks the four
            layer-0 heads first for every task (their outputs are large whatever the input) and
            fell to zero-shot's level (docs/deviations.md).

    Returns:
        :class:`~taskvec.methods.fit.Fit`; ``timings`` has ``location_search`` (the deltas),
        ``bank`` and ``policy``; ``details`` has ``deltas`` (:class:`~taskvec.methods.deltas.Deltas`), ``bank``
        ``[K, M, d_head]``, ``probs`` ``[K, M]`` and ``choice`` ``[K]``.

    Example:
        >>> fit = fit_stv(m, task.pairs("val"), task=task.name)                  # doctest: +SKIP
        >>> fit.intervention.n_selected                                            # doctest: +SKIP
        20
    """
    for name, value in dict(n_pairs=n_pairs, n_shots=n_shots, top_k=top_k, n_clusters=n_clusters, steps=steps,
                            n_samples=n_samples, batch_size=batch_size).items():
        count(name, value)
    integer("seed", seed)
    if n_clusters > n_pairs:
        raise TaskvecError(f"n_clusters={n_clusters} but n_pairs={n_pairs}: each head's bank clusters one activation "
                           "per pair; use more pairs or fewer clusters")
    t: dict[str, float] = {}
    start = time.perf_counter()
    deltas = activation_deltas(model, pairs, n_pairs=n_pairs, n_shots=n_shots, seed=seed, template=template,
                               batch_size=batch_size, reduce=reduce, progress=progress)
    t["location_search"] = time.perf_counter() - start
    start = time.perf_counter()
    mask = top_heads(deltas.delta, top_k)
    assert deltas.context is not None
    bank = cluster_bank(deltas.context, mask, n_clusters, seed=seed)
    t["bank"] = time.perf_counter() - start
    start = time.perf_counter()
    queries = zero_shot(pairs, template)
    policy, history = stv_search(model, mask, bank, queries, steps=steps, n_samples=n_samples, lr=lr, seed=seed,
                                 template=template, progress=progress)
    t["policy"] = time.perf_counter() - start
    choice = policy.mode()
    values = _values(model, mask, bank, choice[None])[0]
    meta = dict(task=task, n_pairs=n_pairs, n_shots=n_shots, top_k=top_k, n_clusters=n_clusters, steps=steps,
                n_samples=n_samples, lr=lr, reduce=reduce, seed=seed, template=template.name)
    iv = HeadIntervention(values, mask, model.name, "stv", meta)
    return Fit(iv, history, t, dict(deltas=deltas, bank=bank, probs=policy.probs(), choice=choice))
