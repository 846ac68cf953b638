"""The many-shot table's statistics and settings, without a model."""

from __future__ import annotations

import pandas as pd
import pytest

from analyses.table_many_shot import Config, summary, wide


def test_many_shot_summary_reports_seeds_spread_and_a_wilson_interval():
    long = pd.DataFrame([dict(model="m", modality="text", task="t", method="MTV", accuracy=a, n=100, seed=s)
                         for s, a in enumerate([0.5, 0.6, 0.7])]
                        + [dict(model="m", modality="text", task="t", method="ICL 29-shot", accuracy=float("nan"), n=0,
                                seed=0)])
    out = summary(long)
    assert list(out.method) == ["MTV"]  # a k-shot that did not fit the context is left out, not scored 0
    row = out.iloc[0]
    assert row.accuracy == pytest.approx(0.6) and row.n == 100 and row.n_seeds == 3
    assert row.seed_sd == pytest.approx(0.1) and row.seed_ci == pytest.approx(0.248, abs=1e-3)
    assert row.ci_low < 0.6 < row.ci_high and row.ci_high - row.ci_low < 0.12  # 180 of 300 queries
    assert wide(out).loc[("text", "MTV"), "t"] == pytest.approx(0.6)


def test_many_shot_budgets():
    quick, cpu, ref = (Config.make(True, "text"), Config.make(False, "text"), Config.make(False, "text", "reference"))
    assert (quick.n_test, cpu.n_test, ref.n_test) == (30, 100, 100)
    assert cpu.mtv == quick.mtv and cpu.shots == (1, 5, 10)
    assert [n for _, n in cpu.stv_variants] == ["STV", "STV (relative Δ)"] and len(ref.stv_variants) == 3
    assert ref.mtv == dict(steps=600, select="loss") and ref.stv == dict(n_clusters=32) and ref.shots[-1] == 29


def test_claim_verdicts_need_the_difference_interval_above_zero():
    from analyses.claims import average, not_worse, verdict

    def runs(method, accs, n=100):
        return [dict(task=f"t{i % 2}", method=method, seed=i // 2, accuracy=a, n=n if i % 2 else 40)
                for i, a in enumerate(accs)]

    df = pd.DataFrame(runs("A", [0.6, 0.5, 0.62, 0.52, 0.58, 0.5]) + runs("B", [0.2, 0.1, 0.22, 0.12, 0.18, 0.1])
                      + runs("C", [0.55, 0.45, 0.57, 0.47, 0.53, 0.45]))
    a, b, c = (average(df, method=m) for m in "ABC")
    # the mean of the task means (t0 0.60 on 40 queries, t1 ~0.507 on 100, each asked by 3 seeds)
    assert a["mean"] == pytest.approx((0.6 + 1.52 / 3) / 2) and a["low"] < a["mean"] < a["high"]
    assert a["n_seeds"] == 3 and a["n"] == 140 and a["n_tasks"] == 2
    se = ((0.6 * 0.4 / 40 + (1.52 / 3) * (1 - 1.52 / 3) / 100) ** 0.5) / 2
    assert a["high"] - a["mean"] == pytest.approx(1.96 * se)
    assert verdict(a, b).startswith("reproduces") and verdict(b, a).startswith("does not reproduce")
    assert verdict(a, c).startswith("direction only") and not_worse(c, a).startswith("reproduces")
    assert not_worse(b, a).startswith("does not reproduce")
    assert average(df, method="D") is None and verdict(None, a) == "not run"
