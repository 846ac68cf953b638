"""Activation deltas: how strongly each head's output at the query's last token changes when the
query gets demonstrations (STV's location search, docs/design.md §4), and their heatmap.

The delta of head (l, h) is ``‖A(context + query) − A(query)‖₂`` at the query's last token,
averaged over query/context pairs (:func:`activation_deltas`); :func:`top_heads` picks the
top-K, :func:`delta_heatmap` draws the ``[layers, heads]`` grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch

from ..checks import count, integer, one_of
from ..errors import TaskvecError
from ..inputs.prompts import GENERIC, Template
from ..inputs.trials import icl_trials
from ..models.model import Model
from ..sites.collect import head_activations


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
        """The same pairs reduced another way (``"mean_norm"``, ``"relative"`` or ``"norm_mean"``),
        no new forwards."""
        if self.context is None or self.alone is None:
            raise TaskvecError("these deltas kept no activations: compute them with keep_context=True")
        one_of("reduce", reduce, REDUCES)
        return Deltas(_reduce(self.context - self.alone, reduce, self.alone), self.context, self.model_name,
                      {**self.meta, "reduce": reduce}, self.alone)

    def __repr__(self) -> str:
        L, H = self.delta.shape
        return f"Deltas(model={self.model_name!r}, {L} layers x {H} heads, max {float(self.delta.max()):.3g})"

    def _repr_html_(self) -> str:
        """In Jupyter: the five heads with the largest delta."""
        top = self.frame().stack().sort_values(ascending=False).head(5)
        rows = "".join(f"<tr><td>{layer}</td><td>{h}</td><td>{v:.3g}</td></tr>" for (layer, h), v in top.items())
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
        reduce: ``"mean_norm"`` (default, the paper's formula, docs/design.md §4): the mean over
            pairs of ``‖A_ctx − A_query‖₂``, how strongly a head reacts to context;
            ``"relative"``: the mean over pairs of ``‖A_ctx − A_query‖₂ / ‖A_query‖₂``, the same
            reaction measured against the head's own output scale (heads whose outputs are large
            whatever the input, e.g. Gemma's layer-0 heads, no longer win by scale alone);
            ``"norm_mean"``: the norm of the mean delta vector, which keeps only the shift that is
            consistent across pairs (query-specific changes cancel).

    Returns:
        :class:`Deltas` (``.delta`` ``[n_layers, n_heads]``).

    Example:
        >>> d = activation_deltas(m, task.pairs("val"))     # doctest: +SKIP
        >>> d.delta.shape                                    # doctest: +SKIP
        torch.Size([18, 4])
    """
    one_of("reduce", reduce, REDUCES)
    count("n_pairs", n_pairs, fix="trials to average over")
    count("batch_size", batch_size)
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
    return Deltas(_reduce(with_ctx - without, reduce, without), with_ctx if keep_context else None, model.name, meta,
                  without if keep_context else None)


#: how per-pair head deltas become one number per head (see :func:`activation_deltas`)
REDUCES = ("mean_norm", "relative", "norm_mean")


def _reduce(diff: torch.Tensor, reduce: str, alone: torch.Tensor | None = None) -> torch.Tensor:
    """``[n_pairs, L, H, Dh]`` differences (and the query-alone activations for ``"relative"``)
    -> ``[L, H]``."""
    if reduce == "mean_norm":
        return diff.norm(dim=-1).mean(0).float()
    if reduce == "relative":
        if alone is None:
            raise TaskvecError("reduce='relative' needs the query-alone activations")
        return (diff.norm(dim=-1) / alone.norm(dim=-1).clamp_min(1e-6)).mean(0).float()
    if reduce == "norm_mean":
        return diff.mean(0).norm(dim=-1).float()
    raise TaskvecError(f"reduce={reduce!r}: use one of {REDUCES}")


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
    k = integer("top_k", k, fix=f"choose between 1 and {n} (the model's number of heads)")
    if not 1 <= k <= n:
        raise TaskvecError(f"top_k={k}: choose between 1 and {n} (the model's number of heads)")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[delta.flatten().topk(k).indices] = True
    return mask.view_as(delta)
