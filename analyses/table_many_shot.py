"""One comparison of the many-shot and learned task-vector methods on the same model and tasks.

Rows: Zero-shot, k-shot ICL (several k, up to what fits), the cross-modal paper's task vector
(5-shot ICL vector patched at one layer chosen on validation), MTV, STV (the activation delta of
docs/design.md §4: mean over pairs of ‖Δ‖₂), STV with each head's delta relative to its own
output scale ("relative Δ", mean over pairs of ‖Δ‖₂ / ‖A_query‖₂), STV with the norm of the mean
delta ("consistent Δ", query-specific changes cancel), MimIC (MLP outputs aligned, as the
reference). Every method learns from the task's validation pairs and
is scored on the test split (greedy first token, the paper's metric).

Text queries run on --model (default gemma-3-270m). Image queries run on --vlm (default
gemma-3-270m-vlm) when it loads; otherwise the script says so and skips them.

    python -m analyses.table_many_shot --quick          # minutes per task on a CPU
    python -m analyses.table_many_shot                  # the full setting
    python -m analyses.table_many_shot --no-vlm --tasks country-capital food-color

Writes analyses/results/table_many_shot.csv (methods x tasks, one block per query modality),
table_many_shot_long.csv (with times and sizes), table_many_shot.json and the bar figures.
Partial results are stored per (model, modality, task, method) and reused unless --fresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import Store, task_key
from taskvec.methods.mimic import fit_mimic
from taskvec.methods.mtv import fit_mtv
from taskvec.methods.stv import fit_stv
from taskvec.tasks import get_task
from analyses._common import (DEFAULT_LLM, DEFAULT_VLM, RESULTS, bar_figure, experiment_parser, save_figure, store_for,
                     tasks_from, write_json, write_table)


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the full setting, or --quick)."""

    n_test: int
    shots: tuple[int, ...]
    n_sweep: int          # validation queries of the task-vector layer sweep
    mtv: dict
    stv: dict
    mimic: dict

    @classmethod
    def make(cls, quick: bool, modality: str) -> "Config":
        if quick:
            shots = (1, 5, 10) if modality == "text" else (1, 5)
            return cls(30, shots, 12,
                       dict(n_trials=40, steps=40, n_masks=16, n_candidates=4),
                       dict(n_pairs=40, steps=40, n_samples=16, top_k=20, n_clusters=8),
                       dict(steps=40, batch_size=8))
        shots = (1, 5, 10, 20, 29) if modality == "text" else (1, 5, 10)
        # the full setting uses the references' budgets: MTV 600 REINFORCE steps selected by the lowest
        # held-out loss (MultiModal-Task-Vector), STV M = 32 clusters (the paper's saturation point)
        return cls(100, shots, 30, dict(steps=600, select="loss"), dict(n_clusters=32), dict())


def score(preds: list[str], labels: list[str]) -> float:
    return taskvec.accuracy(preds, labels)


def row(task: str, modality: str, method: str, acc: float, n: int, seconds: float, **extra: Any) -> pd.DataFrame:
    return pd.DataFrame([dict(task=task, modality=modality, method=method, accuracy=acc, n=n,
                              seconds=round(seconds, 1), **extra)])


def units(model: taskvec.Model, task: Any, modality: str, cfg: Config, seed: int, st: Store, layer: int) -> list[pd.DataFrame]:
    """Every method on one task; each unit is stored on its own so a run resumes."""
    val = task.pairs("val", modality=modality)
    test = task.pairs("test", modality=modality)[: cfg.n_test]
    queries = [taskvec.icl_prompt([], x, label=y) for x, y in test]
    labels = [y for _, y in test]
    key = f"{modality}-{task_key(task)}"  # the task's content decides its results
    out = []

    def timed(fn):
        t = time.perf_counter()
        res = fn()
        return res, time.perf_counter() - t

    def zero():
        preds, s = timed(lambda: taskvec.predict(model, queries, progress=False))
        return row(task.name, modality, "Zero-shot", score(preds, labels), len(labels), s)

    out.append(st.get_or_run(f"{key}-zero", zero))
    for k in cfg.shots:
        if k >= len(val):
            continue

        def icl(k=k):
            prompts = taskvec.sample_icl_prompts(val, test, n_shots=k, seed=seed)
            longest = max(model.encode([p]).input_ids.shape[1] for p in prompts[:3])
            limit = model.max_length or 10**9
            if longest > limit:
                print(f"  {k}-shot prompts ({longest} tokens) do not fit {model.name}'s context of {limit}: skipped")
                return row(task.name, modality, f"ICL {k}-shot", float("nan"), 0, 0.0)
            preds, s = timed(lambda: taskvec.predict(model, prompts, batch_size=8, progress=False))
            return row(task.name, modality, f"ICL {k}-shot", score(preds, labels), len(labels), s, tokens=longest)

        out.append(st.get_or_run(f"{key}-icl{k}", icl))

    def task_vector():
        vec, s = timed(lambda: taskvec.extract_icl(model, val, task=task.name, n_shots=5, seeds=(seed,), progress=False))
        preds = taskvec.patch_predict(model, vec, queries, layer, progress=False)
        return row(task.name, modality, "Task vector", score(preds, labels), len(labels), s, layer=layer)

    out.append(st.get_or_run(f"{key}-tv-L{layer}", task_vector))

    def mtv():
        fit, s = timed(lambda: fit_mtv(model, val, seed=seed, task=task.name, progress=False, **cfg.mtv))
        preds = fit.intervention.predict(model, queries, progress=False)
        h = fit.history
        return row(task.name, modality, "MTV", score(preds, labels), len(labels), s, heads=fit.intervention.n_selected,
                   loss_start=h.task_loss.iloc[:10].mean(), loss_end=h.task_loss.iloc[-10:].mean(),
                   search_seconds=round(fit.timings["location_search"], 1))

    out.append(st.get_or_run(f"{key}-mtv", mtv))

    for reduce, name in (("mean_norm", "STV"), ("relative", "STV (relative Δ)"), ("norm_mean", "STV (consistent Δ)")):
        def stv(reduce=reduce, name=name):
            fit, s = timed(lambda: fit_stv(model, val, seed=seed, task=task.name, reduce=reduce, progress=False, **cfg.stv))
            preds = fit.intervention.predict(model, queries, progress=False)
            h = fit.history
            return row(task.name, modality, name, score(preds, labels), len(labels), s, heads=fit.intervention.n_selected,
                       loss_start=h.task_loss.iloc[:10].mean(), loss_end=h.task_loss.iloc[-10:].mean(),
                       search_seconds=round(fit.timings["location_search"], 1))

        out.append(st.get_or_run(f"{key}-stv-{reduce}", stv))

    def mimic():
        (mim, hist), s = timed(lambda: fit_mimic(model, val, seed=seed, task=task.name, progress=False, **cfg.mimic))
        preds = mim.predict(model, queries, progress=False)
        return row(task.name, modality, "MimIC", score(preds, labels), len(labels), s, parameters=mim.n_parameters,
                   loss_start=hist.loss.iloc[:5].mean(), loss_end=hist.loss.iloc[-5:].mean())

    out.append(st.get_or_run(f"{key}-mimic", mimic))
    return out


def choose_layer(model: taskvec.Model, tasks: list, modality: str, cfg: Config, seed: int, st: Store) -> int:
    """The paper's protocol: one layer for all tasks, best mean validation accuracy."""
    sweeps = []
    for task in tasks:
        def sweep(task=task):
            val = task.pairs("val", modality=modality)
            vec = taskvec.extract_icl(model, val, task=task.name, n_shots=5, seeds=(seed,), progress=False)
            qs = [taskvec.icl_prompt([], x, label=y) for x, y in val[: cfg.n_sweep]]
            return taskvec.layer_sweep(model, vec, qs, progress=False).assign(task=task.name)

        sweeps.append(st.get_or_run(f"{modality}-{task_key(task)}-tv-sweep", sweep))
    return taskvec.best_layer(pd.concat(sweeps))


ORDER = ["Zero-shot", "ICL 1-shot", "ICL 5-shot", "ICL 10-shot", "ICL 20-shot", "ICL 29-shot", "Task vector", "MTV",
         "STV", "STV (consistent Δ)", "MimIC"]


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """Methods (per query modality) x tasks, in the paper's task order, with the average."""
    table = long.pivot_table(index=["modality", "method"], columns="task", values="accuracy", dropna=False)
    table = table[[t for t in dict.fromkeys(long.task) if t in table.columns]]
    table["Avg."] = table.mean(axis=1)
    modalities = ["text", "image"]
    keys = sorted(table.index, key=lambda k: (modalities.index(k[0]) if k[0] in modalities else 9,
                                              ORDER.index(k[1]) if k[1] in ORDER else 99))
    return table.loc[keys]


def run_modality(model: taskvec.Model, tasks: list, modality: str, args: Any, only: list | None = None) -> pd.DataFrame:
    """Every method on ``only`` (default: all ``tasks``); the task-vector layer is chosen on all ``tasks``."""
    cfg = Config.make(args.quick, modality)
    st = Store(store_for(args, "many_shot") / f"{model.key}-seed{args.seed}")
    layer = choose_layer(model, tasks, modality, cfg, args.seed, st)
    print(f"[{modality}] task-vector layer chosen on validation: {layer}")
    frames = []
    for task in only or tasks:
        t = time.perf_counter()
        frames.extend(units(model, task, modality, cfg, args.seed, st, layer))
        print(f"[{modality}] {task.name} done ({time.perf_counter() - t:.0f} s)")
    return pd.concat(frames, ignore_index=True).assign(model=model.name)


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, default_model=DEFAULT_LLM)
    ap.add_argument("--vlm", default=DEFAULT_VLM, help=f"VLM for the image-query block (default {DEFAULT_VLM})")
    ap.add_argument("--no-vlm", action="store_true", help="skip the image-query block")
    ap.add_argument("--image-tasks", nargs="+", default=None,
                    help="tasks of the image-query block (default: the same as --tasks)")
    ap.add_argument("--image-only", action="store_true",
                    help="run only the image-query block (e.g. in a second process while another runs the text "
                         "block; a later run without it reads both back from the store and writes the table)")
    args = ap.parse_args(argv)
    if args.image_only and args.no_vlm:
        ap.error("--image-only and --no-vlm exclude each other")
    tasks = tasks_from(args)
    long = []
    if not args.image_only:
        model = taskvec.load(args.model, device=args.device)
        long.append(run_modality(model, tasks, "text", args))
    if args.no_vlm:
        print("image queries skipped (--no-vlm)")
    else:
        try:
            vlm = taskvec.load(args.vlm, device=args.device)
        except Exception as err:  # the embedded VLM may not be built on this machine
            vlm = None
            print(f"image queries skipped: could not load the VLM {args.vlm!r} ({type(err).__name__}: {err})")
        if vlm is None and args.image_only:
            raise SystemExit(f"--image-only needs the VLM {args.vlm!r}, which did not load (see above)")
        if vlm is not None:
            only = None if args.image_tasks is None else [get_task(n) for n in args.image_tasks]
            long.append(run_modality(vlm, tasks, "image", args, only))
    if args.image_only:
        print("image block stored; run the script again without --image-only to write the table")
        return
    df = pd.concat(long, ignore_index=True)
    table = wide(df)
    print(f"\nMany-shot / learned task vectors ({'quick' if args.quick else 'full'} setting, seed {args.seed})")
    write_table(table, "table_many_shot.csv")
    df.to_csv(RESULTS / "table_many_shot_long.csv", index=False, float_format="%.4f")
    print(f"wrote {RESULTS / 'table_many_shot_long.csv'}")
    write_json("table_many_shot.json", {
        "models": sorted(df.model.unique()), "quick": args.quick, "seed": args.seed,
        "average": {f"{m}/{meth}": v for (m, meth), v in table["Avg."].items()},
        "config": {mod: Config.make(args.quick, mod).__dict__ for mod in df.modality.unique()},
    })
    for modality in df.modality.unique():
        part = table.loc[modality].drop(columns="Avg.")
        save_figure(bar_figure(part, f"Task-vector methods, {modality} queries ({', '.join(df.model.unique())})"),
                    f"table_many_shot_{modality}")


if __name__ == "__main__":
    main()
