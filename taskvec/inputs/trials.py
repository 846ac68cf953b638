"""Trials for the many-shot methods: many few-shot prompts, each paired with its zero-shot query.

MTV averages head outputs over many trials (many-shot = many trials, so no single context must
hold every example); STV compares each trial with its query alone.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from ..checks import count, integer
from ..errors import TaskvecError
from .prompts import GENERIC, Prompt, Template, _pairs, sample_icl_prompts, zero_shot


def icl_trials(
    pairs: Sequence[tuple[Any, str]],
    n_trials: int,
    *,
    n_shots: int = 5,
    seed: int = 0,
    template: Template = GENERIC,
) -> tuple[list[Prompt], list[Prompt]]:
    """``n_trials`` few-shot prompts and the same queries alone (with labels).

    Queries are drawn with replacement from ``pairs`` (every pair once before any repeats), each
    prompt's demonstrations from the other pairs, all from ``random.Random(seed)``.

    Returns:
        ``(with_context, query_only)``, two lists of ``n_trials`` prompts in the same order.

    Example:
        >>> pairs = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")]
        >>> ctx, alone = icl_trials(pairs, 6, n_shots=2)
        >>> len(ctx), ctx[0].n_demos, alone[0].n_demos, ctx[0].label == alone[0].label
        (6, 2, 0, True)
    """
    n_trials = count("n_trials", n_trials, fix="trials to average over")
    n_shots = count("n_shots", n_shots)
    seed = integer("seed", seed)
    pairs = _pairs(pairs, "pairs")
    if len(pairs) <= n_shots:
        raise TaskvecError(f"{len(pairs)} pairs cannot give {n_shots}-shot prompts with another query: pass more pairs or lower n_shots")
    rng = random.Random(seed)
    queries: list[tuple[Any, str]] = []
    while len(queries) < n_trials:
        order = list(pairs)
        rng.shuffle(order)
        queries.extend(order)
    queries = queries[:n_trials]
    ctx = sample_icl_prompts(pairs, queries, n_shots=n_shots, seed=rng.randrange(2**31), template=template)
    alone = zero_shot(queries, template)
    return ctx, alone


def split_pairs(pairs: Sequence[tuple[Any, str]], holdout: float = 1 / 3, *, seed: int = 0) -> tuple[list, list]:
    """Shuffle and split pairs into ``(train, held_out)``; both keep at least one pair.

    Example:
        >>> tr, ho = split_pairs([(str(i), str(i)) for i in range(9)])
        >>> len(tr), len(ho)
        (6, 3)
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise TaskvecError(f"holdout={holdout!r}: pass the fraction of pairs to hold out, between 0 and 1 (e.g. 1/3)")
    seed = integer("seed", seed)
    pairs = _pairs(pairs, "pairs")
    if len(pairs) < 2:
        raise TaskvecError("need at least two pairs to hold some out: pass more pairs")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    k = min(len(pairs) - 1, max(1, round(len(pairs) * holdout)))
    return [pairs[i] for i in order[k:]], [pairs[i] for i in order[:k]]


def cyclic_order(n_items: int, steps: int, seed: int = 0) -> list[int]:
    """Which item each step uses: shuffled passes over ``range(n_items)``, ``steps`` long.

    Example:
        >>> sorted(cyclic_order(3, 6)[:3]), len(cyclic_order(3, 7))
        ([0, 1, 2], 7)
    """
    if n_items < 1:
        raise TaskvecError("no items to cycle over: pass at least one query")
    rng, order = random.Random(seed), []
    while len(order) < steps:
        block = list(range(n_items))
        rng.shuffle(block)
        order.extend(block)
    return order[:steps]
