"""Benchmark: the main operations on a CUDA device, float32 against bfloat16.

For each model (default: tiny random Llama and LLaVA instances, built offline by
:func:`taskvec.models.tiny.build_tiny`; ``--model`` takes any name, folder or hub id instead) and each
dtype, after one warm-up call, ``--repeats`` timed calls of:

- ``lens``: the logit lens over every layer of ``--prompts`` two-shot prompts;
- ``layer_sweep``: a task vector patched at every layer in turn on ``--prompts`` queries;
- ``mtv_search``: ``--steps`` REINFORCE steps of MTV's location search (8 masks a step) on means
  computed once beforehand;
- ``mimic_train``: ``--steps`` MimIC training steps (the training loop's seconds from the fit's
  timings, teacher pass excluded; the peak memory covers the whole fit).

Each is reported as the median time with a distribution-free interval for the median (the order
statistics whose coverage is >= 95%, or the range with its coverage when there are too few
repeats), and the peak GPU memory that torch's allocator handed out during the calls
(``torch.cuda.max_memory_allocated``, reset before each call), absolute and above the level before
the call. The device is synchronised around every timed call. Tiny models measure taskvec's own
overhead (kernel launches, nnsight's tracing, host-device copies), not the model's arithmetic:
``--model`` a real checkpoint for that.

Without a CUDA device it says so and exits 0 without writing anything. ``--device cpu`` runs the
same steps on the CPU as a check of the script itself (no memory figures; nothing is written).

    python -m analyses.benchmarks.bench_gpu                    # writes analyses/results/bench_gpu.json
    python -m analyses.benchmarks.bench_gpu --repeats 11 --model HuggingFaceM4/idefics2-8b
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

import taskvec
from taskvec.errors import TaskvecError
from taskvec.methods.mtv import mtv_means, mtv_search
from analyses._common import write_json
from analyses.benchmarks._measure import PeakCUDA, median_interval

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OPERATIONS = ("lens", "layer_sweep", "mtv_search", "mimic_train")


def no_cuda_reason(device: str) -> str | None:
    """Why the benchmark cannot measure on ``device``, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return ("NO CUDA DEVICE: bench_gpu measures time and memory on a GPU; nothing was measured and no results "
                "were written (run it on a GPU machine, e.g. through scripts/gpu-check)")
    return None


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


def workload(m: taskvec.Model, n: int) -> dict[str, Any]:
    """Pairs, two-shot prompts and zero-shot queries (random images as inputs on a VLM)."""
    task = taskvec.get_task("country-capital")
    pool = task.pairs("val") + task.pairs("test")
    if m.is_vlm and (m.arch.max_images_per_prompt is None):
        pool = [(_image(i), y) for i, (_, y) in enumerate(pool)]
    pairs = pool[: max(n, 8)]
    return dict(pairs=pairs, prompts=taskvec.sample_icl_prompts(pool, pool[:n], n_shots=2, seed=0),
                queries=taskvec.zero_shot(pool[:n]))


def tiny_folder(arch: str, root: Path) -> str:
    """A tiny random ``arch`` (SmolLM2's tokenizer when its files are at hand, as the GPU tier does)."""
    from taskvec.models.tiny import build_tiny, tokenizer_dir

    try:
        tokenizer_dir("smollm2-135m")
        name: str | None = "smollm2-135m"
    except TaskvecError:
        name = None
    return str(build_tiny(arch, root / arch, tokenizer=name))


def measure(fn: Callable[[], float | None], repeats: int, device: str) -> dict[str, Any]:
    """Warm up once, then ``repeats`` timed calls. ``fn`` may return its own seconds (a part of the call)."""
    fn()
    seconds, peaks, above = [], [], []
    for _ in range(repeats):
        if device == "cuda":
            with PeakCUDA() as mem:
                t = time.perf_counter()
                own = fn()
                torch.cuda.synchronize()
                wall = time.perf_counter() - t
            peaks.append(mem.peak_mb)
            above.append(mem.above_start_mb)
        else:
            t = time.perf_counter()
            own = fn()
            wall = time.perf_counter() - t
        seconds.append(wall if own is None else own)
    low, high, coverage = median_interval(seconds)
    return {"seconds": seconds, "median_s": statistics.median(seconds), "interval_s": [low, high],
            "interval_coverage": coverage,
            "peak_mib": max(peaks) if peaks else None, "peak_above_start_mib": max(above) if above else None}


def bench_model(source: str, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, Any]:
    m = taskvec.load(source, device=args.device, dtype=dtype)
    work = workload(m, args.prompts)
    vector = taskvec.extract_icl(m, work["pairs"], n_shots=2, batch_size=args.batch_size, progress=False)
    means = mtv_means(m, work["pairs"], n_trials=8, n_shots=2, batch_size=args.batch_size, progress=False).mean

    def mimic() -> float:
        fit = taskvec.fit_mimic(m, work["pairs"], n_shots=2, steps=args.steps, batch_size=8, progress=False)
        return fit.timings["train"]

    def lens() -> None:
        taskvec.lens(m, work["prompts"], batch_size=args.batch_size, progress=False)

    def sweep() -> None:
        taskvec.layer_sweep(m, vector, work["queries"], batch_size=args.batch_size, progress=False)

    def search() -> None:
        mtv_search(m, means, work["queries"], steps=args.steps, n_masks=8, progress=False)

    ops: dict[str, Callable[[], float | None]] = {"lens": lens, "layer_sweep": sweep, "mtv_search": search,
                                                  "mimic_train": mimic}
    out = {"name": m.name, "n_layers": m.n_layers, "d_model": m.d_model, "is_vlm": m.is_vlm}
    for name in args.ops:
        try:
            out[name] = measure(ops[name], args.repeats, args.device)
        except TaskvecError as err:  # e.g. MimIC on an architecture it cannot rebuild (Fuyu)
            out[name] = {"skipped": str(err)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", help="tiny architecture(s) to build (default: llama and llava)")
    ap.add_argument("--model", action="append", help="a model name, folder or hub id instead of tiny ones")
    ap.add_argument("--prompts", type=int, default=32, help="prompts for the lens and queries for the sweep")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="MTV search steps and MimIC training steps per call")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per operation (7: the range covers 98%%)")
    ap.add_argument("--ops", nargs="+", choices=OPERATIONS, default=list(OPERATIONS))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: check this script on a machine without a GPU (nothing is written)")
    args = ap.parse_args()

    reason = no_cuda_reason(args.device)
    if reason:
        print(reason)
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        sources = {name: name for name in args.model or []}
        if not sources:
            sources = {arch: tiny_folder(arch, Path(tmp)) for arch in (args.arch or ["llama", "llava"])}
        results: dict[str, Any] = {}
        for label, source in sources.items():
            results[label] = {}
            for d, dtype in DTYPES.items():
                results[label][d] = bench_model(source, dtype, args)  # the model is freed on return
                if args.device == "cuda":
                    torch.cuda.empty_cache()

    print(f"\n{'model':<12}{'operation':<13}{'dtype':<10}{'median s':>10}{'interval (s)':>22}{'peak MiB':>10}"
          f"{'bf16/fp32':>10}")
    for label, by_dtype in results.items():
        for op in args.ops:
            full = by_dtype["float32"].get(op, {})
            for d in DTYPES:
                r = by_dtype[d].get(op, {})
                if "median_s" not in r:
                    print(f"{label:<12}{op:<13}{d:<10}  skipped: {r.get('skipped', '')[:60]}")
                    continue
                lo, hi = r["interval_s"]
                ratio = r["median_s"] / full["median_s"] if "median_s" in full else float("nan")
                r["median_ratio_vs_float32"] = ratio
                peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "-"
                print(f"{label:<12}{op:<13}{d:<10}{r['median_s']:>10.4f}{f'[{lo:.4f}, {hi:.4f}]':>22}{peak:>10}"
                      f"{ratio:>10.2f}")
    if args.device != "cuda":
        print("(--device cpu: a check of the script; nothing written)")
        return
    write_json("bench_gpu.json", {
        "device": torch.cuda.get_device_name(), "torch_cuda": torch.version.cuda,
        "settings": {"prompts": args.prompts, "batch_size": args.batch_size, "steps": args.steps,
                     "repeats": args.repeats, "mtv_masks_per_step": 8, "n_shots": 2},
        "results": results,
        "note": "times: median of the repeats and a distribution-free interval for the median; memory: "
                "torch.cuda.max_memory_allocated during a call (tensors only)",
    })


if __name__ == "__main__":
    main()
