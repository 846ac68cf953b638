"""The shared layer of the analysis scripts: where results go, how to write them, the arguments
every paper-table script takes, and the pieces that several scripts compute alike (Table 3's rows,
Figure 3's lens runs). Scripts import this module (and ``analyses.benchmarks._measure``), never
one another; each runs from the repository root as ``python -m analyses.<name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

#: The repository root (the folder that holds analyses/).
ROOT = Path(__file__).resolve().parents[1]
#: Where results go: analyses/results/, or $TASKVEC_RESULTS (set by `taskvec reproduce --out-dir`).
RESULTS = Path(os.environ.get("TASKVEC_RESULTS") or Path(__file__).resolve().parent / "results")


def script_name() -> str:
    """The running script as a path from the repository root, e.g. ``analyses/table3_cross_modal.py``
    (``sys.argv[0]`` is the module's file under ``python -m analyses.<name>`` as it is under
    ``python analyses/<name>.py``)."""
    import sys

    path = Path(sys.argv[0]).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return f"analyses/{path.name}"


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``analyses/results/<name>`` with the data plus how it was produced."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    import torch

    data = dict(data)
    data.setdefault("_meta", {
        "written_by": script_name(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    })
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


def save_figure(fig: Any, stem: str) -> list[Path]:
    """Write ``<stem>.html`` and, when a static exporter is available, ``<stem>.png``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS / f"{stem}.html"]
    fig.write_html(paths[0], include_plotlyjs="cdn")
    try:
        fig.write_image(RESULTS / f"{stem}.png", width=900, height=550)
        paths.append(RESULTS / f"{stem}.png")
    except Exception as err:  # kaleido needs a Chrome; say so instead of failing the whole analysis
        print(f"PNG export skipped ({type(err).__name__}: {err}); the HTML figure was written")
    for p in paths:
        print(f"wrote {p}")
    return paths


DEFAULT_VLM = "gemma-3-270m-vlm"
DEFAULT_LLM = "gemma-3-270m"
PARTIAL = RESULTS / "_partial"


def experiment_parser(description: str, *, default_model: str = DEFAULT_VLM) -> "argparse.ArgumentParser":
    """Arguments every paper-table script shares: --model, --quick, --tasks, --seed, --fresh."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model,
                    help=f"embedded name, hub id or local folder (default {default_model}); the paper's hub ids, "
                         "e.g. HuggingFaceM4/idefics2-8b, work unchanged on a GPU machine")
    ap.add_argument("--quick", action="store_true", help="small setting that finishes in minutes on a CPU")
    ap.add_argument("--tasks", nargs="+", default=None, help="task names (default: the paper's six)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fresh", action="store_true", help="recompute this model's and setting's saved partial results instead of resuming "
                         "(other models' and settings' stay)")
    ap.add_argument("--device", default=None)
    return ap


def setting_from(args: "argparse.Namespace", **overrides: Any) -> Any:
    """The experiment setting: the paper's sizes with three seeds run one by one (the reference's
    protocol: a vector and baselines per seed, accuracies averaged, with their spread), or a small
    one-seed setting with --quick. Text test queries cover the image test queries' items
    (``paired``), so tables that set the two side by side compare the same items."""
    import taskvec

    if args.quick:
        base = dict(n_val=8, n_test=20, seeds=(args.seed,))
    else:
        base = dict(n_val=None, n_test=None, seeds=(args.seed, args.seed + 1, args.seed + 2), per_seed=True)
    base.update(seed=args.seed, batch_size=args.batch_size, paired=True)
    base.update(overrides)
    return taskvec.Setting(**base)


def expected_time(plan: "Any", models: dict, task: Any, s: Any, *, n: int = 16, what: str = "") -> float:
    """Print (and return, in seconds) how long ``plan`` will take from scratch: ``n`` prompts of
    each kind in it are timed on their model (``models``: ``{"target": vlm, "source": llm}``), built
    from ``task`` as the run builds them, and the per-prompt time is multiplied by the plan's
    counts. ``plan`` has columns ``model, prompt, forwards`` (:func:`taskvec.experiments.
    cross_modal.transfer_plan`). Stored partial results are not subtracted: a resumed run is
    faster.
    """
    import time as _time

    import taskvec
    from taskvec.experiments.cross_modal import pairs

    total, parts = 0.0, []
    for (who, kind), g in plan.groupby(["model", "prompt"], sort=False):
        model = models[who]
        form, modality = kind.split("-")
        test = pairs(task, "test", modality)[:n]
        prompts = (taskvec.zero_shot(test, s.template) if form == "query" else
                   taskvec.sample_icl_prompts(pairs(task, "val", modality), test, n_shots=s.n_shots, seed=s.seed,
                                              template=s.template))
        taskvec.predict(model, prompts[:2], batch_size=2, progress=False)  # warm-up (allocations, image processor)
        t = _time.perf_counter()
        taskvec.predict(model, prompts, batch_size=min(len(prompts), s.batch_size), progress=False)
        per = (_time.perf_counter() - t) / len(prompts)
        forwards = int(g.forwards.sum())
        total += per * forwards
        parts.append(f"{forwards} {kind} on {model.name} at {per:.2f} s")
    print(f"expected time{' of ' + what if what else ''}: about {total / 60:.0f} min from scratch ("
          + "; ".join(parts) + f"; timed on {n} prompts of {task.name}, stored partial results are reused)",
          flush=True)
    return total


def tasks_from(args: "argparse.Namespace") -> list:
    from taskvec.tasks import PAPER_TASKS, get_task

    return [get_task(n) for n in (args.tasks or PAPER_TASKS)]


def store_for(args: "argparse.Namespace", name: str) -> Path:
    """Folder of resumable partial results for one script (``_partial/<name>[-quick]``).

    Scripts keep each model and setting in a subfolder of it (``<model.key>-<setting.key()>...``).
    With ``--fresh`` nothing is deleted here: the subfolders this run opens (its model and setting)
    are cleared when they are opened and recomputed; other models' and settings' results stay.
    """
    from taskvec.experiments.store import recompute_under

    folder = PARTIAL / (name + ("-quick" if args.quick else ""))
    if getattr(args, "fresh", False):
        recompute_under(folder)
    return folder


def load_model(name: str, args: "argparse.Namespace") -> Any:
    import taskvec

    return taskvec.load(name, device=args.device)


def write_table(df: "Any", name: str, *, index: bool = True) -> Path:
    """Print a table and write it as CSV under analyses/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    df.to_csv(path, index=index, float_format="%.4f")
    print(df.to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {path}")
    return path


def bar_figure(wide: "Any", title: str) -> Any:
    """Grouped bars: one group per task, one bar per setting (rows of a wide table)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for setting, row in wide.iterrows():
        fig.add_trace(go.Bar(name=str(setting), x=list(row.index), y=list(row.values)))
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy", template="plotly_white",
                      yaxis_range=[0, 1])
    return fig


#: Table 3's (and Table 6's) example -> query modalities: the image-query settings.
IMAGE_QUERY_COMBOS = [("image", "image"), ("text", "image")]
#: Table 3's rows in the paper's order.
PAPER_ROW_ORDER = ["Random", "No Context", "Image ICL Base", "Image ICL Patch", "Text ICL xBase", "Text ICL xPatch"]


def paper_rows(summary: "Any") -> "Any":
    """Name rows as the paper does and keep the image-query settings (Tables 3 and 6)."""
    s = summary[summary["query"] == "image"].copy()
    def name(r):
        if r["method"] in ("No Context",):
            return "No Context"
        if r["method"] == "Random":
            return "Random"
        return f"{r['spec'].capitalize()} ICL {r['method']}"
    s["setting"] = s.apply(name, axis=1)
    s = s.drop_duplicates(subset=["task", "setting"])  # No Context / Random appear once per combo
    wide = s.pivot_table(index="setting", columns="task", values="accuracy")
    wide = wide.reindex([o for o in PAPER_ROW_ORDER if o in wide.index])
    wide["Avg."] = wide.mean(axis=1)
    return wide


def lens_prompts(task: Any, spec: str, s: Any, n_prompts: int) -> list:
    """Figures 3 and 4's prompts: the task's first ``n_prompts`` items (every split, in ``spec``
    modality) as queries, shared out over ``s.seeds`` in turn; each seed draws the 5-shot
    demonstrations of its queries (the query's own item excluded)."""
    import taskvec
    from taskvec.experiments.cross_modal import pairs

    items = pairs(task, "all", spec)
    queries = items[:n_prompts]
    k = len(s.seeds)
    return [p for i, seed in enumerate(s.seeds)
            for p in taskvec.sample_icl_prompts(items, queries[i::k], n_shots=s.n_shots, seed=seed)]


def lens_runs(models: list, tasks: list, s: Any, n_prompts: int) -> Any:
    """Yield (model, task, spec, LensResult) for every text/image ICL setting that applies
    (Figures 3 and 4)."""
    import taskvec

    for model in models:
        specs = ["text", "image"] if model.is_vlm else ["text"]
        for task in tasks:
            for spec in specs:
                prompts = lens_prompts(task, spec, s, n_prompts)
                yield model, task, spec, taskvec.lens(model, prompts, batch_size=s.batch_size, progress=False)
