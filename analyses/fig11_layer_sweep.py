"""Paper Figure 11: validation accuracy per layer per task for text-ICL xPatch on image queries,
with the Text ICL xBase accuracy as a dotted reference line. Reuses Table 3's saved sweeps.
fig11_layer_sweep_long.csv has each cell's n (validation queries per seed), seeds and a 95%
Wilson interval over all of them.

    python -m analyses.fig11_layer_sweep [--quick] [--model ID] [--spec text --query image]
"""

from __future__ import annotations

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import baselines
from analyses._common import experiment_parser, load_model, save_figure, setting_from, store_for, tasks_from, write_table


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--spec", default="text", choices=["text", "image"])
    ap.add_argument("--query", default="image", choices=["text", "image"])
    args = ap.parse_args(argv)
    model = load_model(args.model, args)
    tasks, s = tasks_from(args), setting_from(args)
    res = taskvec.transfer_experiment(model, tasks, [(args.spec, args.query)], s, store=store_for(args, "transfer"))
    curve = res["sweep"].groupby(["task", "layer"]).correct.mean().unstack("task")
    curve["mean"] = curve.mean(axis=1)
    base = {t.name: float(baselines(model, t, args.spec, args.query, s, split="val")
                          .query("method in ['Base', 'xBase']").accuracy.iloc[0]) for t in tasks}
    print(f"\nvalidation accuracy per layer, {args.spec} ICL -> {args.query} queries ({model.name}); "
          f"chosen layer {int(res['layers'].layer.iloc[0])}")
    write_table(curve, "fig11_layer_sweep.csv")
    from taskvec.inputs.metric import wilson_interval

    sweep = res["sweep"]
    long = []
    for (task, layer), g in sweep.groupby(["task", "layer"]):
        low, high = wilson_interval(int(g.correct.sum()), len(g))
        seeds = int(g.seed.nunique()) if "seed" in g else 1
        long.append(dict(task=task, layer=layer, accuracy=g.correct.mean(), n=len(g) // seeds, n_seeds=seeds,
                         ci_low=low, ci_high=high))
    write_table(pd.DataFrame(long), "fig11_layer_sweep_long.csv", index=False)

    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    names = [t.name for t in tasks]
    cols = 3
    fig = make_subplots(rows=(len(names) + cols - 1) // cols, cols=cols, subplot_titles=names)
    for i, name in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=curve.index, y=curve[name], mode="lines+markers", name=name, showlegend=False),
                      row=r, col=c)
        fig.add_hline(y=base[name], line_dash="dot", line_color="gray", row=r, col=c)
    fig.update_layout(title=f"Validation accuracy by layer: {args.spec} ICL xPatch on {args.query} queries "
                            f"(dotted: {'Base' if args.spec == args.query else 'xBase'})",
                      template="plotly_white", height=300 * ((len(names) + cols - 1) // cols))
    fig.update_yaxes(range=[0, 1])
    save_figure(fig, "fig11_layer_sweep")


if __name__ == "__main__":
    main()
