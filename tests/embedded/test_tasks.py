"""One check of the built-in tasks on the real embedded Gemma-3-270m."""

from __future__ import annotations

import taskvec
from taskvec.tasks import get_task


def test_icl_beats_zero_shot_on_country_capital(gemma):
    task = get_task("country-capital")
    queries = task.pairs("test")[:30]
    labels = [y for _, y in queries]
    few = taskvec.sample_icl_prompts(task.pairs("val"), queries, n_shots=5, seed=0)
    zero = [taskvec.icl_prompt([], x, label=y) for x, y in queries]
    acc_few = taskvec.accuracy(taskvec.predict(gemma, few, progress=False), labels)
    acc_zero = taskvec.accuracy(taskvec.predict(gemma, zero, progress=False), labels)
    assert acc_few >= acc_zero + 0.25, (acc_few, acc_zero)
