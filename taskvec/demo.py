"""The README's first command: a 5-shot vs 0-shot comparison and a logit-lens summary on one task."""

from __future__ import annotations

import time

import pandas as pd

from .inference import predict
from .lens import lens
from .loading import DEFAULT_MODEL, load
from .metric import accuracy
from .prompts import icl_prompt, sample_icl_prompts


def run_demo(model_name: str = DEFAULT_MODEL, task_name: str = "country-capital", *, n_queries: int = 50,
             n_shots: int = 5, seed: int = 0, progress: bool = True) -> dict:
    """Load a model, compare 0-shot with ``n_shots``-shot accuracy on a task, and summarise the lens.

    Returns a dict with ``zero_shot``, ``few_shot`` accuracies and the lens ``phases`` table;
    prints a readable report.

    Example:
        >>> run_demo(n_queries=10)     # doctest: +SKIP
    """
    from .tasks import get_task

    t0 = time.time()
    model = load(model_name)
    task = get_task(task_name)
    queries = task.pairs("test")[:n_queries]
    demos = task.pairs("val")
    few = sample_icl_prompts(demos, queries, n_shots=n_shots, seed=seed)
    zero = [icl_prompt([], x, label=y) for x, y in queries]
    labels = [y for _, y in queries]
    few_pred = predict(model, few, progress=progress)
    zero_pred = predict(model, zero, progress=progress)
    acc_few, acc_zero = accuracy(few_pred, labels), accuracy(zero_pred, labels)

    print(f"\n{model}\ntask {task.name}: {len(queries)} test queries, demonstrations from the validation split\n")
    table = pd.DataFrame({"setting": ["0-shot (query alone)", f"{n_shots}-shot ICL"], "accuracy": [acc_zero, acc_few]})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    examples = pd.DataFrame({"query": [q for q, _ in queries[:5]], "label": labels[:5],
                             "0-shot": zero_pred[:5], f"{n_shots}-shot": few_pred[:5]})
    print("\nfirst predictions:\n" + examples.to_string(index=False))

    result = lens(model, few[:20], progress=progress)
    phases = result.phases(task.phase_categories(), title=f"{task.name}: {n_shots}-shot ICL")
    pivot = phases.df.pivot(index="layer", columns="category", values="mean")
    top1 = result.top1().groupby("layer")["token"].agg(lambda s: s.value_counts().index[0])
    summary = pivot.assign(top1=top1.map(repr))
    print(f"\nlogit lens at the query's delimiter ({len(result.prompts)} prompts): mean probability per category "
          "and the most common top-1 token per layer")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\ndone in {time.time() - t0:.0f} s")
    return {"zero_shot": acc_zero, "few_shot": acc_few, "phases": phases.df}
