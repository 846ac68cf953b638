"""Benchmark: taskvec.lens over all layers vs a plain transformers forward + hand-written lens.

Both decode the last token of every layer with the final norm and unembedding and take the
top-k; both use ``logits_to_keep=1`` so neither pays for full-sequence logits (the plain side is
the fastest version of the by-hand approach). Times are the median of interleaved repeats in one
process; peak memory is measured in child processes (peak resident memory sampled during the run, minus the
resident memory after loading and a warm-up batch).

    python -m analyses.benchmarks.bench_lens            # 64 five-shot prompts on gemma-3-270m
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

import taskvec
from analyses._common import ROOT, write_json
from analyses.benchmarks._measure import PeakRSS, rss_bytes


def make_prompts(n: int) -> list:
    task = taskvec.get_task("country-capital")
    pool = task.pairs("val") + task.pairs("test")
    return taskvec.sample_icl_prompts(pool, pool[:n], n_shots=5, seed=0)


def run_taskvec(m, prompts, batch_size: int, top_k: int) -> None:
    taskvec.lens(m, prompts, batch_size=batch_size, top_k=top_k, progress=False)


def run_plain(m, prompts, batch_size: int, top_k: int) -> None:
    hf, norm, head = m.hf, m.hf.model.norm, m.hf.lm_head
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = m.tokenizer([p.text for p in prompts[start:start + batch_size]], return_tensors="pt", padding=True)
            out = hf(**enc, output_hidden_states=True, logits_to_keep=1)
            for h in out.hidden_states[1:]:
                torch.softmax(head(norm(h[:, -1])).float(), dim=-1).topk(top_k, dim=-1)


def child(variant: str, n: int, batch_size: int, top_k: int) -> None:
    import gc

    m = taskvec.load("gemma-3-270m")
    prompts = make_prompts(n)
    run = run_taskvec if variant == "taskvec" else run_plain
    run(m, prompts[:batch_size], batch_size, top_k)  # warm-up
    gc.collect()
    base = rss_bytes()
    with PeakRSS() as rss:
        run(m, prompts, batch_size, top_k)
    print(json.dumps({"peak_delta_mb": (rss.peak - base) / 2**20}))


def peak_delta(variant: str, n: int, batch_size: int, top_k: int) -> float:
    out = subprocess.run([sys.executable, "-m", "analyses.benchmarks.bench_lens", "--child", variant, "-n", str(n),
                          "--batch-size", str(batch_size), "--top-k", str(top_k)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_delta_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=64, help="five-shot prompts (default 64)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["taskvec", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.batch_size, args.top_k)
        return

    m = taskvec.load("gemma-3-270m")
    prompts = make_prompts(args.n)
    run_plain(m, prompts[:args.batch_size], args.batch_size, args.top_k)  # warm-up both paths
    run_taskvec(m, prompts[:args.batch_size], args.batch_size, args.top_k)
    times: dict[str, list[float]] = {"plain": [], "taskvec": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", run_plain), ("taskvec", run_taskvec)):
            t = time.perf_counter()
            fn(m, prompts, args.batch_size, args.top_k)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {k: peak_delta(k, args.n, args.batch_size, args.top_k) for k in ("plain", "taskvec")}
    res = {
        "n_prompts": args.n, "n_layers": m.n_layers, "batch_size": args.batch_size, "top_k": args.top_k,
        "seconds": times, "median_seconds": med,
        "time_ratio_vs_plain": med["taskvec"] / med["plain"],
        "peak_memory_mb": mem,
        "peak_memory_ratio_vs_plain": mem["taskvec"] / max(mem["plain"], 1e-9),
        "targets": {"time_ratio_vs_plain": "<= 1.3", "peak_memory_ratio_vs_plain": "<= 1.5"},
    }
    print(f"\n{'':<10}{'median s':>10}{'peak MB':>10}")
    for k in ("plain", "taskvec"):
        print(f"{k:<10}{med[k]:>10.2f}{mem[k]:>10.0f}")
    print(f"time ratio {res['time_ratio_vs_plain']:.2f} (target <= 1.3), "
          f"memory ratio {res['peak_memory_ratio_vs_plain']:.2f} (target <= 1.5)")
    write_json("bench_lens.json", res)


if __name__ == "__main__":
    main()
