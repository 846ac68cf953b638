"""Activation-delta heatmaps (STV's "where"), one per task: ‖A(context + query) − A(query)‖₂ per
(layer, head) at the query's last token, averaged over query/context pairs of the validation split.

The top-K heads (STV's insertion sites) are outlined. The same pairs are also reduced the other
way (norm of the mean delta, the shift that is consistent across pairs), shown as a second row of
panels.

    python -m analyses.fig_delta_heatmap --quick                 # 40 pairs per task
    python -m analyses.fig_delta_heatmap --model gemma-3-270m    # 100 pairs per task

Writes analyses/results/fig_delta_heatmap.{html,png} (all tasks), fig_delta_heatmap_<task>.html
and fig_delta_heatmap.csv (task, reduce, layer, head, delta).
"""

from __future__ import annotations

import pandas as pd

import taskvec
from taskvec.methods.deltas import top_heads
from analyses._common import DEFAULT_LLM, RESULTS, experiment_parser, save_figure, tasks_from, write_json

REDUCES = {"mean_norm": "mean ‖Δ‖₂", "norm_mean": "‖mean Δ‖₂"}


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, default_model=DEFAULT_LLM)
    ap.add_argument("--modality", choices=("text", "image"), default="text")
    ap.add_argument("--top-k", type=int, default=20, help="heads outlined (STV's K; default 20 of Gemma-3-270m's 72)")
    args = ap.parse_args(argv)
    from plotly.subplots import make_subplots

    model = taskvec.load(args.model, device=args.device)
    tasks = tasks_from(args)
    n_pairs = 40 if args.quick else 100
    frames, per_task = [], {}
    for task in tasks:
        d = taskvec.activation_deltas(model, task.pairs("val", modality=args.modality), n_pairs=n_pairs,
                                      seed=args.seed, batch_size=args.batch_size, progress=False)
        per_task[task.name] = {r: d.reduced(r) for r in REDUCES}
        for r, dr in per_task[task.name].items():
            long = dr.frame().stack().rename("delta").reset_index()
            frames.append(long.assign(task=task.name, reduce=r))
            _, fig = taskvec.delta_heatmap(dr, top_k=args.top_k,
                                           title=f"{task.name}: activation deltas ({REDUCES[r]}, {model.name})")
            if r == "mean_norm":
                save_figure(fig, f"fig_delta_heatmap_{task.name}")
        layers = sorted({layer for layer, _ in top_heads(d.delta, args.top_k).nonzero().tolist()})
        print(f"{task.name}: the top-{args.top_k} heads by mean ‖Δ‖₂ lie in layers {layers}")
    table = pd.concat(frames, ignore_index=True)[["task", "reduce", "layer", "head", "delta"]]
    table.to_csv(RESULTS / "fig_delta_heatmap.csv", index=False, float_format="%.4f")
    print(f"wrote {RESULTS / 'fig_delta_heatmap.csv'}")

    fig = make_subplots(rows=2, cols=len(tasks), subplot_titles=[t.name for t in tasks] + [""] * len(tasks),
                        shared_yaxes=True, horizontal_spacing=0.02, vertical_spacing=0.08)
    for j, task in enumerate(tasks):
        for i, r in enumerate(REDUCES):
            frame, sub = taskvec.delta_heatmap(per_task[task.name][r])
            trace = sub.data[0]
            trace.update(coloraxis=f"coloraxis{i + 1}" if i else "coloraxis")
            fig.add_trace(trace, row=i + 1, col=j + 1)
    fig.update_layout(title=f"Activation deltas per head ({model.name}; top row: mean ‖Δ‖₂, bottom: ‖mean Δ‖₂)",
                      template="plotly_white", height=900, width=max(900, 170 * len(tasks)),
                      coloraxis=dict(colorscale="Viridis", colorbar=dict(title="mean ‖Δ‖", y=0.78, len=0.45)),
                      coloraxis2=dict(colorscale="Viridis", colorbar=dict(title="‖mean Δ‖", y=0.22, len=0.45)))
    fig.update_yaxes(title_text="layer", col=1)
    save_figure(fig, "fig_delta_heatmap")
    write_json("fig_delta_heatmap.json", {
        "model": model.name, "quick": args.quick, "n_pairs": n_pairs, "modality": args.modality,
        "top_layer_by_task": {t: int(v["mean_norm"].delta.max(1).values.argmax()) for t, v in per_task.items()},
    })


if __name__ == "__main__":
    main()
