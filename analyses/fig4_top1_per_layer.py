"""Paper Figure 4: top-1 decodings of the last token per layer across ICL prompts (the paper's
pie charts, drawn as stacked bars), text ICL and image ICL, all six tasks.

    python -m analyses.fig4_top1_per_layer [--quick] [--model VLM] [--llm LLM]
"""

from __future__ import annotations

import pandas as pd

from analyses._common import RESULTS, DEFAULT_LLM, experiment_parser, lens_runs, load_model, save_figure, setting_from, tasks_from, write_table


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--llm", default=DEFAULT_LLM, help="also run text ICL on this LLM ('' to skip)")
    args = ap.parse_args(argv)
    s = setting_from(args)
    models = [load_model(args.model, args)] + ([load_model(args.llm, args)] if args.llm else [])
    n_prompts = 20 if args.quick else 100
    rows = []
    for model, task, spec, result in lens_runs(models, tasks_from(args), s, n_prompts):
        top = result.top1()
        shares = top.groupby("layer")["token"].value_counts(normalize=True).rename("share").reset_index()
        rows.append(shares.assign(model=model.name, task=task.name, spec=f"{spec} ICL",
                                  n_prompts=top["prompt"].nunique()))
        save_figure(result.figure_top1_distribution().update_layout(
            title=f"Top-1 decoding per layer: {task.name}, {spec} ICL ({model.name})"),
            f"fig4_top1_{model.name.replace('/', '_')}_{task.name}_{spec}")
    df = pd.concat(rows, ignore_index=True)
    df.to_csv(RESULTS / "fig4_top1_per_layer.csv", index=False)
    most = df.sort_values("share", ascending=False).groupby(["model", "spec", "task", "layer"]).head(1)
    most = most.assign(token=most.token.map(repr)).set_index(["model", "spec", "task", "layer"])
    from taskvec.inputs.metric import wilson_interval

    ci = [wilson_interval(round(sh * n), int(n)) for sh, n in zip(most.share, most.n_prompts)]
    most = most.assign(ci_low=[c[0] for c in ci], ci_high=[c[1] for c in ci])
    write_table(most[["token", "share", "n_prompts", "ci_low", "ci_high"]], "fig4_most_common_top1.csv")


if __name__ == "__main__":
    main()
