"""Paper Figure 3: the three phases (input, task, answer) of the last token across layers, for
text ICL and image ICL, on all six tasks.

For each task and specification, 5-shot prompts (the query's own item excluded), logit lens at
the query's delimiter, summed probability of the task's input / task / answer token sets per
layer (mean ± std over prompts). The input set is each model's own early decoding of the
delimiter (``LensResult.input_tokens``; ``--input literal`` restores the literal ``:``), written to
``fig3_input_tokens.csv``. Text ICL runs on the LLM and the VLM; image ICL on the VLM. Full
setting: 100 prompts per task and setting, their demonstrations drawn by three seeds in turn
(--quick: 20, one seed); each cell of ``fig3_phases.csv`` has its n, quartiles and a 95% interval
over prompts. The expected time is printed first.

    python -m analyses.fig3_phases [--quick] [--model VLM] [--llm LLM]
"""

from __future__ import annotations

import pandas as pd

from taskvec.methods.lens import token_ids

from analyses._common import (DEFAULT_LLM, experiment_parser, lens_prompts, lens_runs, load_model, save_figure,
                              setting_from, tasks_from, write_table)


def say_expected_time(models: list, tasks: list, s, n_prompts: int, n: int = 8) -> None:
    """Time the lens on ``n`` prompts of each model and modality, times the prompts to come."""
    import time

    import taskvec

    total, parts = 0.0, []
    for model in models:
        for spec in (["text", "image"] if model.is_vlm else ["text"]):
            prompts = lens_prompts(tasks[-1], spec, s, n)
            taskvec.lens(model, prompts[:2], batch_size=2, progress=False)  # warm-up
            t = time.perf_counter()
            taskvec.lens(model, prompts, batch_size=s.batch_size, progress=False)
            per = (time.perf_counter() - t) / len(prompts)
            total += per * n_prompts * len(tasks)
            parts.append(f"{spec} ICL on {model.name} at {per:.2f} s")
    print(f"expected time of Figure 3: about {total / 60:.0f} min ({n_prompts} prompts x {len(tasks)} tasks per "
          f"setting; " + "; ".join(parts) + ")", flush=True)


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--llm", default=DEFAULT_LLM, help="also run text ICL on this LLM ('' to skip)")
    ap.add_argument("--input", choices=("model", "literal"), default="model",
                    help="input-phase tokens: the model's own early decoding of the delimiter (default) or the literal ':'")
    args = ap.parse_args(argv)
    s = setting_from(args)
    models = [load_model(args.model, args)] + ([load_model(args.llm, args)] if args.llm else [])
    n_prompts = 20 if args.quick else 100
    tasks = tasks_from(args)
    say_expected_time(models, tasks, s, n_prompts)
    frames = []
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    runs = list(lens_runs(models, tasks, s, n_prompts))
    inputs = []
    for model, task, spec, result in runs:
        # the input phase: this model's own early decoding of the delimiter (paper: `auf` on Idefics2)
        cats = result.phase_categories(task, input=args.input)
        ph = result.phases(cats)
        frames.append(ph.df.assign(model=model.name, task=task.name, spec=f"{spec} ICL"))
        ids = token_ids(model.tokenizer, cats["input"])
        inputs.append(dict(model=model.name, task=task.name, spec=f"{spec} ICL", input=args.input,
                           tokens=" | ".join(repr(model.tokenizer.decode([i])) for i in ids), ids=" ".join(map(str, ids))))
    write_table(pd.DataFrame(inputs), "fig3_input_tokens.csv")
    df = pd.concat(frames, ignore_index=True)
    # columns p_input / p_task / p_answer: a bare "task" column would collide with the task name
    write_table(df.pivot_table(index=["model", "spec", "task", "layer"], columns="category", values="mean").add_prefix("p_"),
                "fig3_phases.csv")
    write_table(df.set_index(["model", "spec", "task", "layer", "category"]), "fig3_phases_long.csv")
    colors = {"input": "#1f77b4", "task": "#d62728", "answer": "#2ca02c"}
    for (model_name, spec), sub in df.groupby(["model", "spec"]):
        names = list(dict.fromkeys(sub.task))
        fig = make_subplots(rows=2, cols=3, subplot_titles=names)
        for i, name in enumerate(names):
            t = sub[sub.task == name]
            for cat, c in t.groupby("category", sort=False):
                fig.add_trace(go.Scatter(x=c.layer, y=c["mean"], name=cat, line=dict(color=colors.get(cat)),
                                         error_y=dict(type="data", array=c["q75"] - c["mean"],
                                                      arrayminus=c["mean"] - c["q25"], thickness=0.5),
                                         showlegend=i == 0), row=i // 3 + 1, col=i % 3 + 1)
        fig.update_layout(title=f"Three phases, {spec} ({model_name})", template="plotly_white", height=650)
        fig.update_yaxes(range=[0, 1])
        save_figure(fig, f"fig3_phases_{model_name.replace('/', '_')}_{spec.split()[0]}")


if __name__ == "__main__":
    main()
