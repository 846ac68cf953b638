"""STV, Sensitivity-aware Task Vectors (Ma, Gou et al. 2025), as we read the paper (design.md §4).

- **Where**: the *activation delta* of head (l, h) is ``‖A(context + query) − A(query)‖₂`` at
  the query's last token, averaged over query/context pairs (:func:`activation_deltas`); the
  top-K heads by mean delta are the insertion sites. :func:`delta_heatmap` draws the
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
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch

from ..errors import TaskvecError
from ..sites.heads import HeadFit, HeadIntervention, head_activations, replaced_logits
from ..models.model import Model
from ..inputs.prompts import GENERIC, Prompt, Template, zero_shot
from .reinforce import CategoricalPolicy, first_token_reward, reinforce
from .answers import RepeatedQueries
from ..inputs.trials import cyclic_order, icl_trials


@dataclass
class Deltas:
    """Activation deltas per head and the with-context activations they came from.

    Attributes:
        delta: ``[n_layers, n_heads]`` mean ``‖A_ctx − A_query‖₂`` over pairs.
        context: ``[n_pairs, n_layers, n_heads, d_head]`` with-context head outputs at the query's
            last token (the material of the cluster bank), or ``None``.
        model_name: the model the activations come from.
        meta: how they were computed (pairs, shots, seed, reduce).
        alone: ``[n_pairs, n_layers, n_heads, d_head]`` query-only head outputs, or ``None``.
    """

    delta: torch.Tensor
    context: torch.Tensor | None
    model_name: str
    meta: dict[str, Any] = field(default_factory=dict)
    alone: torch.Tensor | None = field(default=None, repr=False)

    def reduced(self, reduce: str) -> "Deltas":
        """The same pairs reduced another way (``"mean_norm"`` or ``"norm_mean"``), no new forwards."""
        if self.context is None or self.alone is None:
            raise TaskvecError("these deltas kept no activations: compute them with keep_context=True")
        return Deltas(_reduce(self.context - self.alone, reduce), self.context, self.model_name,
                      {**self.meta, "reduce": reduce}, self.alone)

    def __repr__(self) -> str:
        L, H = self.delta.shape
        return f"Deltas(model={self.model_name!r}, {L} layers x {H} heads, max {float(self.delta.max()):.3g})"

    def _repr_html_(self) -> str:
        """In Jupyter: the five heads with the largest delta."""
        top = self.frame().stack().sort_values(ascending=False).head(5)
        rows = "".join(f"<tr><td>{l}</td><td>{h}</td><td>{v:.3g}</td></tr>" for (l, h), v in top.items())
        return (f"<b>Deltas</b> {self.model_name} &middot; {self.delta.shape[0]} layers &times; {self.delta.shape[1]} heads"
                f"<table><tr><th>layer</th><th>head</th><th>delta</th></tr>{rows}</table>")

    def frame(self) -> pd.DataFrame:
        """The deltas as a DataFrame: index ``layer``, columns ``head``."""
        L, H = self.delta.shape
        return pd.DataFrame(self.delta.numpy(), index=pd.RangeIndex(L, name="layer"),
                            columns=pd.RangeIndex(H, name="head"))


def activation_deltas(
    model: Model,
    pairs: Sequence[tuple[Any, str]],
    *,
    n_pairs: int = 100,
    n_shots: int = 5,
    seed: int = 0,
    template: Template = GENERIC,
    batch_size: int = 16,
    reduce: str = "mean_norm",
    keep_context: bool = True,
    progress: bool = True,
) -> Deltas:
    """Mean activation delta per head between each query with and without its context.

    Each of ``n_pairs`` trials is an ``n_shots`` prompt and the same query alone; head outputs
    are read at each prompt's last token (the query's delimiter in both).

    Args:
        reduce: ``"mean_norm"`` (default, design.md §4): the mean over pairs of
            ``‖A_ctx − A_query‖₂``, how strongly a head reacts to context; ``"norm_mean"``: the
            norm of the mean delta vector, which keeps only the shift that is consistent across
            pairs (query-specific changes cancel).

    Returns:
        :class:`Deltas` (``.delta`` ``[n_layers, n_heads]``).

    Example:
        >>> d = activation_deltas(m, task.pairs("val"))     # doctest: +SKIP
        >>> d.delta.shape                                    # doctest: +SKIP
        torch.Size([18, 4])
    """
    if reduce not in ("mean_norm", "norm_mean"):
        raise TaskvecError(f"reduce={reduce!r}: use 'mean_norm' or 'norm_mean'")
    ctx, alone = icl_trials(pairs, n_pairs, n_shots=n_shots, seed=seed, template=template)
    with_ctx = head_activations(model, ctx, batch_size=batch_size, keep=True, progress=progress).rows
    # a query recurs across trials (T trials over fewer pairs): run each distinct one alone once
    first: dict[str, int] = {}
    index = [first.setdefault(p.text + "\x00" + str([id(im) for im in p.images]), len(first)) for p in alone]
    distinct = [alone[index.index(i)] for i in range(len(first))]
    without = head_activations(model, distinct, batch_size=batch_size, keep=True, progress=progress).rows
    assert with_ctx is not None and without is not None
    without = without[torch.tensor(index)]
    meta = dict(n_pairs=n_pairs, n_shots=n_shots, seed=seed, template=template.name, reduce=reduce)
    return Deltas(_reduce(with_ctx - without, reduce), with_ctx if keep_context else None, model.name, meta,
                  without if keep_context else None)


def _reduce(diff: torch.Tensor, reduce: str) -> torch.Tensor:
    """``[n_pairs, L, H, Dh]`` differences -> ``[L, H]``."""
    if reduce == "mean_norm":
        return diff.norm(dim=-1).mean(0).float()
    if reduce == "norm_mean":
        return diff.mean(0).norm(dim=-1).float()
    raise TaskvecError(f"reduce={reduce!r}: use 'mean_norm' or 'norm_mean'")


def delta_heatmap(
    source: Model | Deltas | torch.Tensor | pd.DataFrame,
    pairs: Sequence[tuple[Any, str]] | None = None,
    *,
    title: str | None = None,
    top_k: int | None = None,
    **kwargs: Any,
) -> tuple[pd.DataFrame, Any]:
    """The activation-delta heatmap: ``[layers, heads]`` DataFrame and a plotly figure.

    Args:
        source: a model (then ``pairs`` is required and :func:`activation_deltas` runs with
            ``kwargs``), or precomputed :class:`Deltas`, a ``[n_layers, n_heads]`` tensor or
            DataFrame.
        top_k: outline the top-K heads (STV's insertion sites) on the figure.

    Returns:
        ``(frame, figure)``: index ``layer``, columns ``head``; a ``plotly.graph_objects.Figure``.

    Example:
        >>> df, fig = taskvec.delta_heatmap(m, task.pairs("val"), n_pairs=50)   # doctest: +SKIP
        >>> df.shape                                                             # doctest: +SKIP
        (18, 4)
    """
    import plotly.graph_objects as go

    if isinstance(source, Model):
        if pairs is None:
            raise TaskvecError("delta_heatmap(model, ...) needs pairs: pass the task's (x, y) examples")
        source = activation_deltas(source, pairs, **kwargs)
    if isinstance(source, Deltas):
        frame = source.frame()
    elif isinstance(source, torch.Tensor):
        if source.dim() != 2:
            raise TaskvecError(f"deltas must be [n_layers, n_heads], got shape {tuple(source.shape)}")
        frame = Deltas(source.float(), None, "").frame()
    elif isinstance(source, pd.DataFrame):
        frame = source
    else:
        raise TaskvecError(f"cannot draw a heatmap from {type(source).__name__}: pass a Model, Deltas, tensor or DataFrame")
    fig = go.Figure(go.Heatmap(z=frame.values, x=[f"h{h}" for h in frame.columns], y=list(frame.index),
                               colorscale="Viridis", colorbar=dict(title="‖Δ‖₂")))
    if top_k:
        mask = top_heads(torch.tensor(frame.values), top_k)
        for layer, head in mask.nonzero().tolist():
            fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                          line=dict(color="red", width=2))
    fig.update_layout(title=title or "Activation deltas per head", xaxis_title="head", yaxis_title="layer",
                      template="plotly_white", height=max(350, 22 * len(frame.index)))
    return frame, fig


def top_heads(delta: torch.Tensor, k: int) -> torch.Tensor:
    """``[n_layers, n_heads]`` bool mask of the ``k`` heads with the largest delta.

    Example:
        >>> top_heads(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), 2).tolist()
        [[False, True], [True, False]]
    """
    n = delta.numel()
    if not 1 <= k <= n:
        raise TaskvecError(f"top_k={k}: choose between 1 and {n} (the model's number of heads)")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[delta.flatten().topk(k).indices] = True
    return mask.view_as(delta)


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
    reduce: str = "mean_norm",
    seed: int = 0,
    task: str = "custom",
    template: Template = GENERIC,
    batch_size: int = 16,
    progress: bool = True,
) -> HeadFit:
    """Deltas, top-K heads, cluster bank, REINFORCE over clusters, argmax insertion.

    Returns:
        :class:`~taskvec.sites.heads.HeadFit`; ``timings`` has ``location_search`` (the deltas),
        ``bank`` and ``policy``; ``details`` has ``deltas`` (:class:`Deltas`), ``bank``
        ``[K, M, d_head]``, ``probs`` ``[K, M]`` and ``choice`` ``[K]``.

    Example:
        >>> fit = fit_stv(m, task.pairs("val"), task=task.name)                  # doctest: +SKIP
        >>> fit.intervention.n_selected                                            # doctest: +SKIP
        20
    """
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
    return HeadFit(iv, history, t, dict(deltas=deltas, bank=bank, probs=policy.probs(), choice=choice))
