"""Head-level access: read and write per-head outputs at chosen positions, for every adapter.

A *head output* is the input of a layer's attention output projection (``o_proj``, ``dense``,
... as named by the architecture row), ``[batch, seq, n_heads * d_head]``, viewed as
``[batch, seq, n_heads, d_head]``. MTV, STV and MimIC all act here (design.md §1).

Two kinds of helpers:

- inside a trace (``with model.trace(batch): ...``): :func:`read_heads`, :func:`write_heads`;
- whole runs: :func:`head_activations` (streaming mean over prompts), and
  :class:`HeadIntervention`, a set of (layer, head) -> vector replacements at the last token that
  MTV and STV both produce, with ``logits`` / ``predict`` / ``generate`` / ``save`` / ``load``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nnsight
import torch

from ..inputs.batching import batches
from ..errors import TaskvecError
from ..models.model import Batch, Model
from ..inputs.prompts import Prompt

POSITIONS = ("last", "query", "last_demo")


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., n_heads * d_head]`` -> ``[..., n_heads, d_head]`` (a view).

    Example:
        >>> split_heads(torch.zeros(2, 5, 1024), 4).shape
        torch.Size([2, 5, 4, 256])
    """
    if x.shape[-1] % n_heads:
        raise TaskvecError(f"last dimension {x.shape[-1]} is not a multiple of n_heads={n_heads}")
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., n_heads, d_head]`` -> ``[..., n_heads * d_head]``.

    Example:
        >>> merge_heads(torch.zeros(2, 5, 4, 256)).shape
        torch.Size([2, 5, 1024])
    """
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def positions(model: Model, batch: Batch, at: str | int = "last") -> torch.Tensor:
    """Absolute token index per prompt of a batch, ``[batch]`` long.

    Args:
        at: ``"last"`` (each prompt's last token: the query's delimiter for a zero-shot or ICL
            query), ``"query"`` (the query's delimiter), ``"last_demo"`` (the last
            demonstration's delimiter) or an int counted on each prompt's own tokens (``-1`` =
            last).

    Example:
        >>> positions(m, m.encode(["Q:France\\nA:", "Q:Japan is nice\\nA:"]))   # doctest: +SKIP
        tensor([8, 8])
    """
    if isinstance(at, int):
        return model.position(batch, at)
    if at not in POSITIONS:
        raise TaskvecError(f"at={at!r}: use one of {POSITIONS} or an integer position")
    if at == "last":
        return model.position(batch, -1)
    need = 1 if at == "query" else 2
    delims = model.delimiters(batch)
    for i, d in enumerate(delims):
        if len(d) < need:
            raise TaskvecError(f"prompt {i} has no demonstration: at='last_demo' needs few-shot prompts")
    return torch.tensor([d[-need] for d in delims], dtype=torch.long)


def read_heads(model: Model, layer: int, rows: torch.Tensor, pos: torch.Tensor | int) -> torch.Tensor:
    """Inside a trace: head outputs of ``layer`` at ``(rows, pos)``, ``[n, n_heads, d_head]``.

    Read layers in forward order (nnsight requirement).

    Example:
        >>> with m.trace(batch):                                          # doctest: +SKIP
        ...     h = read_heads(m, 3, torch.arange(2), -1).save()
        >>> h.shape                                                       # doctest: +SKIP
        torch.Size([2, 4, 256])
    """
    x = model.head_input(layer).input
    return split_heads(x[rows, pos], model.n_heads)


def write_heads(
    model: Model,
    layer: int,
    rows: torch.Tensor,
    pos: torch.Tensor | int,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: str = "replace",
) -> None:
    """Inside a trace: replace (or add to) head outputs of ``layer`` at ``(rows, pos)``.

    Args:
        rows: ``[n]`` batch rows.
        pos: ``[n]`` token positions, or one int for every row (e.g. ``-1``).
        values: ``[n_heads, d_head]`` (same for every row) or ``[n, n_heads, d_head]``.
        mask: which heads to write, ``[n_heads]`` or ``[n, n_heads]`` bool; ``None``: all.
        mode: ``"replace"`` or ``"add"``.

    Example:
        >>> with m.trace(batch):                                               # doctest: +SKIP
        ...     write_heads(m, 3, torch.arange(2), -1, means[3], mask=torch.tensor([1, 0, 0, 1]).bool())
    """
    if mode not in ("replace", "add"):
        raise TaskvecError(f"mode={mode!r}: use 'replace' or 'add'")
    x = model.head_input(layer).input
    cur = split_heads(x[rows, pos], model.n_heads)
    values = values.to(cur.dtype)
    new = values if mode == "replace" else cur + values
    if mask is not None:
        new = torch.where(mask.to(torch.bool)[..., None], new, cur)
    x[rows, pos] = merge_heads(new.expand_as(cur))


class _HeadMean:
    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, block: torch.Tensor) -> None:
        s = block.detach().to(torch.float64).sum(0)
        self.total = s if self.total is None else self.total + s
        self.count += block.shape[0]


@dataclass
class HeadActivations:
    """Head outputs at one token, averaged over prompts (and optionally every prompt's own).

    Attributes:
        mean: ``[n_layers, n_heads, d_head]`` float32.
        rows: ``[n_prompts, n_layers, n_heads, d_head]`` when collected with ``keep=True``.
        n_prompts: how many prompts were averaged.
    """

    mean: torch.Tensor
    rows: torch.Tensor | None
    n_prompts: int


def head_activations(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    at: str | int = "last",
    batch_size: int = 16,
    keep: bool = False,
    progress: bool = True,
) -> HeadActivations:
    """Streaming mean of every layer's head outputs at one token of each prompt.

    Memory stays constant in the number of prompts unless ``keep=True``.

    Args:
        at: see :func:`positions` (default: the last token).
        keep: also return every prompt's ``[n_layers, n_heads, d_head]``.

    Returns:
        :class:`HeadActivations` with ``mean`` ``[n_layers, n_heads, d_head]``.

    Example:
        >>> acts = head_activations(m, taskvec.sample_icl_prompts(pairs, pairs, n_shots=4))  # doctest: +SKIP
        >>> acts.mean.shape                                                                   # doctest: +SKIP
        torch.Size([18, 4, 256])
    """
    prompts = list(prompts)
    if not prompts:
        raise TaskvecError("no prompts given: pass at least one prompt")
    acc, kept = _HeadMean(), []
    for chunk in batches(prompts, batch_size, desc=f"head activations ({at})", progress=progress):
        batch = model.encode(chunk)
        pos = positions(model, batch, at)
        rows = torch.arange(len(chunk))
        with torch.no_grad(), model.trace(batch, logits_to_keep=1) as tracer:
            saved = nnsight.save([])
            for layer in range(model.n_layers):
                saved.append(read_heads(model, layer, rows, pos))
            tracer.stop()
        block = torch.stack([s.float().cpu() for s in saved], dim=1)  # [b, L, H, Dh]
        acc.add(block)
        if keep:
            kept.append(block)
    assert acc.total is not None
    return HeadActivations((acc.total / acc.count).float(), torch.cat(kept) if keep else None, acc.count)


def replaced_logits(model: Model, batch: Batch, values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Next-token logits with per-row head replacements at each prompt's last token.

    The workhorse of MTV's and STV's REINFORCE: row ``i`` of the batch gets its own mask and
    values (e.g. 32 copies of one query with 32 sampled masks).

    Args:
        batch: ``n`` prompts.
        values: ``[n_layers, n_heads, d_head]`` (shared) or ``[n, n_layers, n_heads, d_head]``.
        masks: ``[n, n_layers, n_heads]`` bool.

    Returns:
        ``[n, vocab]`` float32 logits.

    Example:
        >>> b = m.encode([q] * 32)                                          # doctest: +SKIP
        >>> replaced_logits(m, b, means, policy.sample(32)).shape           # doctest: +SKIP
        torch.Size([32, 262144])
    """
    n = len(batch)
    if masks.shape != (n, model.n_layers, model.n_heads):
        raise TaskvecError(f"masks must be [{n}, {model.n_layers}, {model.n_heads}], got {tuple(masks.shape)}")
    values = values.to(model.device)
    if values.dim() == 3:
        values = values.unsqueeze(0)
    rows = torch.arange(n)
    active = masks.any(0)
    with torch.no_grad(), model.trace(batch, logits_to_keep=1):
        for layer in range(model.n_layers):
            if bool(active[layer].any()):
                write_heads(model, layer, rows, -1, values[:, layer], masks[:, layer])
        out = model.nn.output.logits[:, -1].save()
    return out.float().cpu()


@dataclass
class HeadIntervention:
    """Replace chosen heads' outputs by fixed vectors at the last token (MTV and STV produce one).

    At inference the query runs zero-shot; at every layer with a chosen head, the head outputs at
    the prompt's last token (and, in :meth:`generate`, at every generated token) are replaced.

    Attributes:
        values: ``[n_layers, n_heads, d_head]`` float32 (rows of unchosen heads are ignored).
        mask: ``[n_layers, n_heads]`` bool, the chosen heads.
        model_name: the model the values come from.
        method: ``"mtv"``, ``"stv"`` or anything descriptive.
        meta: JSON-serialisable facts (task, trials, steps, ...).

    Example:
        >>> iv = HeadIntervention(means, mask, "gemma-3-270m", "mtv")     # doctest: +SKIP
        >>> iv.predict(m, [taskvec.icl_prompt([], "Kenya")])              # doctest: +SKIP
        ['Nairobi']
    """

    values: torch.Tensor
    mask: torch.Tensor
    model_name: str
    method: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.dim() != 3 or self.mask.shape != self.values.shape[:2]:
            raise TaskvecError(
                f"values must be [n_layers, n_heads, d_head] and mask [n_layers, n_heads]; got "
                f"{tuple(self.values.shape)} and {tuple(self.mask.shape)}"
            )
        self.mask = self.mask.to(torch.bool)

    @property
    def n_selected(self) -> int:
        return int(self.mask.sum())

    def heads(self) -> list[tuple[int, int]]:
        """The chosen ``(layer, head)`` pairs, in layer order."""
        return [(int(a), int(b)) for a, b in self.mask.nonzero().tolist()]

    def __repr__(self) -> str:
        L, H, D = self.values.shape
        return f"HeadIntervention({self.method}, model={self.model_name!r}, {self.n_selected}/{L * H} heads, d_head={D})"

    def check_compatible(self, model: Model) -> None:
        """Raise unless ``model`` has this intervention's layer, head and head-size counts."""
        shape = (model.n_layers, model.n_heads, model.d_head)
        if tuple(self.values.shape) != shape:
            raise TaskvecError(
                f"this {self.method} intervention is for heads of shape {tuple(self.values.shape)} "
                f"(layers, heads, d_head) from {self.model_name}, but {model.name} has {shape}: fit it on this model"
            )

    def apply(self, model: Model, rows: torch.Tensor, pos: torch.Tensor | int) -> None:
        """Inside a trace: write the chosen heads at ``(rows, pos)`` in every layer that has one."""
        values = self.values.to(model.device)
        for layer in range(model.n_layers):
            if bool(self.mask[layer].any()):
                write_heads(model, layer, rows, pos, values[layer], self.mask[layer])

    def logits(self, model: Model, batch: Batch) -> torch.Tensor:
        """Next-token logits ``[batch, vocab]`` with the intervention at each prompt's last token."""
        self.check_compatible(model)
        rows = torch.arange(len(batch))
        with torch.no_grad(), model.trace(batch, logits_to_keep=1):
            self.apply(model, rows, -1)
            out = model.nn.output.logits[:, -1].save()
        return out.float().cpu()

    def predict(self, model: Model, prompts: Sequence[Prompt], *, batch_size: int = 32, progress: bool = True) -> list[str]:
        """Greedy first token of each (zero-shot) prompt with the intervention."""
        preds: list[str] = []
        for chunk in batches(list(prompts), batch_size, desc=self.method, progress=progress):
            ids = self.logits(model, model.encode(chunk)).argmax(-1)
            preds.extend(model.tokenizer.decode([int(i)]) for i in ids)
        return preds

    def generate(self, model: Model, prompts: Sequence[Prompt], *, max_new_tokens: int = 8) -> list[str]:
        """Greedy continuation; the heads are replaced at the prompt's last token and at every new token.

        Example:
            >>> iv.generate(m, [taskvec.icl_prompt([], "Kenya")], max_new_tokens=3)   # doctest: +SKIP
            ['Nairobi\\n\\n']
        """
        self.check_compatible(model)
        batch = model.encode(list(prompts))
        rows = torch.arange(len(batch))
        with torch.no_grad(), model.generate(batch, max_new_tokens=max_new_tokens) as tracer:
            for _ in tracer.iter[:max_new_tokens]:
                self.apply(model, rows, -1)
            out = tracer.result.save()
        return model.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (values, mask) and ``<path>.json``; returns the safetensors path."""
        from safetensors.torch import save_file

        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_file({"values": self.values.float().contiguous(), "mask": self.mask.to(torch.uint8).contiguous()},
                  str(stem.with_suffix(".safetensors")))
        info = dict(format="taskvec.HeadIntervention/1", method=self.method, model_name=self.model_name,
                    shape=list(self.values.shape), meta=self.meta)
        stem.with_suffix(".json").write_text(json.dumps(info, indent=2))
        return stem.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> "HeadIntervention":
        """Read what :meth:`save` wrote; with ``model``, refuse one of another shape."""
        from safetensors.torch import load_file

        st, js = _files(path, "head intervention")
        info = json.loads(js.read_text())
        tensors = load_file(str(st))
        out = cls(tensors["values"], tensors["mask"].bool(), info["model_name"], info.get("method", "custom"),
                  info.get("meta", {}))
        if model is not None:
            out.check_compatible(model)
        return out


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def _files(path: str | Path, what: str) -> tuple[Path, Path]:
    stem = _stem(path)
    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for f in (st, js):
        if not f.exists():
            raise TaskvecError(f"cannot load the {what}: {f} is missing (save() writes both .safetensors and .json)")
    return st, js


@dataclass
class HeadFit:
    """What fitting MTV or STV returns: the intervention plus how it was found.

    Attributes:
        intervention: the :class:`HeadIntervention` to use at inference.
        history: REINFORCE history (``step, task_loss, entropy, concentration, ...``).
        timings: seconds per stage (e.g. ``means``, ``location_search``, ``selection``).
        details: method-specific tables/tensors (candidates, deltas, bank, policy probabilities).

    Example:
        >>> fit = taskvec.fit_mtv(m, pairs)                  # doctest: +SKIP
        >>> fit.intervention.predict(m, queries)[:2]          # doctest: +SKIP
        ['Paris', 'Tokyo']
    """

    intervention: HeadIntervention
    history: Any
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        secs = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        return f"HeadFit({self.intervention!r}, steps={len(self.history)}, {secs})"

    def _repr_html_(self) -> str:
        """In Jupyter: the chosen heads and the time each stage took."""
        heads = ", ".join(f"L{a}H{b}" for a, b in self.intervention.heads()[:24])
        more = " ..." if self.intervention.n_selected > 24 else ""
        secs = " &middot; ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return (f"<b>{self.intervention.method}</b> {self.intervention.model_name} &middot; "
                f"{self.intervention.n_selected} heads: {heads}{more}<br>{len(self.history)} search steps &middot; {secs}")
