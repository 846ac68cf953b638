"""Shared by the analysis scripts: where results go, and how to write them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

#: Where results go: analyses/results/, or $TASKVEC_RESULTS (set by `taskvec reproduce --out-dir`).
RESULTS = Path(os.environ.get("TASKVEC_RESULTS") or Path(__file__).resolve().parent / "results")


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``analyses/results/<name>`` with the data plus how it was produced."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    import torch

    data = dict(data)
    data.setdefault("_meta", {
        "written_by": f"analyses/{Path(__import__('sys').argv[0]).name}",
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
    import argparse

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model,
                    help=f"embedded name, hub id or local folder (default {default_model}); the paper's hub ids, "
                         "e.g. HuggingFaceM4/idefics2-8b, work unchanged on a GPU machine")
    ap.add_argument("--quick", action="store_true", help="small setting that finishes in minutes on a CPU")
    ap.add_argument("--tasks", nargs="+", default=None, help="task names (default: the paper's six)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fresh", action="store_true", help="ignore saved partial results instead of resuming")
    ap.add_argument("--device", default=None)
    return ap


def setting_from(args: "argparse.Namespace", **overrides: Any) -> Any:
    """The experiment setting: the paper's sizes, or a small one with --quick."""
    import taskvec

    if args.quick:
        base = dict(n_val=8, n_test=20, seeds=(args.seed,))
    else:
        base = dict(n_val=None, n_test=None, seeds=(args.seed, args.seed + 1, args.seed + 2))
    base.update(seed=args.seed, batch_size=args.batch_size)
    base.update(overrides)
    return taskvec.Setting(**base)


def tasks_from(args: "argparse.Namespace") -> list:
    from taskvec.tasks import PAPER_TASKS, get_task

    return [get_task(n) for n in (args.tasks or PAPER_TASKS)]


def store_for(args: "argparse.Namespace", name: str) -> Path:
    """Folder of resumable partial results for one script (wiped with --fresh)."""
    import shutil

    folder = PARTIAL / (name + ("-quick" if args.quick else ""))
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
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
