"""Benchmark: STV's location search (activation deltas) vs MTV's (REINFORCE), and inference cost.

In one run on one model (default gemma-3-270m) and one task's validation pairs (default
country-capital), with the same number of trials T (default 100):

- STV location search: head outputs of T few-shot prompts and of their T queries alone, deltas
  per head (:func:`taskvec.activation_deltas`);
- MTV location search: REINFORCE over a Bernoulli mask per head with the package defaults
  (:func:`taskvec.methods.mtv.mtv_search`, 200 steps of 32 masks), on means from T trials (the means
  are timed separately and not counted as location search);
- peak resident memory above the level before each stage (sampled every 5 ms);
- inference: the fitted MTV and STV interventions and a MimIC (gates initialised, random shifts:
  the cost does not depend on the values) on zero-shot test queries, against a plain
  transformers forward of the same batch (no nnsight); medians of interleaved repeats.

Targets: STV / MTV location-search time <= 0.1 (the STV paper reports 0.015); inference <= 1.2x
a plain zero-shot forward.

    python -m analyses.benchmarks.bench_location_search [--trials 100] [--steps 200] [--masks 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import taskvec
from taskvec.interventions.heads import HeadIntervention
from taskvec.interventions.mimic import MimIC
from taskvec.methods.mimic import init_gates
from taskvec.methods.mtv import mtv_means, mtv_search, mtv_select
from taskvec.methods.deltas import activation_deltas, top_heads
from taskvec.methods.stv import cluster_bank
from taskvec.inputs.trials import split_pairs
from analyses._common import write_json
from analyses.benchmarks._measure import PeakRSS


def stage(fn):
    """Run ``fn`` once; return (result, seconds, peak MiB above the start)."""
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, mem.above_start_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--task", default="country-capital")
    ap.add_argument("--trials", type=int, default=100, help="trials T for MTV's means and STV's deltas (default 100)")
    ap.add_argument("--steps", type=int, default=200, help="MTV REINFORCE steps (package default 200)")
    ap.add_argument("--masks", type=int, default=32, help="masks per MTV step (package default 32)")
    ap.add_argument("--queries", type=int, default=64, help="test queries for the inference timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    m = taskvec.load(args.model)
    task = taskvec.get_task(args.task)
    pairs = task.pairs("val")
    train, held = split_pairs(pairs, seed=args.seed)
    train_q = [taskvec.icl_prompt([], x, label=y) for x, y in train]
    held_q = [taskvec.icl_prompt([], x, label=y) for x, y in held]
    test_q = [taskvec.icl_prompt([], x, label=y) for x, y in task.pairs("test")[: args.queries]]
    taskvec.predict(m, test_q[:4], progress=False)  # warm-up

    deltas, stv_s, stv_mb = stage(lambda: activation_deltas(m, pairs, n_pairs=args.trials, seed=args.seed, progress=False))
    acts, means_s, means_mb = stage(lambda: mtv_means(m, pairs, n_trials=args.trials, seed=args.seed, progress=False))
    (policy, hist), mtv_s, mtv_mb = stage(lambda: mtv_search(m, acts.mean, train_q, steps=args.steps, n_masks=args.masks,
                                                             seed=args.seed, progress=False))
    mask, _ = mtv_select(m, acts.mean, policy, held_q, n_candidates=4, seed=args.seed)
    mtv = HeadIntervention(acts.mean, mask, m.name, "mtv")
    stv_mask = top_heads(deltas.delta, 20)
    bank = cluster_bank(deltas.context, stv_mask, 8, seed=args.seed)
    stv_values = torch.zeros_like(acts.mean)
    stv_values[stv_mask] = bank[:, 0]
    stv = HeadIntervention(stv_values, stv_mask, m.name, "stv")
    mim = MimIC.for_model(m)
    init_gates(mim, m, train_q)
    with torch.no_grad():
        mim.shift.normal_(0, 1.0, generator=torch.Generator().manual_seed(args.seed))

    bs = 32
    chunks = [m.encode(test_q[i:i + bs]) for i in range(0, len(test_q), bs)]

    def plain():
        with torch.no_grad():
            for b in chunks:
                m.hf(**b.inputs, logits_to_keep=1).logits[:, -1].argmax(-1)

    runners = {"zero_shot": plain,
               "mtv": lambda: [mtv.logits(m, b) for b in chunks],
               "stv": lambda: [stv.logits(m, b) for b in chunks],
               "mimic": lambda: [mim.logits(m, b) for b in chunks]}
    for fn in runners.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    peaks: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            _, s, mb = stage(fn)
            times[name].append(s)
            peaks[name] = max(peaks.get(name, 0.0), mb)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med[k] / med["zero_shot"] for k in ("mtv", "stv", "mimic")}

    res = {
        "model": m.name, "task": task.name, "trials": args.trials,
        "mtv_search": {"steps": args.steps, "masks_per_step": args.masks},
        "seconds": {"stv_location_search": stv_s, "mtv_location_search": mtv_s, "mtv_means": means_s},
        "stv_over_mtv_time": stv_s / mtv_s,
        "peak_memory_mb_above_start": {"stv_location_search": stv_mb, "mtv_location_search": mtv_mb,
                                       "mtv_means": means_mb, **{f"inference_{k}": v for k, v in peaks.items()}},
        "inference_seconds_median": med, "inference_queries": len(test_q), "inference_batch_size": bs,
        "inference_ratio_vs_zero_shot": ratio,
        "mtv_policy": {"task_loss_first10": float(hist.task_loss.iloc[:10].mean()),
                       "task_loss_last10": float(hist.task_loss.iloc[-10:].mean()),
                       "entropy_start": float(hist.entropy.iloc[0]), "entropy_end": float(hist.entropy.iloc[-1])},
        "targets": {"stv_over_mtv_time": "<= 0.1 (paper: 0.015)", "inference_ratio_vs_zero_shot": "<= 1.2"},
        "note": "wall times on a shared CPU; both searches ran in this one process, one after the other",
    }
    print(f"{'stage':<28}{'seconds':>10}{'peak MiB':>10}")
    for name, s, mb in [("STV location search", stv_s, stv_mb), ("MTV location search", mtv_s, mtv_mb),
                        ("MTV means (not search)", means_s, means_mb)]:
        print(f"{name:<28}{s:>10.1f}{mb:>10.0f}")
    print(f"STV / MTV location-search time: {res['stv_over_mtv_time']:.3f} (target <= 0.1; paper 0.015)")
    print(f"{'inference':<28}{'median s':>10}{'x plain':>10}{'peak MiB':>10}")
    for k in runners:
        print(f"{k:<28}{med[k]:>10.2f}{med[k] / med['zero_shot']:>10.2f}{peaks[k]:>10.0f}")
    write_json("bench_location_search.json", res)


if __name__ == "__main__":
    main()
