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

    python -m analyses.table_many_shot --quick          # one seed, 30 test queries, minutes per task
    python -m analyses.table_many_shot --no-vlm          # three seeds, 100 test queries, the CPU budgets
    python -m analyses.table_many_shot --budget reference --device cuda   # the references' budgets
    python -m analyses.table_many_shot --no-vlm --tasks country-capital food-color

Settings: --quick is one seed and 30 test queries; without it, three seeds (--seeds) and 100 test
queries. --budget sets the learned methods' budgets: ``cpu`` (the default: MTV 40 REINFORCE steps
after 40 mean-activation trials, STV 40 steps over 40 delta pairs, MimIC 40 steps, without the
consistent-delta STV row; what fits an hour on a 2-core CPU for three tasks and three seeds, text
queries) or ``reference`` (MTV 600
steps selected by the lowest held-out loss, the defaults' 100 trials; STV M = 32 clusters; MimIC
150 steps), which needs a GPU. The script prints its expected time first, from small timed fits.

Writes analyses/results/table_many_shot.csv (methods x tasks, mean over seeds, one block per query
modality), table_many_shot_long.csv (one row per seed, with times and sizes),
table_many_shot_summary.csv (n, seeds, per-seed spread and a 95% Wilson interval per cell),
table_many_shot.json and the bar figures. Partial results are stored per (model, seed, modality,
task, method) and reused unless --fresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import Store, summarise, task_key
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
    #: STV's head rankings to run: (``reduce``, row name)
    stv_variants: tuple = (("mean_norm", "STV"), ("relative", "STV (relative Δ)"), ("norm_mean", "STV (consistent Δ)"))

    @classmethod
    def make(cls, quick: bool, modality: str, budget: str = "cpu") -> "Config":
        shots_text, shots_image = ((1, 5, 10), (1, 5)) if quick or budget == "cpu" else ((1, 5, 10, 20, 29), (1, 5, 10))
        shots = shots_text if modality == "text" else shots_image
        n_test, n_sweep = (30, 12) if quick else (100, 30)
        if quick or budget == "cpu":
            cfg = cls(n_test, shots, n_sweep,
                      dict(n_trials=40, steps=40, n_masks=16, n_candidates=4),
                      dict(n_pairs=40, steps=40, n_samples=16, top_k=20, n_clusters=8),
                      dict(steps=40, batch_size=8))
            # the cpu budget leaves out the consistent-delta diagnostic so three seeds of three tasks fit an hour
            return cfg if quick else replace(cfg, stv_variants=cfg.stv_variants[:2])
        # the references' budgets: MTV 600 REINFORCE steps selected by the lowest held-out loss
        # (MultiModal-Task-Vector), STV M = 32 clusters (the paper's saturation point)
        return cls(n_test, shots, n_sweep, dict(steps=600, select="loss"), dict(n_clusters=32), dict())


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

    for reduce, name in cfg.stv_variants:
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
         "STV", "STV (relative Δ)", "STV (consistent Δ)", "MimIC"]


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """Methods (per query modality) x tasks, in the paper's task order, with the average."""
    table = long.pivot_table(index=["modality", "method"], columns="task", values="accuracy", dropna=False)
    table = table[[t for t in dict.fromkeys(long.task) if t in table.columns]]
    table["Avg."] = table.mean(axis=1)
    modalities = ["text", "image"]
    keys = sorted(table.index, key=lambda k: (modalities.index(k[0]) if k[0] in modalities else 9,
                                              ORDER.index(k[1]) if k[1] in ORDER else 99))
    return table.loc[keys]


def expected_seconds(model: taskvec.Model, task: Any, modality: str, cfg: Config, n_units: int) -> float:
    """Seconds for ``n_units`` (task, seed) units of one modality, from small timed runs on ``task``:
    each learned method fitted twice (1 and 3 steps, a small location search) gives its set-up time
    per search item and its time per step, scaled to its budget; predictions and the layer sweep
    are timed on 8 queries."""
    val, test = task.pairs("val", modality=modality), task.pairs("test", modality=modality)[:8]
    queries = [taskvec.icl_prompt([], x, label=y) for x, y in test]

    def clock(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    taskvec.predict(model, queries[:2], progress=False)  # warm-up
    per_query = clock(lambda: taskvec.predict(model, queries, progress=False)) / len(queries)
    # zero-shot, task vector, MTV, the STVs, MimIC on the test queries; the layer sweep (with its prefix pass)
    seconds = per_query * ((4 + len(cfg.stv_variants)) * cfg.n_test + cfg.n_sweep * (model.n_layers + 1))
    for k in (*cfg.shots, 5):  # k-shot ICL, and the task vector's 5-shot extraction
        if k < len(val):
            prompts = taskvec.sample_icl_prompts(val, test, n_shots=k, seed=0)
            per = clock(lambda: taskvec.predict(model, prompts, batch_size=8, progress=False)) / len(prompts)
            seconds += per * (cfg.n_test if k in cfg.shots else len(val))
    # (fit, budget, the search size and its default, the small search timed, default steps, fits per unit)
    fits = [(fit_mtv, cfg.mtv, "n_trials", 100, 4, 200, 1), (fit_stv, cfg.stv, "n_pairs", 100, 8, 200, len(cfg.stv_variants)),
            (fit_mimic, cfg.mimic, None, 0, 0, 150, 1)]
    for fit, budget, search, search_default, small, default_steps, per_unit in fits:
        extra = {search: small} if search else {}
        one, three = (clock(lambda n=n: fit(model, val, seed=0, progress=False, **{**budget, **extra, "steps": n}))
                      for n in (1, 3))
        per_step = max(three - one, 0.0) / 2
        setup = max(one - per_step, 0.0) * (budget.get(search, search_default) / small if search else 1.0)
        seconds += (setup + per_step * budget.get("steps", default_steps)) * per_unit
    return seconds * n_units


def run_modality(model: taskvec.Model, tasks: list, modality: str, args: Any, only: list | None = None) -> pd.DataFrame:
    """Every method on ``only`` (default: all ``tasks``) for each seed; the task-vector layer is
    chosen on all ``tasks`` per seed."""
    cfg = Config.make(args.quick, modality, args.budget)
    seeds = [args.seed + i for i in range(args.seeds)]
    run_tasks = only or tasks
    minutes = expected_seconds(model, run_tasks[0], modality, cfg, len(run_tasks) * len(seeds)) / 60
    print(f"[{modality}] expected time: about {minutes:.0f} min from scratch for {len(run_tasks)} tasks x "
          f"{len(seeds)} seeds ({args.budget if not args.quick else 'quick'} budgets, {cfg.n_test} test queries; "
          "from small timed fits, stored partial results are reused)", flush=True)
    frames = []
    for seed in seeds:
        st = Store(store_for(args, "many_shot") / f"{model.key}-seed{seed}" / ("" if args.quick else args.budget))
        layer = choose_layer(model, tasks, modality, cfg, seed, st)
        print(f"[{modality}] seed {seed}: task-vector layer chosen on validation: {layer}")
        for task in run_tasks:
            t = time.perf_counter()
            frames.extend(f.assign(seed=seed) for f in units(model, task, modality, cfg, seed, st, layer))
            print(f"[{modality}] seed {seed}: {task.name} done ({time.perf_counter() - t:.0f} s)", flush=True)
    return pd.concat(frames, ignore_index=True).assign(model=model.name)


def summary(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, modality, task, method): the mean over seeds, n test queries per seed,
    the seeds' standard deviation and 95% t half-width, and a 95% Wilson interval over all queries
    (:func:`taskvec.experiments.cross_modal.summarise`); a k-shot that did not fit is left out."""
    return summarise(long.dropna(subset=["accuracy"]), keys=("model", "modality", "task", "method"))


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, default_model=DEFAULT_LLM)
    ap.add_argument("--vlm", default=DEFAULT_VLM, help=f"VLM for the image-query block (default {DEFAULT_VLM})")
    ap.add_argument("--no-vlm", action="store_true", help="skip the image-query block")
    ap.add_argument("--image-tasks", nargs="+", default=None,
                    help="tasks of the image-query block (default: the same as --tasks)")
    ap.add_argument("--image-only", action="store_true",
                    help="run only the image-query block (e.g. in a second process while another runs the text "
                         "block; a later run without it reads both back from the store and writes the table)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="how many seeds, from --seed on (default: 3, or 1 with --quick)")
    ap.add_argument("--budget", choices=("cpu", "reference"), default="cpu",
                    help="the learned methods' budgets: what fits an hour on a CPU (default) or the references'")
    args = ap.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: give at least 1")
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
    summ = summary(df)
    table = wide(summ)
    seeds = sorted(df.seed.unique())
    print(f"\nMany-shot / learned task vectors ({'quick' if args.quick else 'full'} setting, "
          f"{'' if args.quick else args.budget + ' budgets, '}seeds {seeds}, mean over seeds)")
    write_table(table, "table_many_shot.csv")
    write_table(summ, "table_many_shot_summary.csv", index=False)
    df.to_csv(RESULTS / "table_many_shot_long.csv", index=False, float_format="%.4f")
    print(f"wrote {RESULTS / 'table_many_shot_long.csv'}")
    write_json("table_many_shot.json", {
        "models": sorted(df.model.unique()), "quick": args.quick, "seeds": [int(x) for x in seeds],
        "budget": None if args.quick else args.budget,
        "average": {f"{m}/{meth}": v for (m, meth), v in table["Avg."].items()},
        "config": {mod: Config.make(args.quick, mod, args.budget).__dict__ for mod in df.modality.unique()},
    })
    for modality in df.modality.unique():
        part = table.loc[modality].drop(columns="Avg.")
        save_figure(bar_figure(part, f"Task-vector methods, {modality} queries ({', '.join(df.model.unique())})"),
                    f"table_many_shot_{modality}")


if __name__ == "__main__":
    main()
