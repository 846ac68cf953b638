"""Honest statistics in the cross-modal protocol: per-seed runs (the reference's protocol), the
seed spread and a 95% interval over queries in every summary row."""

from __future__ import annotations

import pandas as pd
import pytest

import taskvec
from taskvec.experiments.cross_modal import Setting, transfer_experiment

TASK = taskvec.get_task("country-capital")
BASE = dict(n_shots=2, n_val=4, n_test=6, batch_size=8)


@pytest.fixture(scope="module")
def per_seed(tiny):
    return transfer_experiment(tiny, [TASK], [("text", "text")], Setting(seeds=(0, 1, 2), per_seed=True, **BASE),
                               progress=False)


def test_per_seed_runs_evaluate_each_seed_and_report_the_spread(per_seed):
    runs, summary = per_seed["per_seed"], per_seed["summary"]
    assert sorted(runs.seed.unique()) == ["0", "1", "2"]
    assert (runs.groupby("method").size() == 3).all()  # Patch and every baseline, once per seed
    for _, row in summary.iterrows():
        mine = runs[runs.method == row.method].accuracy
        assert row.accuracy == pytest.approx(mine.mean())
        assert row.seed_sd == pytest.approx(mine.std(ddof=1))
        assert row.n_seeds == 3 and row.n == 6
        assert 0 <= row.ci_low <= row.accuracy <= row.ci_high <= 1


def test_one_seed_of_a_per_seed_run_is_that_seed_run_alone(tiny, per_seed):
    alone = transfer_experiment(tiny, [TASK], [("text", "text")], Setting(seeds=(1,), seed=1, **BASE),
                                progress=False)["summary"]
    one = per_seed["per_seed"][per_seed["per_seed"].seed == "1"]
    merged = one.merge(alone, on=["task", "method", "spec", "query"], suffixes=("", "_alone"))
    assert len(merged) == len(alone)
    layer = int(per_seed["layers"].layer.iloc[0])
    if layer == int(alone.layer.dropna().iloc[0]):  # Patch depends on the chosen layer; baselines never do
        assert (merged.accuracy == merged.accuracy_alone).all()
    else:
        base = merged[merged.method != "Patch"]
        assert (base.accuracy == base.accuracy_alone).all()


def test_pooled_runs_still_report_n_and_an_interval(tiny):
    res = transfer_experiment(tiny, [TASK], [("text", "text")], Setting(seeds=(0, 1), **BASE), progress=False)
    summary = res["summary"]
    assert (summary.n_seeds == 1).all() and (summary.seed_sd == 0).all()
    assert (summary.ci_high > summary.ci_low).all() and (summary.n == 6).all()
    assert isinstance(res["per_seed"], pd.DataFrame) and set(res["per_seed"].seed) == {"pooled"}


def test_setting_key_is_unchanged_for_pooled_runs():
    """Stores written before the switch existed are still found for pooled runs."""
    import hashlib
    import json
    from dataclasses import asdict

    before = asdict(Setting(**BASE))
    before.pop("per_seed")  # the fields a Setting had before the switches
    before.pop("paired")
    assert Setting(**BASE).key() == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]
    assert Setting(per_seed=True, **BASE).key() != Setting(**BASE).key()
    assert len({Setting(paired=True, **BASE).key(), Setting(per_seed=True, paired=True, **BASE).key(),
                Setting(per_seed=True, **BASE).key()}) == 3


def test_paired_text_queries_cover_the_image_test_items():
    from taskvec.experiments.cross_modal import queries

    task = taskvec.get_task("food-color")
    s = Setting(paired=True)
    text = [x for x, _ in queries(task, "test", "text", s)]
    assert text == [it.input for it in task.select("test", "image")] and len(text) == task.sizes()["test_emoji"] >= 40
    assert len(queries(task, "test", "text", Setting())) == task.sizes()["test"] > len(text)
    assert queries(task, "val", "text", s) == queries(task, "val", "text", Setting())  # validation is unchanged
    assert len(queries(task, "test", "text", Setting(paired=True, n_test=7))) == 7


def test_transfer_plan_counts_the_forwards_the_experiment_runs(tiny):
    """The plan behind every script's expected time: its count of prompts equals the rows the
    model is actually run on (a hook on its first layer), per seed and with paired queries."""
    from taskvec.experiments.cross_modal import transfer_plan

    task = taskvec.get_task("food-color")
    s = Setting(seeds=(0, 1), per_seed=True, paired=True, n_shots=2, n_val=3, n_test=5, batch_size=8)
    rows = []
    handle = tiny.hf.model.layers[0].register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append((args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    try:
        transfer_experiment(tiny, [task], [("text", "text")], s, progress=False)
    finally:
        handle.remove()
    plan = transfer_plan(tiny, [task], [("text", "text")], s)
    assert int(plan.forwards.sum()) == sum(rows)
    assert set(plan.prompt) == {"icl-text", "query-text"}
