"""MimIC (Jiang et al. 2025): learned per-head shifts with a query-dependent magnitude, trained
to mimic in-context learning (design.md §5).

For every layer and head, after attention and before the output projection::

    out_h = Attn_h(q, K, V) + μ_h(q) · v_h,   μ = Z1 / (Z1 + Z2) = sigmoid(log Z1 − log Z2)
    log Z2 = logsumexp_j(q·k_j · scaling)     (the real keys, mask and soft-capping)
    log Z1 = w_h · q + b_h                    (stands in for the absent demonstrations' keys)

``v``, ``w`` (``[n_layers, n_heads, d_head]``) and ``b`` (``[n_layers, n_heads]``) are the only
trainable parameters (37k for Gemma-3-270m). It is an nnsight intervention: the query and logits
come from :func:`taskvec.sites.attention.attention_logits` (the model's own norms, rotary embedding,
mask), the shift is written into the output projection's input; gradients flow through the trace
into the parameters (the model's weights are frozen while training).

Training (:func:`fit_mimic`): the teacher is the frozen model on ``k`` demonstrations + query +
answer; the student is the shifted model on query + answer; loss =
``0.5 · CE(answer tokens) + 1.0 · MSE(per-layer hidden states on the query+answer tokens)``;
AdamW with a cosine schedule.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Sequence

import nnsight
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..sites.attention import attention_logits, check_supported
from ..inputs.batching import batches
from ..errors import TaskvecError
from ..sites.heads import _files, _stem, merge_heads
from ..models.model import Batch, Model
from ..inputs.prompts import GENERIC, Prompt, Template, icl_prompt
from ..methods.answers import answer_ids


class MimIC(torch.nn.Module):
    """Per-head learnable shifts with query-dependent magnitude, for one model shape.

    Args:
        n_layers: the model's decoder layers (use :meth:`for_model` to read the shape off a model).
        n_heads: attention heads per layer.
        d_head: width of one head.
        layers: decoder layers that get a shift (default: all).
        model_name: provenance, checked on load.

    Attributes:
        shift: ``v``, ``[len(layers), n_heads, d_head]``.
        gate_w: ``w``, ``[len(layers), n_heads, d_head]``.
        gate_b: ``b``, ``[len(layers), n_heads]``.

    Example:
        >>> mim = MimIC(18, 4, 256)
        >>> mim.n_parameters
        36936
    """

    def __init__(self, n_layers: int, n_heads: int, d_head: int, *, layers: Sequence[int] | None = None,
                 model_name: str = "", meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.n_layers, self.n_heads, self.d_head = n_layers, n_heads, d_head
        self.layers = sorted(set(range(n_layers) if layers is None else (int(x) % n_layers for x in layers)))
        if not self.layers:
            raise TaskvecError("MimIC needs at least one layer: pass layers=None for all")
        n = len(self.layers)
        self.shift = torch.nn.Parameter(torch.zeros(n, n_heads, d_head))
        self.gate_w = torch.nn.Parameter(torch.zeros(n, n_heads, d_head))
        self.gate_b = torch.nn.Parameter(torch.zeros(n, n_heads))
        self.model_name = model_name
        self.meta = dict(meta or {})

    @classmethod
    def for_model(cls, model: Model, layers: Sequence[int] | None = None) -> "MimIC":
        """Zero-initialised MimIC for ``model`` (it leaves the model's outputs unchanged).

        Example:
            >>> MimIC.for_model(m).n_parameters     # doctest: +SKIP
            36936
        """
        check_supported(model)
        return cls(model.n_layers, model.n_heads, model.d_head, layers=layers, model_name=model.name)

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters())

    def __repr__(self) -> str:
        return (f"MimIC(model={self.model_name!r}, layers={len(self.layers)}/{self.n_layers}, "
                f"heads={self.n_heads}x{self.d_head}, parameters={self.n_parameters})")

    def _repr_html_(self) -> str:
        return (f"<b>MimIC</b> {self.model_name} &middot; {len(self.layers)}/{self.n_layers} layers &middot; "
                f"{self.n_heads} heads &times; {self.d_head} &middot; {self.n_parameters:,} parameters")

    def check_compatible(self, model: Model) -> None:
        """Raise unless ``model`` has this MimIC's layer, head and head-size counts."""
        mine, theirs = (self.n_layers, self.n_heads, self.d_head), (model.n_layers, model.n_heads, model.d_head)
        if mine != theirs:
            raise TaskvecError(
                f"this MimIC was built for (layers, heads, d_head) = {mine} ({self.model_name}), but {model.name} "
                f"has {theirs}: train one on this model"
            )

    # --- the intervention -----------------------------------------------------------------------
    def magnitude(self, index: int, query: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``μ`` for the ``index``-th shifted layer, ``[batch, n_heads, q_len]``.

        Args:
            query: ``[batch, n_heads, q_len, d_head]`` (after norm and rotary embedding).
            scores: ``[batch, n_heads, q_len, kv_len]`` masked attention logits.
        """
        log_z2 = scores.float().logsumexp(-1)
        log_z1 = torch.einsum("bhqd,hd->bhq", query.float(), self.gate_w[index]) + self.gate_b[index][None, :, None]
        mu = torch.sigmoid(log_z1 - log_z2)
        return torch.where(torch.isfinite(log_z2), mu, torch.zeros_like(mu))  # fully masked rows (padding)

    def apply(self, model: Model, *, hidden: list | None = None) -> None:
        """Inside a trace: shift every chosen layer's head outputs at every position.

        Args:
            hidden: if given (an ``nnsight.save([])`` list), each decoder layer's output hidden
                states ``[batch, seq, d_model]`` are appended, in layer order.
        """
        index = {layer: i for i, layer in enumerate(self.layers)}
        for layer in range(model.n_layers):
            if layer in index:
                i = index[layer]
                a = attention_logits(model, layer)
                mu = self.magnitude(i, a.query, a.scores)                       # [b, H, q]
                shift = mu.transpose(1, 2)[..., None] * self.shift[i]          # [b, q, H, Dh]
                a.envoy.input = a.heads + merge_heads(shift).to(a.heads.dtype)
            if hidden is not None:
                hidden.append(model.residual(model.layers()[layer].output))
            elif layer >= self.layers[-1]:
                break

    def logits(self, model: Model, batch: Batch) -> torch.Tensor:
        """Next-token logits ``[batch, vocab]`` of the shifted model."""
        self.check_compatible(model)
        with torch.no_grad(), model.trace(batch, logits_to_keep=1):
            self.apply(model)
            out = model.nn.output.logits[:, -1].save()
        return out.float().cpu()

    def predict(self, model: Model, prompts: Sequence[Prompt], *, batch_size: int = 32, progress: bool = True) -> list[str]:
        """Greedy first token of each (zero-shot) prompt with the shifts.

        Example:
            >>> mim.predict(m, [taskvec.icl_prompt([], "Kenya")])     # doctest: +SKIP
            ['Nairobi']
        """
        preds: list[str] = []
        for chunk in batches(list(prompts), batch_size, desc="mimic", progress=progress):
            ids = self.logits(model, model.encode(chunk)).argmax(-1)
            preds.extend(model.tokenizer.decode([int(i)]) for i in ids)
        return preds

    def generate(self, model: Model, prompts: Sequence[Prompt], *, max_new_tokens: int = 8) -> list[str]:
        """Greedy continuation with the shifts at every prompt and generated token (keys from the cache)."""
        self.check_compatible(model)
        batch = model.encode(list(prompts))
        with torch.no_grad(), model.generate(batch, max_new_tokens=max_new_tokens) as tracer:
            for _ in tracer.iter[:max_new_tokens]:
                self.apply(model)
            out = tracer.result.save()
        return model.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (v, w, b) and ``<path>.json``; returns the safetensors path."""
        from safetensors.torch import save_file

        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous() for k, v in self.state_dict().items()},
                  str(stem.with_suffix(".safetensors")))
        info = dict(format="taskvec.MimIC/1", model_name=self.model_name, n_layers=self.n_layers,
                    n_heads=self.n_heads, d_head=self.d_head, layers=self.layers, n_parameters=self.n_parameters,
                    meta=self.meta)
        stem.with_suffix(".json").write_text(json.dumps(info, indent=2))
        return stem.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> "MimIC":
        """Read what :meth:`save` wrote; with ``model``, refuse one of another shape.

        Example:
            >>> mim2 = MimIC.load("runs/capital-mimic", m)    # doctest: +SKIP
        """
        from safetensors.torch import load_file

        st, js = _files(path, "MimIC parameters")
        info = json.loads(js.read_text())
        out = cls(info["n_layers"], info["n_heads"], info["d_head"], layers=info["layers"],
                  model_name=info.get("model_name", ""), meta=info.get("meta", {}))
        out.load_state_dict(load_file(str(st)))
        if model is not None:
            out.check_compatible(model)
        return out


# --- training ---------------------------------------------------------------------------------------
def _with_answer(p: Prompt, y: str) -> Prompt:
    return Prompt(p.text + y, images=p.images, n_demos=p.n_demos, has_query=p.has_query, label=y, template=p.template)


class _Example:
    """One training pair: student prompt (query + answer), answer ids, teacher hidden states."""

    def __init__(self, student: Prompt, teacher: Prompt, answer: list[int]) -> None:
        self.student, self.teacher, self.answer = student, teacher, answer
        self.target: torch.Tensor | None = None  # [n_layers, n_tail, d_model]


def _real(batch: Batch, i: int) -> torch.Tensor:
    mask = batch.inputs.get("attention_mask")
    ids = batch.input_ids[i]
    return ids if mask is None else ids[mask[i].bool()]


def _teacher_targets(model: Model, examples: list[_Example], batch_size: int, progress: bool) -> None:
    """Fill each example's teacher hidden states on its query+answer tail (no grad)."""
    for chunk in batches(examples, batch_size, desc="MimIC teacher", progress=progress):
        sb, tb = model.encode([e.student for e in chunk]), model.encode([e.teacher for e in chunk])
        with torch.no_grad(), model.trace(tb, logits_to_keep=1) as tracer:
            hs = nnsight.save([])
            for layer in range(model.n_layers):
                hs.append(model.residual(model.layers()[layer].output))
            tracer.stop()
        stacked = torch.stack([h.float() for h in hs])  # [L, b, S, d]
        for i, e in enumerate(chunk):
            s_ids, t_ids = _real(sb, i), _real(tb, i)
            n = len(s_ids) - 1  # the student's BOS/prefix token has no counterpart
            if n < 1 or len(t_ids) < n or not torch.equal(s_ids[-n:], t_ids[-n:]):
                raise TaskvecError(
                    "the query+answer tokens differ between the prompt with demonstrations and the one without "
                    f"({e.student.text[:40]!r}...): the template must tokenize the query the same after a demonstration"
                )
            e.target = stacked[:, i, -n:].clone()


def _student_loss(
    mimic: MimIC, model: Model, chunk: list[_Example], ce_weight: float, align_weight: float
) -> tuple[torch.Tensor, float, float]:
    batch = model.encode([e.student for e in chunk])
    B, S = batch.input_ids.shape
    A = max(len(e.answer) for e in chunk)
    with model.trace(batch, logits_to_keep=A + 1):
        hs = nnsight.save([])
        mimic.apply(model, hidden=hs)
        logits = model.nn.output.logits.save()
    labels = torch.full((B, A + 1), -100, dtype=torch.long)
    target = torch.zeros(model.n_layers, B, S, model.d_model)
    tail = torch.zeros(B, S, dtype=torch.bool)
    for i, e in enumerate(chunk):
        a = len(e.answer)
        labels[i, A - a: A] = torch.tensor(e.answer)
        assert e.target is not None
        n = e.target.shape[1]
        target[:, i, S - n:] = e.target
        tail[i, S - n:] = True
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    student = torch.stack([h.float() for h in hs])  # [L, B, S, d]
    sq = ((student - target) ** 2).sum(-1)  # [L, B, S]
    align = (sq * tail).sum() / (tail.sum() * model.n_layers * model.d_model)
    loss = ce_weight * ce + align_weight * align
    return loss, float(ce.detach()), float(align.detach())


def init_gates(mimic: MimIC, model: Model, prompts: Sequence[Prompt], *, batch_size: int = 16) -> None:
    """Set each head's ``b`` to its mean ``log Z2`` over the prompts' tokens, so ``μ`` starts near
    0.5 and the shift can move the model from the first step (``w`` stays 0).

    Example:
        >>> init_gates(mim, m, [taskvec.icl_prompt([], "France")])    # doctest: +SKIP
    """
    index = {layer: i for i, layer in enumerate(mimic.layers)}
    total = torch.zeros(len(mimic.layers), mimic.n_heads, dtype=torch.float64)
    count = 0
    for chunk in batches(list(prompts), batch_size, progress=False):
        batch = model.encode(chunk)
        valid = batch.inputs.get("attention_mask", torch.ones_like(batch.input_ids)).bool()
        with torch.no_grad(), model.trace(batch, logits_to_keep=1) as tracer:
            lse = nnsight.save([])
            for layer in mimic.layers:
                lse.append(attention_logits(model, layer).scores.float().logsumexp(-1))
            tracer.stop()
        for layer, v in zip(mimic.layers, lse):
            v = v.masked_fill(~valid[:, None, :], 0.0)  # [b, H, q]
            total[index[layer]] += v.sum(dim=(0, 2)).double()
        count += int(valid.sum())
    with torch.no_grad():
        mimic.gate_b.copy_((total / max(count, 1)).float())


def fit_mimic(
    model: Model,
    pairs: Sequence[tuple[Any, str]],
    *,
    n_shots: int = 5,
    steps: int = 150,
    batch_size: int = 8,
    lr: float = 5e-3,
    weight_decay: float = 0.0,
    ce_weight: float = 0.5,
    align_weight: float = 1.0,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    task: str = "custom",
    template: Template = GENERIC,
    progress: bool = True,
) -> tuple[MimIC, pd.DataFrame]:
    """Train MimIC on ``(x, y)`` pairs against the frozen model with ``n_shots`` demonstrations.

    Each pair is one training example; its teacher prompt takes ``n_shots`` demonstrations from
    the other pairs (drawn with ``seed``). Teacher hidden states are computed once. The model's
    weights are frozen during training and restored afterwards.

    Returns:
        ``(mimic, history)``; history has ``step, loss, ce, align, lr``.

    Example:
        >>> mim, hist = fit_mimic(m, task.pairs("val"), task=task.name)     # doctest: +SKIP
        >>> mim.predict(m, [taskvec.icl_prompt([], "Kenya")])               # doctest: +SKIP
        ['Nairobi']
    """
    pairs = list(pairs)
    if len(pairs) <= n_shots:
        raise TaskvecError(f"{len(pairs)} pairs cannot give {n_shots}-shot teacher prompts: pass more pairs or lower n_shots")
    if steps < 1 or batch_size < 1:
        raise TaskvecError("steps and batch_size must be positive")
    rng = random.Random(seed)
    examples = []
    for j, (x, y) in enumerate(pairs):
        others = [p for k, p in enumerate(pairs) if k != j]
        demos = rng.sample(others, n_shots)
        examples.append(_Example(_with_answer(icl_prompt([], x, template=template), y),
                                 _with_answer(icl_prompt(demos, x, template=template), y),
                                 answer_ids(model, y, template)))
    mimic = MimIC.for_model(model, layers)
    mimic.meta = dict(task=task, n_shots=n_shots, steps=steps, batch_size=batch_size, lr=lr, ce_weight=ce_weight,
                      align_weight=align_weight, seed=seed, n_pairs=len(pairs), template=template.name)
    start = time.perf_counter()
    _teacher_targets(model, examples, batch_size=16, progress=progress)
    init_gates(mimic, model, [icl_prompt([], x, template=template) for x, _ in pairs])
    opt = torch.optim.AdamW(mimic.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    frozen = [(p, p.requires_grad) for p in model.hf.parameters()]
    rows = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        order: list[int] = []
        for step in tqdm(range(steps), desc="MimIC", disable=not progress, leave=False):
            if len(order) < batch_size:
                block = list(range(len(examples)))
                rng.shuffle(block)
                order.extend(block)
            chunk = [examples[order.pop()] for _ in range(min(batch_size, len(examples)))]
            loss, ce, align = _student_loss(mimic, model, chunk, ce_weight, align_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rows.append(dict(step=step, loss=float(loss.detach()), ce=ce, align=align, lr=sched.get_last_lr()[0]))
            sched.step()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    mimic.meta["train_seconds"] = time.perf_counter() - start
    return mimic, pd.DataFrame(rows)
