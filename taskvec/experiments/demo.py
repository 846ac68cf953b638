"""The README's first command: the main findings of the cross-modal paper on the embedded models.

``taskvec demo`` loads the embedded LLM and VLM and shows, in a few minutes on a CPU:

1. 0-shot vs 5-shot accuracy of the LLM on one task, and the logit lens's three phases
   (input, task, answer) at the query's delimiter;
2. cross-modal transfer on the VLM: text examples turned into a task vector and patched into
   image queries (Text ICL xPatch) vs the same examples in the image query's context (xBase)
   and the query alone (No Context), with the layer chosen on validation queries;
3. LLM→VLM: per-layer cosine similarity of the text-ICL task vector of the base LLM and of the
   VLM built on it.

It prints each table and writes a small HTML report with the figures.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..inputs.metric import accuracy, wilson_interval
from ..inputs.prompts import sample_icl_prompts, zero_shot
from ..interventions.run import predict
from ..methods.lens import lens
from ..models.loading import DEFAULT_MODEL, DEFAULT_VLM, load
from .cross_modal import Setting, task_vector, transfer_experiment, wide_table



def _fmt(v: float) -> str:
    return f"{v:.2f}"


def text_icl_section(model: Any, task: Any, *, n_queries: int, n_shots: int, seed: int,
                     progress: bool) -> tuple[pd.DataFrame, Any]:
    """0-shot vs few-shot accuracy and the lens phases of the few-shot prompts on one model."""
    queries = task.pairs("test")[:n_queries]
    few = sample_icl_prompts(task.pairs("val"), queries, n_shots=n_shots, seed=seed)
    zero = zero_shot(queries)
    labels = [y for _, y in queries]
    table = pd.DataFrame({
        "setting": ["0-shot (query alone)", f"{n_shots}-shot ICL"],
        "accuracy": [accuracy(predict(model, zero, progress=progress), labels),
                     accuracy(predict(model, few, progress=progress), labels)],
    })
    result = lens(model, few[:20], progress=progress)
    phases = result.phases(result.phase_categories(task), title=f"{task.name}: {n_shots}-shot text ICL ({model.name})")
    return table, phases


def cross_modal_section(vlm: Any, tasks: Any, s: Setting, *, progress: bool) -> tuple[pd.DataFrame, int]:
    """Text ICL xPatch vs xBase vs No Context on image queries over ``tasks`` (one layer chosen on
    validation for all), averaged over the tasks: accuracy, the queries behind it and a 95%
    Wilson interval over them, plus one column per task."""
    if not isinstance(tasks, (list, tuple)):
        tasks = [tasks]
    res = transfer_experiment(vlm, list(tasks), [("text", "image")], s, progress=progress)
    summary = res["summary"]
    rows = []
    for (method, spec, query), sub in summary.groupby(["method", "spec", "query"], sort=False):
        correct, n = int((sub.accuracy * sub.n).round().sum()), int(sub.n.sum())
        low, high = wilson_interval(correct, n)
        name = f"{spec} ICL {method} ({query} query)" if spec != "-" else f"No Context ({query} query)"
        rows.append(dict(setting=name, accuracy=float(sub.accuracy.mean()), n=n, ci_low=low, ci_high=high))
    table = pd.DataFrame(rows).set_index("setting").join(wide_table(summary).drop(columns="Avg."))
    return table, int(res["layers"].layer.iloc[0])


def llm_vlm_cosine(llm: Any, vlm: Any, task: Any, s: Setting) -> pd.Series:
    """Per-layer cosine of the text-ICL task vectors of the base LLM and of the VLM."""
    return pd.Series(task_vector(llm, task, "text", s).cosine(task_vector(vlm, task, "text", s)).numpy(),
                     name="cosine").rename_axis("layer")


def _cosine_figure(cos: pd.Series, llm: str, vlm: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=list(cos.index), y=list(cos.values), mode="lines+markers"))
    fig.update_layout(title=f"Cosine of text-ICL task vectors: {llm} vs {vlm}", xaxis_title="layer",
                      yaxis_title="cosine similarity", yaxis_range=[0, 1.05], template="plotly_white")
    return fig


def _bar_figure(table: pd.DataFrame, title: str) -> Any:
    """Mean accuracy per setting with its 95% interval, at a fixed height."""
    import plotly.graph_objects as go

    err = dict(type="data", symmetric=False, array=list(table.ci_high - table.accuracy),
               arrayminus=list(table.accuracy - table.ci_low))
    fig = go.Figure(go.Bar(x=list(table.index), y=list(table.accuracy), error_y=err,
                           text=[f"n={n}" for n in table.n], textposition="outside"))
    fig.update_layout(title=title, yaxis_title="accuracy (95% interval)", yaxis_range=[0, 1], template="plotly_white",
                      height=450)
    return fig


def write_report(path: Path, sections: list[tuple[str, pd.DataFrame | pd.Series | None, Any]]) -> Path:
    """An HTML page with one heading, table and plotly figure per section (plotly.js inlined once)."""
    parts = ["<html><head><meta charset='utf-8'><title>taskvec demo</title></head><body>",
             "<h1>taskvec demo</h1>"]
    first = True
    for title, table, fig in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if table is not None:
            parts.append(table.to_frame().to_html(float_format=_fmt) if isinstance(table, pd.Series)
                         else table.to_html(float_format=_fmt))
        if fig is not None:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
            first = False
    parts.append("<p><small>Images: OpenMoji, CC BY-SA 4.0.</small></p></body></html>")
    text = "\n".join(parts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        err.report_html = text  # the work is done: the caller can still save the report elsewhere
        raise
    return path


def _load_vlm(name: str) -> Any:
    """Load the demo's VLM; for the embedded one whose trained weights are not shipped in this
    checkout, say so and return ``None`` (the LLM part still runs). Any other failure raises."""
    from ..embedded.assemble import weights_dir
    from ..errors import TaskvecError

    if name == DEFAULT_VLM:
        try:
            weights_dir()
        except TaskvecError as err:
            print(f"\nThe VLM parts of the demo are skipped: {err}")
            return None
    return load(name)


def run_demo(model_name: str = DEFAULT_MODEL, task_name: str = "country-capital", *, vlm_name: str | None = DEFAULT_VLM,
             n_queries: int = 40, n_val: int = 20, n_shots: int = 5, seed: int = 0,
             out: str | Path = "taskvec-demo.html", cross_tasks: list[str] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo, print its tables and write the HTML report.

    Args:
        model_name: the LLM (default the embedded Gemma-3-270m).
        task_name: a built-in task with images (one of the paper's six).
        vlm_name: the VLM built on the LLM (default the embedded one); ``None`` skips the VLM parts.
        n_queries: test queries per setting; n_val: validation queries for the layer search.
        cross_tasks: tasks of the cross-modal part (default: the paper's six), averaged with n
            and a 95% interval.
        out: path of the HTML report.

    Returns:
        ``{"icl": DataFrame, "phases": DataFrame, "cross_modal": DataFrame, "layer": int,
        "cosine": Series, "report": Path}`` (VLM entries absent when ``vlm_name`` is None).

    Example:
        >>> run_demo(n_queries=10, out="demo.html")     # doctest: +SKIP
    """
    from ..tasks import PAPER_TASKS, get_task

    t0 = time.time()
    task = get_task(task_name)
    llm = load(model_name)
    icl, phases = text_icl_section(llm, task, n_queries=n_queries, n_shots=n_shots, seed=seed, progress=progress)
    print(f"\n{llm}\n1. {task.name}: {n_queries} test queries, demonstrations from the validation split")
    print(icl.to_string(index=False, float_format=_fmt))
    pivot = phases.df.pivot(index="layer", columns="category", values="mean")[["input", "task", "answer"]]
    print("\n   logit lens at the query's delimiter: mean probability of each token set per layer")
    print(pivot.to_string(float_format=lambda v: f"{v:.3f}"))
    out_dict: dict[str, Any] = {"icl": icl, "phases": phases.df}
    sections: list[tuple[str, Any, Any]] = [
        (f"0-shot vs {n_shots}-shot on {task.name} ({llm.name})", icl.set_index("setting"), None),
        ("The three phases (logit lens)", None, phases.figure()),
    ]
    vlm = _load_vlm(vlm_name) if vlm_name else None
    if vlm is not None:
        s = Setting(n_shots=n_shots, seeds=(seed,), seed=seed, n_val=n_val, n_test=n_queries)
        cross_tasks = [get_task(name) for name in (cross_tasks or PAPER_TASKS)]
        cross, layer = cross_modal_section(vlm, cross_tasks, s, progress=progress)
        print(f"\n{vlm}\n2. text examples -> image queries, averaged over {len(cross_tasks)} tasks (n: queries, "
              f"95% interval), layer {layer} chosen on {n_val} validation queries per task")
        print(cross.to_string(float_format=_fmt))
        cos = llm_vlm_cosine(llm, vlm, task, s)
        print(f"\n3. LLM -> VLM: cosine of the text-ICL task vectors of {llm.name} and {vlm.name} per layer")
        print(cos.to_frame().T.to_string(float_format=_fmt))
        sections += [
            (f"Cross-modal transfer: text examples, image queries ({vlm.name}, layer {layer})", cross,
             _bar_figure(cross, f"image queries, mean over {len(cross_tasks)} tasks")),
            ("LLM → VLM task-vector cosine per layer", cos, _cosine_figure(cos, llm.name, vlm.name)),
        ]
        out_dict.update(cross_modal=cross, layer=layer, cosine=cos)
    report = write_report(Path(out), sections)
    print(f"\nwrote {report}\ndone in {time.time() - t0:.0f} s")
    out_dict["report"] = report
    return out_dict
