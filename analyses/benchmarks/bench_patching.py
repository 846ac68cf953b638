"""Benchmark: batched layer sweep vs the reference loop, and extraction vs plain forwards.

In one run on gemma-3-270m (text->text, country-capital):
- taskvec.layer_sweep: all layers x N test queries, batched (each batch's prefix once, then its
  last token per layer on the cached keys/values);
- the reference approach: one forward per query per layer at batch size 1 (as the original
  research code does), same patch;
- the same number of plain batched forwards (transformers, no nnsight, no intervention);
- extraction of a vector from N five-shot prompts vs plain batched forwards of those prompts.

    python -m analyses.benchmarks.bench_patching [-n 100] [--batch-size 50]
"""

from __future__ import annotations

import argparse
import time

import torch

import taskvec
from taskvec.methods.patching import patched_logits
from analyses._common import write_json


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="test queries / extraction prompts (default 100)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--reference-layers", type=int, default=None,
                    help="run the batch-1 reference loop on this many layers only and scale (default: all)")
    args = ap.parse_args()
    m = taskvec.load("gemma-3-270m")
    task = taskvec.get_task("country-capital")
    pool = task.pairs("all")
    queries = [taskvec.icl_prompt([], x, label=y) for x, y in pool[: args.n]]
    vec = taskvec.extract_icl(m, task.pairs("val"), task=task.name, progress=False)
    L, bs = m.n_layers, args.batch_size

    def sweep():
        taskvec.layer_sweep(m, vec, queries, batch_size=bs, progress=False)

    def plain_forwards():
        with torch.no_grad():
            for start in range(0, len(queries), bs):
                enc = m.tokenizer([q.text for q in queries[start:start + bs]], return_tensors="pt", padding=True)
                for _ in range(L):
                    m.hf(**enc, logits_to_keep=1).logits.argmax(-1)

    ref_layers = args.reference_layers or L

    def reference():
        for layer in range(ref_layers):
            for q in queries:
                patched_logits(m, vec, m.encode([q]), [layer]).argmax(-1)

    prompts = taskvec.sample_icl_prompts(task.pairs("all"), pool[: args.n], n_shots=5, seed=0)

    def extract():
        taskvec.read_residuals(m, prompts, batch_size=bs, progress=False)

    def plain_extract():
        with torch.no_grad():
            for start in range(0, len(prompts), bs):
                enc = m.tokenizer([p.text for p in prompts[start:start + bs]], return_tensors="pt", padding=True)
                m.hf(**enc, logits_to_keep=1)

    sweep(), plain_forwards(), extract(), plain_extract()  # warm-up
    t = {}
    t["plain_batched_forwards"] = timed(plain_forwards)
    t["taskvec_layer_sweep"] = timed(sweep)
    t["plain_batched_forwards_2"] = timed(plain_forwards)
    t["reference_loop"] = timed(reference) * (L / ref_layers)
    t["plain_extract"] = timed(plain_extract)
    t["taskvec_extract"] = timed(extract)
    t["plain_extract_2"] = timed(plain_extract)
    plain = (t["plain_batched_forwards"] + t["plain_batched_forwards_2"]) / 2
    plain_ex = (t["plain_extract"] + t["plain_extract_2"]) / 2
    res = {
        "n_queries": len(queries), "n_layers": L, "batch_size": bs, "seconds": t,
        "reference_layers_timed": ref_layers,
        "speedup_vs_reference_loop": t["reference_loop"] / t["taskvec_layer_sweep"],
        "time_ratio_vs_plain_batched": t["taskvec_layer_sweep"] / plain,
        "extraction_time_ratio_vs_plain": t["taskvec_extract"] / plain_ex,
        "targets": {"speedup_vs_reference_loop": ">= 5", "time_ratio_vs_plain_batched": "<= 1.5",
                    "extraction_time_ratio_vs_plain": "<= 1.3"},
    }
    for k, v in t.items():
        print(f"{k:<28}{v:>8.2f} s")
    print(f"speedup vs reference loop {res['speedup_vs_reference_loop']:.1f}x (target >= 5), "
          f"sweep / plain batched {res['time_ratio_vs_plain_batched']:.2f} (target <= 1.5), "
          f"extraction / plain {res['extraction_time_ratio_vs_plain']:.2f} (target <= 1.3)")
    write_json("bench_patching.json", res)


if __name__ == "__main__":
    main()
