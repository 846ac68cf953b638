"""MTV, Multimodal Task Vectors (Huang et al. 2024): mean head activations over many trials,
heads chosen by REINFORCE over a Bernoulli mask, replaced at the last token (docs/design.md §3).

Three stages, each usable alone:

1. :func:`mtv_means`: head outputs at the last token of many few-shot trials, streaming mean,
   ``[n_layers, n_heads, d_head]``;
2. :func:`mtv_search`: REINFORCE over one Bernoulli per (layer, head) (init p≈0.27, Adam
   lr 0.1); each step one zero-shot query and ``n_masks`` masks in one batch, reward = minus
   the cross-entropy of the first answer token with the masked heads replaced by their means;
3. :func:`mtv_select`: a few masks sampled from the policy (plus its mode), the best on
   held-out queries wins.

:func:`fit_mtv` runs all three. Defaults are scaled to Gemma-3-270m (18 x 4 = 72 heads): 100
trials, 5 shots, 200 steps of 32 masks (the paper: 100 trials, 32 masks, several hundred steps
for 7B models with 1024 heads).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import pandas as pd
import torch

from ..checks import count, integer, one_of
from ..errors import TaskvecError
from ..inputs.metric import is_correct
from ..inputs.prompts import GENERIC, Prompt, Template, zero_shot
from ..inputs.trials import cyclic_order, icl_trials, split_pairs
from ..interventions.heads import HeadIntervention, replaced_logits
from ..interventions.run import decode_first
from ..models.model import Model
from ..sites.collect import Activations, head_activations
from .answers import RepeatedQueries, first_answer_ids
from .fit import Fit
from .reinforce import BernoulliPolicy, first_token_reward, reinforce


def mtv_means(
    model: Model,
    pairs: Sequence[tuple[Any, str]],
    *,
    n_trials: int = 100,
    n_shots: int = 5,
    seed: int = 0,
    template: Template = GENERIC,
    batch_size: int = 16,
    progress: bool = True,
) -> Activations:
    """Mean head outputs at the last token of ``n_trials`` few-shot prompts (streaming).

    Returns:
        :class:`~taskvec.sites.collect.Activations`; ``.mean`` is ``[n_layers, n_heads, d_head]``.

    Example:
        >>> mtv_means(m, task.pairs("val"), n_trials=100).mean.shape     # doctest: +SKIP
        torch.Size([18, 4, 256])
    """
    ctx, _ = icl_trials(pairs, n_trials, n_shots=n_shots, seed=seed, template=template)
    return head_activations(model, ctx, at="last", batch_size=batch_size, progress=progress)


def mtv_search(
    model: Model,
    means: torch.Tensor,
    queries: Sequence[Prompt],
    *,
    steps: int = 200,
    n_masks: int = 32,
    lr: float = 0.1,
    init_p: float = 0.27,
    seed: int = 0,
    template: Template = GENERIC,
    progress: bool = True,
) -> tuple[BernoulliPolicy, pd.DataFrame]:
    """MTV's location search: REINFORCE over a Bernoulli mask per (layer, head).

    Args:
        means: ``[n_layers, n_heads, d_head]`` from :func:`mtv_means`.
        queries: zero-shot queries with labels (``icl_prompt([], x, label=y)``); one per step.
        steps: REINFORCE steps (one query each).
        n_masks: masks sampled per step (MTV: 32).
        lr: Adam learning rate (MTV: 0.1).
        init_p: initial probability of every head (MTV: 0.27).

    Returns:
        ``(policy, history)``; ``policy.probs()`` is ``[n_layers, n_heads]``.

    Example:
        >>> pol, hist = mtv_search(m, means, train_queries, steps=100)    # doctest: +SKIP
        >>> hist.task_loss.iloc[-20:].mean() < hist.task_loss.iloc[:20].mean()   # doctest: +SKIP
        True
    """
    _search_args(steps, n_masks, lr, init_p)
    if means.shape != (model.n_layers, model.n_heads, model.d_head):
        raise TaskvecError(f"means must be [{model.n_layers}, {model.n_heads}, {model.d_head}], got {tuple(means.shape)}")
    queries = list(queries)
    if not queries:
        raise TaskvecError("no queries given: pass zero-shot queries with labels")
    qb = RepeatedQueries(model, queries, n_masks, template)
    order = cyclic_order(len(queries), steps, seed)
    policy = BernoulliPolicy((model.n_layers, model.n_heads), init_p=init_p)

    def reward(masks: torch.Tensor, step: int) -> torch.Tensor:
        batch, targets = qb(order[step])
        return first_token_reward(replaced_logits(model, batch, means, masks), targets)

    history = reinforce(policy, reward, steps=steps, n_samples=n_masks, lr=lr, seed=seed, desc="MTV search",
                        progress=progress)
    return policy, history


def _search_args(steps: Any, n_masks: Any, lr: Any, init_p: Any) -> None:
    """REINFORCE's settings, checked before any work."""
    count("steps", steps)
    count("n_masks", n_masks, fix="MTV samples 32")
    for name, value, fix in (("lr", lr, "a learning rate > 0, e.g. 0.1"),
                             ("init_p", init_p, "a probability in (0, 1), e.g. 0.27")):
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        if not ok or (name == "init_p" and not value < 1):
            raise TaskvecError(f"{name}={value!r}: pass {fix}")


def evaluate_masks(
    model: Model,
    means: torch.Tensor,
    masks: torch.Tensor,
    queries: Sequence[Prompt],
    *,
    template: Template = GENERIC,
    case_sensitive: bool = True,
) -> pd.DataFrame:
    """Accuracy and mean first-token loss of each candidate mask on labelled zero-shot queries.

    Args:
        masks: ``[n_candidates, n_layers, n_heads]`` bool.

    Returns:
        one row per candidate: ``candidate, n_heads, accuracy, loss``.
    """
    queries = list(queries)
    targets = first_answer_ids(model, [q.label for q in queries], template)
    batch = model.encode(queries)
    rows = []
    for c, mask in enumerate(masks):
        logits = replaced_logits(model, batch, means, mask.expand(len(queries), *mask.shape))
        preds = decode_first(model, logits)
        acc = sum(is_correct(p, q.label or "", case_sensitive=case_sensitive) for p, q in zip(preds, queries)) / len(queries)
        loss = float(-first_token_reward(logits, targets).mean())
        rows.append(dict(candidate=c, n_heads=int(mask.sum()), accuracy=acc, loss=loss))
    return pd.DataFrame(rows)


#: how :func:`mtv_select` ranks held-out candidates
SELECTIONS = ("accuracy", "loss")


def mtv_select(
    model: Model,
    means: torch.Tensor,
    policy: BernoulliPolicy,
    holdout: Sequence[Prompt],
    *,
    n_candidates: int = 8,
    seed: int = 0,
    template: Template = GENERIC,
    select: str = "accuracy",
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Sample ``n_candidates`` masks from the policy (candidate 0 is its mode) and keep the best
    on held-out queries: ``select="accuracy"`` (highest accuracy, then lowest loss) or ``"loss"``
    (lowest mean first-token loss, the reference's choice).

    Returns:
        ``(mask [n_layers, n_heads] bool, candidates table)``.
    """
    n_candidates = count("n_candidates", n_candidates)
    gen = torch.Generator().manual_seed(integer("seed", seed) + 1)
    masks = torch.cat([policy.mode()[None], policy.sample(max(0, n_candidates - 1), gen)])
    table = evaluate_masks(model, means, masks, holdout, template=template)
    one_of("select", select, SELECTIONS)
    order = (["accuracy", "loss"], [False, True]) if select == "accuracy" else (["loss", "accuracy"], [True, False])
    best = table.sort_values(order[0], ascending=order[1], kind="stable").iloc[0]
    table["chosen"] = table.candidate == best.candidate
    return masks[int(best.candidate)], table


def fit_mtv(
    model: Model,
    pairs: Sequence[tuple[Any, str]],
    *,
    holdout: Sequence[tuple[Any, str]] | None = None,
    n_trials: int = 100,
    n_shots: int = 5,
    steps: int = 200,
    n_masks: int = 32,
    lr: float = 0.1,
    init_p: float = 0.27,
    n_candidates: int = 8,
    seed: int = 0,
    task: str = "custom",
    template: Template = GENERIC,
    batch_size: int = 16,
    select: str = "accuracy",
    progress: bool = True,
) -> Fit:
    """Means, REINFORCE location search and held-out selection in one call.

    Args:
        pairs: ``(x, y)`` examples (text or images); trials and REINFORCE queries come from them.
        holdout: pairs for choosing among sampled masks (default: a third of ``pairs``, which
            REINFORCE then does not see).
        steps: REINFORCE steps (200 by default; the reference runs 600).
        select: how the held-out candidates are ranked: ``"accuracy"`` (then loss) or ``"loss"``
            (the reference's lowest mean loss).

    Returns:
        :class:`~taskvec.methods.fit.Fit` with ``timings`` ``means``, ``location_search``,
        ``selection`` and ``details`` ``probs`` ``[n_layers, n_heads]`` and ``candidates``.

    Example:
        >>> fit = fit_mtv(m, task.pairs("val"), task=task.name)                        # doctest: +SKIP
        >>> fit.intervention.predict(m, [icl_prompt([], "Kenya")])                      # doctest: +SKIP
        ['Nairobi']
    """
    count("n_trials", n_trials)
    count("n_shots", n_shots)
    count("n_candidates", n_candidates)
    count("batch_size", batch_size)
    integer("seed", seed)
    _search_args(steps, n_masks, lr, init_p)
    pairs = list(pairs)
    if holdout is None:
        train, held = split_pairs(pairs, seed=seed)
    else:
        train, held = pairs, list(holdout)
    t: dict[str, float] = {}
    start = time.perf_counter()
    acts = mtv_means(model, pairs, n_trials=n_trials, n_shots=n_shots, seed=seed, template=template,
                     batch_size=batch_size, progress=progress)
    t["means"] = time.perf_counter() - start
    queries = zero_shot(train, template)
    start = time.perf_counter()
    policy, history = mtv_search(model, acts.mean, queries, steps=steps, n_masks=n_masks, lr=lr, init_p=init_p,
                                 seed=seed, template=template, progress=progress)
    t["location_search"] = time.perf_counter() - start
    start = time.perf_counter()
    held_q = zero_shot(held, template)
    mask, table = mtv_select(model, acts.mean, policy, held_q, n_candidates=n_candidates, seed=seed, template=template,
                             select=select)
    t["selection"] = time.perf_counter() - start
    meta = dict(task=task, n_trials=n_trials, n_shots=n_shots, steps=steps, n_masks=n_masks, lr=lr, init_p=init_p,
                n_candidates=n_candidates, seed=seed, template=template.name, select=select)
    iv = HeadIntervention(acts.mean, mask, model.name, "mtv", meta)
    return Fit(iv, history, t, dict(probs=policy.probs(), candidates=table))
