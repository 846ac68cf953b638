"""Training MimIC (Jiang et al. 2025) against the frozen model with demonstrations (docs/design.md §5).

The teacher is the frozen model on ``k`` demonstrations + query + answer; the student is the
shifted model (:class:`~taskvec.MimIC`) on query + answer; loss =
``0.5 · CE(answer tokens) + 1.0 · MSE(per-layer states on the query+answer tokens)``;
AdamW with a cosine schedule.

Which states are aligned is a switch (``align=``): ``"mlp"``, each layer's feed-forward output, as
the reference code aligns (its hooks on ``…layers.N.mlp``), the default; ``"resid"``, each layer's
output (the residual stream), taskvec's earlier choice. ``align_norm="layer"`` divides each layer's
squared error by the teacher's mean squared state at that layer, so no layer's scale (Gemma's
massive residual dimensions) swamps the CE term; ``"none"`` is the reference's plain MSE. The
history logs the two terms apart (``ce``, ``align``) and their weighted shares.
"""

from __future__ import annotations

import random
import time
from typing import Any, Sequence

import nnsight
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..checks import count, integer, one_of
from ..errors import TaskvecError
from ..inputs.batching import batches
from ..inputs.prompts import GENERIC, Prompt, Template, icl_prompt
from ..interventions.mimic import MimIC
from ..models.model import Batch, Model
from ..sites.attention import attention_logits
from ..sites.residual import mlp_output, resid
from .answers import answer_ids
from .fit import Fit


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


ALIGN_SITES = ("mlp", "resid")
ALIGN_NORMS = ("none", "layer")
CE_TOKENS = ("answer", "all")
INITS = ("gate_half", "reference")


def init_reference(mimic: MimIC, seed: int = 0) -> None:
    """The reference's start: ``v ~ 0.001·N(0, 1)``, ``w ~ 0.02·N(0, 1)``, ``b = 0``, so ``μ`` starts
    near ``exp(−log Z2)`` ≈ 0 and training has to open the gate."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mimic.shift.copy_(1e-3 * torch.randn(mimic.shift.shape, generator=gen))
        mimic.gate_w.copy_(0.02 * torch.randn(mimic.gate_w.shape, generator=gen))
        mimic.gate_b.zero_()


def _teacher_targets(model: Model, examples: list[_Example], batch_size: int, progress: bool,
                     site: str = "mlp") -> None:
    """Fill each example's teacher states (``site``: MLP outputs or residual) on its query+answer
    tail (no grad)."""
    for chunk in batches(examples, batch_size, desc="MimIC teacher", progress=progress):
        sb, tb = model.encode([e.student for e in chunk]), model.encode([e.teacher for e in chunk])
        with torch.no_grad(), model.trace(tb, logits_to_keep=1) as tracer:
            hs = nnsight.save([])
            for layer in range(model.n_layers):
                hs.append(mlp_output(model, layer) if site == "mlp" else resid(model, layer))
            tracer.stop()
        stacked = torch.stack([h.float().cpu() for h in hs])  # [L, b, S, d], kept on the CPU
        for i, e in enumerate(chunk):
            s_ids, t_ids = _real(sb, i), _real(tb, i)
            n = len(s_ids) - 1  # the student's BOS/prefix token has no counterpart
            if n < 1 or len(t_ids) < n or not torch.equal(s_ids[-n:], t_ids[-n:]):
                raise TaskvecError(
                    "the query+answer tokens differ between the prompt with demonstrations and the one without "
                    f"({e.student.text[:40]!r}...): the template must tokenize the query the same after a demonstration"
                )
            e.target = stacked[:, i, -n:].clone()


def _layer_scales(examples: list[_Example]) -> torch.Tensor:
    """``[n_layers]``: the teacher's mean squared state per layer and dimension over every example's
    tail tokens (what ``align_norm="layer"`` divides each layer's squared error by)."""
    total = sum(e.target.pow(2).sum(dim=(1, 2)) for e in examples if e.target is not None)
    n = sum(e.target.shape[1] * e.target.shape[2] for e in examples if e.target is not None)
    return (total / n).clamp_min(1e-12)


def _lm_labels(batch: Batch) -> torch.Tensor:
    """``[B, S]`` next-token labels over every real token (the HF LM loss of the reference:
    ``labels = input_ids``): position t predicts token t + 1 where both are real, else -100."""
    ids = batch.input_ids
    mask = batch.inputs.get("attention_mask", torch.ones_like(ids)).bool()
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(mask[:, 1:] & mask[:, :-1], ids[:, 1:], torch.full_like(ids[:, 1:], -100))
    return labels


def _student_loss(
    mimic: MimIC, model: Model, chunk: list[_Example], ce_weight: float, align_weight: float,
    site: str = "mlp", scales: torch.Tensor | None = None, ce_tokens: str = "answer",
) -> tuple[torch.Tensor, float, float]:
    batch = model.encode([e.student for e in chunk])
    B, S = batch.input_ids.shape
    A = max(len(e.answer) for e in chunk)
    keep = A + 1 if ce_tokens == "answer" else S
    with model.trace(batch, logits_to_keep=keep):
        hs = nnsight.save([])
        mimic.apply(model, hidden=hs, site=site)
        logits = model.nn.output.logits.save()
    labels = torch.full((B, A + 1), -100, dtype=torch.long) if ce_tokens == "answer" else _lm_labels(batch)
    target = torch.zeros(model.n_layers, B, S, model.d_model)
    tail = torch.zeros(B, S, dtype=torch.bool)
    for i, e in enumerate(chunk):
        a = len(e.answer)
        if ce_tokens == "answer":
            labels[i, A - a: A] = torch.tensor(e.answer)
        assert e.target is not None
        n = e.target.shape[1]
        target[:, i, S - n:] = e.target
        tail[i, S - n:] = True
    # with a device_map each layer's states live on its own device: the loss is computed on the logits'
    device = logits.device
    labels, target, tail = labels.to(device), target.to(device), tail.to(device)
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    student = torch.stack([h.float().to(device) for h in hs])  # [L, B, S, d]
    sq = ((student - target) ** 2).sum(-1)  # [L, B, S]
    if scales is not None:  # each layer's error relative to the teacher's scale there
        sq = sq / scales.to(device)[:, None, None]
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
            v = v.cpu().masked_fill(~valid[:, None, :], 0.0)  # [b, H, q]
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
    align: str = "mlp",
    align_norm: str = "none",
    ce_tokens: str = "answer",
    init: str = "gate_half",
    teacher_draws: int = 1,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    task: str = "custom",
    template: Template = GENERIC,
    progress: bool = True,
) -> Fit:
    """Train MimIC on ``(x, y)`` pairs against the frozen model with ``n_shots`` demonstrations.

    Each pair is one training example; its teacher prompt takes ``n_shots`` demonstrations from
    the other pairs (drawn with ``seed``). Teacher hidden states are computed once. The model's
    weights are frozen during training and restored afterwards.

    Args:
        align: which states the student aligns to the teacher's: ``"mlp"`` (each layer's
            feed-forward output, the reference's) or ``"resid"`` (each layer's output).
        align_norm: ``"none"`` (plain MSE, the reference's) or ``"layer"`` (each layer's squared
            error divided by the teacher's mean squared state there: no layer's scale swamps CE).
        ce_weight: the loss is ``ce_weight · CE + align_weight · align`` (paper: 0.5).
        align_weight: see ``ce_weight`` (paper: 1.0).
        ce_tokens: ``"answer"`` (CE on the answer tokens only) or ``"all"`` (the reference's LM
            loss over every real token of the student's query and answer, with an EOS after the
            answer in student and teacher alike).
        init: ``"gate_half"`` (``v = w = 0``, ``b`` = mean ``log Z2``: ``μ`` ≈ 0.5 from the first
            step) or ``"reference"`` (``v ~ 0.001·N``, ``w ~ 0.02·N``, ``b = 0``: ``μ`` ≈ 0).
        teacher_draws: teacher contexts per training pair, each with its own ``n_shots``
            demonstrations; a step meets one of them at random (the reference redraws its 16-32
            demonstrations every epoch; 1 is one fixed context).

    Returns:
        :class:`~taskvec.methods.fit.Fit`: ``intervention`` the :class:`~taskvec.MimIC`,
        ``history`` ``step, loss, ce, align, ce_share, lr`` (``ce_share``: the weighted CE's share
        of the loss: near 0 means training is alignment only), ``timings`` ``teacher`` and ``train``
        (``mim, hist = fit_mimic(...)`` still unpacks the first two).

    Example:
        >>> fit = fit_mimic(m, task.pairs("val"), task=task.name)               # doctest: +SKIP
        >>> fit.intervention.predict(m, [taskvec.icl_prompt([], "Kenya")])      # doctest: +SKIP
        ['Nairobi']
    """
    pairs = list(pairs)
    n_shots, steps, batch_size = count("n_shots", n_shots), count("steps", steps), count("batch_size", batch_size)
    integer("seed", seed)
    one_of("align", align, ALIGN_SITES)
    one_of("align_norm", align_norm, ALIGN_NORMS)
    one_of("ce_tokens", ce_tokens, CE_TOKENS)
    one_of("init", init, INITS)
    teacher_draws = count("teacher_draws", teacher_draws, fix="teacher contexts per pair (1: one fixed context)")
    if model.remote:
        raise TaskvecError(
            f"fit_mimic cannot train on a remote model ({model.name}, remote={model.remote!r}): each step "
            "backpropagates into MimIC's parameters, which live here, across a hundred or more forwards; NDIF runs "
            "one request at a time and keeps no gradients between them. Train on a local copy (load without "
            "remote=, on a GPU or in bf16), save it (fit.intervention.save(path)), then use it with the remote "
            "model: taskvec.predict(remote_model, queries, intervention=MimIC.load(path)) runs there")
    if len(pairs) <= n_shots:
        raise TaskvecError(f"{len(pairs)} pairs cannot give {n_shots}-shot teacher prompts: pass more pairs or lower n_shots")
    rng = random.Random(seed)
    examples = []
    eos = (model.tokenizer.eos_token or "") if ce_tokens == "all" else ""
    for j, (x, y) in enumerate(pairs):
        others = [p for k, p in enumerate(pairs) if k != j]
        for _ in range(teacher_draws):
            demos = rng.sample(others, n_shots)
            examples.append(_Example(_with_answer(icl_prompt([], x, template=template), y + eos),
                                     _with_answer(icl_prompt(demos, x, template=template), y + eos),
                                     answer_ids(model, y, template)))
    mimic = MimIC.for_model(model, layers)
    mimic.meta = dict(task=task, n_shots=n_shots, steps=steps, batch_size=batch_size, lr=lr, ce_weight=ce_weight,
                      align_weight=align_weight, align=align, align_norm=align_norm, ce_tokens=ce_tokens, init=init,
                      teacher_draws=teacher_draws, seed=seed, n_pairs=len(pairs), template=template.name)
    start = time.perf_counter()
    _teacher_targets(model, examples, batch_size=16, progress=progress, site=align)
    scales = _layer_scales(examples) if align_norm == "layer" else None
    if init == "reference":
        init_reference(mimic, seed)
    else:
        init_gates(mimic, model, [icl_prompt([], x, template=template) for x, _ in pairs])
    teacher = time.perf_counter() - start
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
            loss, ce, aligned = _student_loss(mimic, model, chunk, ce_weight, align_weight, align, scales, ce_tokens)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss = float(loss.detach())
            rows.append(dict(step=step, loss=total_loss, ce=ce, align=aligned,
                             ce_share=ce_weight * ce / total_loss if total_loss else 0.0, lr=sched.get_last_lr()[0]))
            sched.step()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    total = time.perf_counter() - start
    mimic.meta["train_seconds"] = total
    return Fit(mimic, pd.DataFrame(rows), dict(teacher=teacher, train=total - teacher))
