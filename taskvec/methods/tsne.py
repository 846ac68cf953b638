"""t-SNE of task vectors across specifications (colour = task, marker = specification)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..checks import finite, integer
from ..errors import TaskvecError
from .vectors import TaskVector


@dataclass
class TSNEResult:
    """2-D embedding of per-prompt task vectors at one layer.

    Attributes:
        df: columns ``task, spec, x, y`` (one row per prompt vector).
        layer: the layer embedded.
    """

    df: pd.DataFrame
    layer: int

    def __repr__(self) -> str:
        return (f"TSNEResult(layer={self.layer}, points={len(self.df)}, tasks={self.df.task.nunique()}, "
                f"specs={sorted(self.df.spec.unique())})")

    def _repr_html_(self) -> str:
        """In Jupyter: the scatter itself."""
        return self.figure().to_html(full_html=False, include_plotlyjs="cdn")

    def neighbours(self) -> pd.DataFrame:
        """How the tasks cluster in the map: row ``a``, column ``b`` is the share of ``a``'s points
        whose nearest point of specification ``b`` (itself excluded) is from the same task.

        The diagonal is the clustering within a specification; the rest is across specifications
        (the paper's claim: tasks cluster across them). Chance is about one over the number of
        tasks. NaN where ``b`` has no other point.

        Returns:
            a ``[specs, specs]`` DataFrame of shares in [0, 1].

        Example:
            >>> df = pd.DataFrame({"task": ["a", "a", "b", "b"], "spec": ["text-icl", "image-icl"] * 2,
            ...                    "x": [0.0, 0.1, 5.0, 5.1], "y": [0.0, 0.0, 0.0, 0.0]})
            >>> float(TSNEResult(df, layer=9).neighbours().loc["image-icl", "text-icl"])
            1.0
        """
        xy = self.df[["x", "y"]].to_numpy(dtype=float)
        task, spec = self.df["task"].to_numpy(), self.df["spec"].to_numpy()
        dist = ((xy[:, None] - xy[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        specs = sorted(set(spec))
        share: dict[str, dict[str, float]] = {}
        for a in specs:
            rows = np.flatnonzero(spec == a)
            share[a] = {}
            for b in specs:
                cols = np.flatnonzero(spec == b)
                d = dist[np.ix_(rows, cols)]
                if not np.isfinite(d).any(axis=1).all():
                    share[a][b] = float("nan")
                    continue
                nearest = cols[d.argmin(1)]
                share[a][b] = float((task[nearest] == task[rows]).mean())
        out = pd.DataFrame(share).T.loc[specs, specs]
        out.index.name, out.columns.name = "points of", "nearest of"
        return out

    def figure(self) -> Any:
        """Scatter with colour = task and marker symbol = specification."""
        import plotly.express as px

        fig = px.scatter(self.df, x="x", y="y", color="task", symbol="spec",
                         title=f"t-SNE of task vectors, layer {self.layer}", template="plotly_white")
        fig.update_traces(marker=dict(size=7, opacity=0.8))
        return fig


def tsne(vectors: Sequence[TaskVector], layer: int, *, seed: int = 0, perplexity: float = 30.0) -> TSNEResult:
    """Embed every per-prompt vector (``TaskVector.rows``, from ``extract_icl(..., keep=True)``) of
    several tasks and specifications at one layer in 2-D. An instruction vector (one prompt)
    contributes its single row.

    Example:
        >>> r = tsne([v_text, v_image, v_inst], layer=9)     # doctest: +SKIP
        >>> r.figure()                                       # doctest: +SKIP
    """
    from sklearn.manifold import TSNE

    vectors = list(vectors)
    if not vectors:
        raise TaskvecError("tsne() got no vectors: pass task vectors (extract them with keep=True)")
    widths = {v.d_model for v in vectors}
    if len(widths) > 1:
        seen = ", ".join(f"{v.task!r} ({v.spec}, {v.model_name}): {v.d_model}" for v in vectors)
        raise TaskvecError(f"tsne() needs vectors of one width (d_model), got {seen}: embed the vectors of each "
                           "model separately")
    n_layers = min(v.n_layers for v in vectors)
    layer = integer("layer", layer, low=0, high=n_layers - 1, fix=f"the vectors have layers 0..{n_layers - 1}")
    blocks, labels = [], []
    for v in vectors:
        rows = v.rows if v.rows is not None else v.vectors[None]
        block = rows[:, layer].float()
        finite(f"the per-prompt rows of task vector {v.task!r} ({v.spec})", block, where="prompt, d_model",
               fix="extract the vector again")
        blocks.append(block.numpy())
        labels += [(v.task, v.spec)] * rows.shape[0]
    x = np.concatenate(blocks)
    if x.shape[0] < 3:
        raise TaskvecError("t-SNE needs at least 3 vectors: extract with keep=True to get one per prompt")
    emb = TSNE(n_components=2, perplexity=min(perplexity, (x.shape[0] - 1) / 3), random_state=seed,
               init="pca").fit_transform(x)
    df = pd.DataFrame({"task": [t for t, _ in labels], "spec": [s for _, s in labels], "x": emb[:, 0], "y": emb[:, 1]})
    return TSNEResult(df=df, layer=layer)
