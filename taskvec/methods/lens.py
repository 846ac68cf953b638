"""Logit lens: decode the residual stream of every layer at one position into the vocabulary.

One traced forward per batch saves only the ``[batch, n_layers, d_model]`` residuals at the
chosen position; decoding (final norm + unembedding, soft-capping if configured) then runs one
layer at a time, so memory never holds full-vocabulary logits for every layer and position.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from ..checks import count, integer, one_of
from ..errors import TaskvecError
from ..inputs.prompts import Prompt, prompt_list
from ..interventions.run import non_finite
from ..models.model import Model
from ..sites.collect import collect

TokenSpec = Sequence[str | int]


def residuals_at(
    model: Model,
    prompts: Sequence[Prompt | str],
    *,
    position: int = -1,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """Residual stream after each chosen layer at one position of each prompt.

    Args:
        position: counted on each prompt's own processed tokens (``-1`` = last, image tokens
            included), whatever the padding.

    Returns:
        ``[n_prompts, n_layers_chosen, d_model]`` float32 tensor on the CPU.

    Example:
        >>> residuals_at(m, ["Q:France\\nA:"]).shape    # doctest: +SKIP
        torch.Size([1, 18, 640])
    """
    prompts = prompt_list(prompts)
    position = _position(position)
    chosen = model.check_layers(layers)
    batch_size = count("batch_size", batch_size)
    acts = collect(model, prompts, site="resid", at=position, layers=chosen, batch_size=batch_size, keep=True,
                   progress=progress, desc="lens")
    assert acts.rows is not None
    return acts.rows


def _position(position: Any) -> int:
    return integer("position", position, fix="pass a token index counted on each prompt's own tokens, e.g. -1 "
                                               "for the last")


def _top_k(model: Model, top_k: Any) -> int:
    vocab = model.vocab_size
    return integer("top_k", top_k, low=1, high=vocab, fix=f"{model.name} scores {vocab} tokens")


def token_ids(tokenizer: Any, tokens: TokenSpec) -> list[int]:
    """Ids for a category: ints are kept; a word contributes the first token of ``word`` and of
    ``" " + word`` (the form a word takes after a space), deduplicated.

    Example:
        >>> token_ids(m.tokenizer, ["Paris", 42])     # doctest: +SKIP
        [50429, 9079, 42]
    """
    ids: list[int] = []
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise TaskvecError(f"tokens={tokens!r}: pass a list of words or token ids, e.g. ['Paris', 'Rome']")
    for tok in tokens:
        if isinstance(tok, bool):
            raise TaskvecError(f"token {tok!r} is a bool: pass a word or a token id")
        if isinstance(tok, int):
            cand = [tok]
        else:
            word = str(tok)
            if not word.strip() and word != " ":
                raise TaskvecError("a category token is empty: remove it or pass its id")
            cand = []
            for form in (word, " " + word.lstrip()):
                enc = tokenizer(form, add_special_tokens=False)["input_ids"]
                if enc:
                    cand.append(int(enc[0]))
        for i in cand:
            if i not in ids:
                ids.append(i)
    return ids


@dataclass
class PhaseResult:
    """Per-layer summed probability of token categories, averaged over prompts.

    Attributes:
        df: columns ``layer, category, mean, std, sem, q25, q75, ci_low, ci_high, n_prompts``
            (``q25``/``q75``: the interquartile range over prompts; ``ci_low``/``ci_high``: a 95%
            normal interval of the mean, clipped to [0, 1]).
        per_prompt: ``[n_prompts, n_layers, n_categories]`` summed probabilities.
    """

    df: pd.DataFrame
    per_prompt: torch.Tensor
    categories: dict[str, list[int]]
    title: str = "Logit lens phases"

    def figure(self, height: int = 450) -> Any:
        """Line plot of each category's mean probability per layer with its interquartile band
        over prompts (paper Fig. 3); the band stays inside [0, 1], unlike mean ± std."""
        import plotly.graph_objects as go

        fig = go.Figure()
        palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        for i, (cat, sub) in enumerate(self.df.groupby("category", sort=False)):
            color = palette[i % len(palette)]
            fig.add_trace(go.Scatter(
                x=list(sub.layer) + list(sub.layer[::-1]),
                y=list(sub["q75"]) + list(sub["q25"][::-1]),
                fill="toself", fillcolor=color, opacity=0.15, line=dict(width=0), showlegend=False, hoverinfo="skip",
            ))
            fig.add_trace(go.Scatter(x=sub.layer, y=sub["mean"], name=cat, mode="lines+markers", line=dict(color=color)))
        fig.update_layout(title=self.title, xaxis_title="layer", yaxis_title="probability (band: quartiles over prompts)",
                          template="plotly_white", height=height, yaxis_range=[0, 1])
        return fig

    def _repr_html_(self) -> str:
        return self.df.pivot(index="layer", columns="category", values="mean").round(4).to_html()


@dataclass
class LensResult:
    """What :func:`lens` returns: residuals, a tidy top-k table, and plot-ready views.

    Attributes:
        hidden: ``[n_prompts, n_layers, d_model]`` residuals that were decoded.
        layers: the layer index of each column of ``hidden``.
        df: tidy table ``prompt, layer, rank, token, token_id, probability, logit``.
        prompts: the prompts, in order.
    """

    model: Model
    hidden: torch.Tensor
    layers: list[int]
    df: pd.DataFrame
    prompts: list[Prompt]
    top_k: int
    chunk: int = field(default=64, repr=False)

    def __repr__(self) -> str:
        return (
            f"LensResult({len(self.prompts)} prompts x {len(self.layers)} layers, top_k={self.top_k}, "
            f"model={self.model.name!r})"
        )

    def _repr_html_(self) -> str:
        top = self.top1()
        common = top.groupby("layer")["token"].agg(lambda s: s.value_counts().index[0])
        share = top.groupby("layer")["token"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
        rows = "".join(
            f"<tr><td>{layer}</td><td><code>{html.escape(repr(tok))}</code></td><td>{share[layer]:.0%}</td></tr>"
            for layer, tok in common.items()
        )
        return (
            f"<b>LensResult</b> &mdash; {self.model.name}, {len(self.prompts)} prompts, {len(self.layers)} layers"
            f"<table><tr><th>layer</th><th>most common top-1</th><th>share</th></tr>{rows}</table>"
        )

    # --- tables --------------------------------------------------------------------------------
    def top1(self) -> pd.DataFrame:
        """Top-1 decoding per prompt and layer (rows of ``df`` with rank 0)."""
        return self.df[self.df["rank"] == 0].reset_index(drop=True)

    def probabilities(self, ids: Sequence[int]) -> torch.Tensor:
        """Probability of each token id at each prompt and layer, ``[n_prompts, n_layers, len(ids)]``."""
        vocab = self.model.vocab_size
        ids = [integer(f"ids[{i}]", t, low=0, high=vocab - 1, fix=f"{self.model.name} scores {vocab} tokens")
               for i, t in enumerate(ids)]
        index = torch.as_tensor(ids, dtype=torch.long)
        n, n_layers = self.hidden.shape[0], self.hidden.shape[1]
        flat = self.hidden.transpose(0, 1).reshape(n_layers * n, -1)  # layer-major: [L * P, d]
        probs = self.model.token_probs(flat, index, self.chunk)
        return probs.reshape(n_layers, n, -1).transpose(0, 1)

    def input_tokens(self, *, early: int | None = None, top: int = 3) -> list[int]:
        """The model's own *input phase* tokens: the most common top-1 decodings of the decoded
        position over the first ``early`` layers (default: the first sixth of the model's layers,
        at least one), at most ``top`` distinct ids, most common first.

        The paper's input phase is the delimiter's model-specific early decoding (``auf`` for the
        colon on Idefics2), not the literal ``:``; on Gemma-3 the colon decodes early to tokens
        such as ``tikz``. This reads them from the prompts decoded here, so each model gets its
        own set (docs/deviations.md).

        Example:
            >>> r = taskvec.lens(m, prompts)                          # doctest: +SKIP
            >>> m.tokenizer.decode(r.input_tokens()[:1])              # doctest: +SKIP
            'tikz'
        """
        n = self.model.n_layers
        early = max(1, -(-n // 6)) if early is None else count("early", early, fix=f"a number of layers, 1..{n}")
        top = count("top", top, fix="how many distinct tokens")
        first = self.top1()
        first = first[first.layer < early]
        if first.empty:
            raise TaskvecError(f"this lens result decodes no layer below {early} (its layers are {self.layers}): "
                               "run the lens over the early layers (layers=None) to read the input tokens")
        return [int(i) for i in first.token_id.value_counts().index[:top]]

    def phase_categories(self, task: Any, *, input: str = "model") -> dict[str, list]:
        """The paper's three categories for ``task``: ``input`` from this model's own early decoding
        (:meth:`input_tokens`, ``input="model"``, the default) or the task's literal words
        (``input="literal"``: ``[":"]`` unless the task says otherwise); ``task`` and ``answer``
        from the task.

        Example:
            >>> r.phases(r.phase_categories(task)).df.head()        # doctest: +SKIP
        """
        one_of("input", input, ("model", "literal"))
        cats = task.phase_categories()
        if input == "model":
            cats["input"] = self.input_tokens()
        return cats

    def phases(self, categories: Mapping[str, TokenSpec], *, title: str | None = None) -> PhaseResult:
        """Summed probability per category and layer, averaged over prompts (paper Fig. 3).

        Args:
            categories: e.g. ``{"input": [":"], "task": ["capital", "city"], "answer": labels}``;
                strings or ids; a multi-token word counts by its first token (with and without
                a leading space).

        Example:
            >>> r = taskvec.lens(m, prompts)                                            # doctest: +SKIP
            >>> r.phases({"input": [":"], "task": ["capital"], "answer": ["Paris"]}).df.head()  # doctest: +SKIP
        """
        if not categories:
            raise TaskvecError("phases() needs at least one category, e.g. {'input': [':'], 'task': [...]}")
        ids = {name: token_ids(self.model.tokenizer, toks) for name, toks in categories.items()}
        vocab = self.model.vocab_size
        for name, i in ids.items():
            if not i:
                raise TaskvecError(f"category {name!r} has no tokens: give it at least one word or id")
            for t in i:
                if not 0 <= t < vocab:
                    raise TaskvecError(f"category {name!r}: token id {t} is out of range: pass ids in 0..{vocab - 1} "
                                       f"({self.model.name} scores {vocab} tokens)")
        flat = sorted({i for v in ids.values() for i in v})
        col = {i: k for k, i in enumerate(flat)}
        probs = self.probabilities(flat)  # [P, L, |flat|]
        per = torch.stack([probs[..., [col[i] for i in v]].sum(-1) for v in ids.values()], dim=-1)
        n = per.shape[0]
        rows = []
        for j, layer in enumerate(self.layers):
            for c, name in enumerate(ids):
                vals = per[:, j, c]
                std = float(vals.std(unbiased=True)) if n > 1 else 0.0
                mean, sem = float(vals.mean()), std / n ** 0.5
                q25, q75 = (float(q) for q in torch.quantile(vals.double(), torch.tensor([0.25, 0.75], dtype=torch.float64)))
                rows.append(dict(layer=layer, category=name, mean=mean, std=std, sem=sem, q25=q25, q75=q75,
                                 ci_low=max(0.0, mean - 1.96 * sem), ci_high=min(1.0, mean + 1.96 * sem), n_prompts=n))
        return PhaseResult(df=pd.DataFrame(rows), per_prompt=per, categories=ids, title=title or "Logit lens phases")

    # --- figures -------------------------------------------------------------------------------
    def figure_table(self, prompt: int = 0) -> Any:
        """Layer x rank heatmap of one prompt's top-k tokens, coloured by probability."""
        import plotly.graph_objects as go

        prompt = integer("prompt", prompt, fix=f"pass a prompt index in 0..{len(self.prompts) - 1}")
        if not 0 <= prompt < len(self.prompts):
            raise TaskvecError(f"prompt {prompt} is out of range: the result has prompts 0..{len(self.prompts) - 1}")
        sub = self.df[self.df.prompt == prompt]
        z = sub.pivot(index="layer", columns="rank", values="probability")
        text = sub.pivot(index="layer", columns="rank", values="token").map(repr)
        fig = go.Figure(go.Heatmap(z=z.values, x=[f"#{r + 1}" for r in z.columns], y=z.index, text=text.values,
                                   texttemplate="%{text}", colorscale="Blues", colorbar=dict(title="p")))
        fig.update_layout(title=f"Top-{self.top_k} decodings per layer (prompt {prompt})", xaxis_title="rank",
                          yaxis_title="layer", template="plotly_white", height=max(400, 28 * len(z)))
        return fig

    def figure_top1_distribution(self, layers: Sequence[int] | None = None, *, max_tokens: int = 8) -> Any:
        """Stacked bars: share of prompts whose top-1 decoding is each token, per layer (paper Fig. 4)."""
        import plotly.graph_objects as go

        max_tokens = count("max_tokens", max_tokens)
        top = self.top1()
        if layers is not None:
            chosen = self.model.check_layers(layers)
            missing = [layer for layer in chosen if layer not in self.layers]
            if missing:
                raise TaskvecError(f"layers={layers!r}: layer {missing[0]} was not decoded; this result has layers "
                                   f"{self.layers}")
            top = top[top.layer.isin(chosen)]
        shares = top.groupby("layer")["token"].value_counts(normalize=True).rename("share").reset_index()
        keep = shares.groupby("token")["share"].max().nlargest(max_tokens).index
        shares["token"] = shares["token"].where(shares["token"].isin(keep), "(other)")
        shares = shares.groupby(["layer", "token"], as_index=False)["share"].sum()
        fig = go.Figure()
        for tok, sub in shares.groupby("token"):
            fig.add_trace(go.Bar(x=sub.layer, y=sub.share, name=repr(tok) if tok != "(other)" else tok))
        fig.update_layout(barmode="stack", title="Top-1 decoding across prompts, per layer", xaxis_title="layer",
                          yaxis_title="share of prompts", template="plotly_white")
        return fig


def _topk_table(model: Model, hidden: torch.Tensor, layers: list[int], top_k: int, offset: int = 0,
                chunk: int = 16) -> pd.DataFrame:
    """Top-k rows per (prompt, layer); full-vocabulary logits exist for ``chunk`` rows at a time,
    decoded where the weights are (one request on a remote model)."""
    n, n_layers = hidden.shape[0], hidden.shape[1]
    flat = hidden.transpose(0, 1).reshape(n_layers * n, -1)  # layer-major: [L * P, d]
    values, ids, lse = model.top_tokens(flat, top_k, chunk)
    probs = (values - lse[:, None]).exp()
    convert = model.tokenizer.decode
    records: dict[str, list] = {k: [] for k in ("prompt", "layer", "rank", "token", "token_id", "probability", "logit")}
    for row in range(flat.shape[0]):
        j, i = divmod(row, n)
        for r in range(top_k):
            tid = int(ids[row, r])
            records["prompt"].append(offset + i)
            records["layer"].append(layers[j])
            records["rank"].append(r)
            records["token"].append(convert([tid]))
            records["token_id"].append(tid)
            records["probability"].append(float(probs[row, r]))
            records["logit"].append(float(values[row, r]))
    return pd.DataFrame(records)


def lens(
    model: Model,
    prompts: Sequence[Prompt | str] | Prompt | str,
    *,
    position: int = -1,
    layers: Sequence[int] | None = None,
    top_k: int = 5,
    batch_size: int = 16,
    progress: bool = True,
) -> LensResult:
    """Logit lens over every layer (or ``layers``) at ``position`` of each prompt.

    Args:
        model: from :func:`taskvec.load`.
        prompts: strings, :class:`~taskvec.Prompt` objects (ICL prompts, image prompts for a VLM).
        position: index in each prompt's own processed tokens (``-1``: the last, i.e. the
            query's delimiter for an ICL prompt; image tokens count).
        layers: layer indices to decode (default: all).
        top_k: how many tokens per layer go into ``df``.
        batch_size: prompts per traced forward.

    Returns:
        :class:`LensResult` with ``df``, ``top1()``, ``phases()`` and figure methods.

    Example:
        >>> import taskvec
        >>> m = taskvec.load()                                                   # doctest: +SKIP
        >>> r = taskvec.lens(m, ["Q:France\\nA:Paris\\n\\nQ:Japan\\nA:"])            # doctest: +SKIP
        >>> r.top1().token.iloc[-1]                                              # doctest: +SKIP
        'Tokyo'
    """
    if isinstance(prompts, (str, Prompt)):
        prompts = [prompts]
    prompts = prompt_list(prompts)
    position = _position(position)
    top_k = _top_k(model, top_k)
    batch_size = count("batch_size", batch_size)
    chosen = model.check_layers(layers)
    hidden = residuals_at(model, prompts, position=position, layers=chosen, batch_size=batch_size, progress=progress)
    if not torch.isfinite(hidden).all():
        raise TaskvecError(non_finite(model, "residuals at the decoded position"))
    df = _topk_table(model, hidden, chosen, top_k, chunk=batch_size)
    return LensResult(model=model, hidden=hidden, layers=chosen, df=df, prompts=prompts, top_k=top_k)


def decode(model: Model, vector: torch.Tensor, layer: int | None = None, *, top_k: int = 5) -> pd.DataFrame:
    """Top-k tokens of any residual-stream vector (e.g. a mean task vector), paper Table 2.

    Args:
        vector: ``[d_model]``, or ``[n_layers, d_model]`` together with ``layer`` to pick a row.
        layer: which layer the vector belongs to (checked against the model).

    Returns:
        DataFrame ``rank, token, token_id, probability, logit``.

    Example:
        >>> decode(m, task_vector.vectors, layer=9)      # doctest: +SKIP
    """
    top_k = _top_k(model, top_k)
    v = torch.as_tensor(vector)
    if v.dim() == 2:
        if layer is None:
            raise TaskvecError("vector has one row per layer: pass layer= to choose one")
        if v.shape[0] != model.n_layers:
            raise TaskvecError(f"vector has {v.shape[0]} layers but {model.name} has {model.n_layers}")
        v = v[model.check_layer(layer)]
    elif layer is not None:
        model.check_layer(layer)
    if v.dim() != 1 or v.shape[0] != model.d_model:
        raise TaskvecError(
            f"vector has shape {tuple(v.shape)} but {model.name} decodes width {model.d_model}: pass a [d_model] vector"
        )
    from ..checks import finite

    finite("vector" if layer is None else f"vector at layer {layer}", v, where="d_model",
           fix="its top tokens would be meaningless; decode a finite vector")
    table = _topk_table(model, v.reshape(1, 1, -1).float(), [layer if layer is not None else -1], top_k)
    return table.drop(columns=["prompt", "layer"])
