"""Whole runs over many prompts: the residual stream or the head outputs at one token, per layer,
as a streaming mean (and optionally every prompt's own rows).

The three public readers are one function, :func:`collect`, with the site and the position:

- :func:`read_residuals` (task vectors): ``site="resid"``, ``at="last_demo"`` by default;
- :func:`head_activations` (MTV, STV): ``site="heads"``, ``at="last"`` by default;
- :func:`taskvec.residuals_at` (the lens): ``site="resid"``, an integer position, chosen layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import nnsight
import torch

from ..checks import one_of
from ..errors import TaskvecError
from ..inputs.prompts import Prompt, prompt_list
from ..models.each_batch import each_batch
from ..models.model import Batch, Model
from .heads import read_heads
from .positions import check_at, resolve
from .residual import read_resid

SITES = ("resid", "heads")


class StreamingMean:
    """Running mean of ``[batch, ...]`` blocks in float64 on the CPU: memory does not grow with count.

    Example:
        >>> s = StreamingMean(); s.add(torch.ones(2, 3, 4)); s.add(3 * torch.ones(1, 3, 4)); float(s.mean()[0, 0])
        1.6666666666666667
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        """Add a ``[batch, ...]`` block of rows."""
        block = rows.detach().to(torch.float64).sum(dim=0).cpu()
        self.total = block if self.total is None else self.total + block
        self.count += rows.shape[0]

    def mean(self) -> torch.Tensor:
        """The mean so far, float64."""
        if self.total is None:
            raise TaskvecError("no rows were added: pass at least one prompt")
        return self.total / self.count


@dataclass
class Activations:
    """A site's activations at one token, averaged over prompts (and optionally every prompt's own).

    Attributes:
        mean: ``[n_layers, d_model]`` (residual) or ``[n_layers, n_heads, d_head]`` (heads), float32.
        rows: ``[n_prompts, *mean.shape]`` when collected with ``keep=True``, else ``None``.
        n_prompts: how many prompts were averaged.
    """

    mean: torch.Tensor
    rows: torch.Tensor | None
    n_prompts: int


def collect(
    model: Model,
    prompts: Sequence[Prompt | str],
    *,
    site: str = "resid",
    at: str | int = "last",
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    keep: bool = False,
    progress: bool = True,
    desc: str | None = None,
) -> Activations:
    """Streaming mean of a site at one token of each prompt, at every (or each chosen) layer.

    Args:
        site: ``"resid"`` (after each decoder layer) or ``"heads"`` (each head's output).
        at: see :mod:`taskvec.sites.positions`.
        layers: decoder layers to read, in any order (default: all); rows follow this order.
        keep: also return every prompt's rows (memory grows with the prompts).

    Example:
        >>> collect(m, prompts, site="heads", at="last").mean.shape    # doctest: +SKIP
        torch.Size([18, 4, 256])
    """
    one_of("site", site, SITES)
    check_at(at)
    prompts = prompt_list(prompts)
    if layers is None:
        chosen = list(range(model.n_layers))
    else:  # the one layer check, keeping the caller's order (rows follow it)
        model.check_layers(layers)
        chosen = [model.check_layer(x, "layers") for x in ([layers] if getattr(layers, "ndim", None) == 0
                                                                       or not hasattr(layers, "__iter__") else layers)]
    read = read_resid if site == "resid" else read_heads
    order = sorted(set(chosen))

    def step(batch: Batch) -> torch.Tensor:
        pos = resolve(model, batch, at)
        rows = torch.arange(len(batch))
        with torch.no_grad(), model.trace(batch, logits_to_keep=1) as tracer:
            saved = nnsight.save([])
            for layer in order:
                saved.append(read(model, layer, rows, pos))
            tracer.stop()
        by_layer = dict(zip(order, saved))
        return torch.stack([by_layer[layer].float().cpu() for layer in chosen], dim=1)  # [b, L, ...]

    acc, kept = StreamingMean(), []
    for _, block in each_batch(model, prompts, batch_size, step, desc=desc or f"{site} ({at})", progress=progress):
        acc.add(block)
        if keep:
            kept.append(block)
    return Activations(acc.mean().float(), torch.cat(kept) if keep else None, acc.count)


def read_residuals(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    at: str = "last_demo",
    batch_size: int = 16,
    progress: bool = True,
    keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Streaming mean (and optionally every row) of the residual at one token of each prompt.

    Args:
        at: ``"last_demo"`` (the last demonstration's delimiter), ``"query"`` (the query's
            delimiter) or ``"last"`` (the last token, for instructions).
        keep: also return every prompt's ``[n_layers, d_model]`` (for t-SNE); off by default so
            memory stays constant.

    Returns:
        ``(mean [n_layers, d_model] float32, rows [n_prompts, n_layers, d_model] or None)``.
    """
    if at not in ("last_demo", "query", "last"):
        raise TaskvecError(f"at={at!r}: use 'last_demo', 'query' or 'last'")
    acts = collect(model, prompts, site="resid", at=at, batch_size=batch_size, keep=keep, progress=progress,
                   desc=f"extract ({at})")
    return acts.mean, acts.rows


def head_activations(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    at: str | int = "last",
    batch_size: int = 16,
    keep: bool = False,
    progress: bool = True,
) -> Activations:
    """Streaming mean of every layer's head outputs at one token of each prompt.

    Memory stays constant in the number of prompts unless ``keep=True``.

    Returns:
        :class:`Activations` with ``mean`` ``[n_layers, n_heads, d_head]`` (and ``rows``
        ``[n_prompts, n_layers, n_heads, d_head]`` with ``keep=True``).

    Example:
        >>> acts = head_activations(m, taskvec.sample_icl_prompts(pairs, pairs, n_shots=4))  # doctest: +SKIP
        >>> acts.mean.shape                                                                   # doctest: +SKIP
        torch.Size([18, 4, 256])
    """
    return collect(model, prompts, site="heads", at=at, batch_size=batch_size, keep=keep, progress=progress,
                   desc=f"head activations ({at})")


#: the name MTV's means had before the readers were one
HeadActivations = Activations
