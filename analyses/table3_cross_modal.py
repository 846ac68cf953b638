"""Paper Table 3: cross-modal transfer on image queries, all baselines, six tasks.

Rows: Random (majority label among the examples), No Context, Image ICL Base, Image ICL Patch,
Text ICL xBase, Text ICL xPatch. Layers chosen on the validation split (mean over tasks),
accuracy on the test split. Full setting: three seeds run one by one, mean with the per-seed
spread and a 95% Wilson interval (table3_cross_modal_long.csv); the expected time is printed first.

    python -m analyses.table3_cross_modal            # embedded VLM, paper sizes
    python -m analyses.table3_cross_modal --quick    # a few minutes on a CPU
    python -m analyses.table3_cross_modal --model HuggingFaceM4/idefics2-8b --device cuda
"""

from __future__ import annotations

import taskvec
from taskvec.experiments.cross_modal import transfer_plan
from analyses._common import (IMAGE_QUERY_COMBOS, RESULTS, bar_figure, expected_time, experiment_parser, load_model,
                              paper_rows, save_figure, setting_from, store_for, tasks_from, write_json, write_table)

def main(argv=None) -> None:
    args = experiment_parser(__doc__).parse_args(argv)
    model = load_model(args.model, args)
    tasks = tasks_from(args)
    s = setting_from(args)
    expected_time(transfer_plan(model, tasks, IMAGE_QUERY_COMBOS, s), {"target": model}, tasks[-1], s, what="Table 3")
    res = taskvec.transfer_experiment(model, tasks, IMAGE_QUERY_COMBOS, s, store=store_for(args, "transfer"))
    wide = paper_rows(res["summary"])
    print(f"\nTable 3 on {model.name} ({'quick' if args.quick else 'paper'} setting); layers: "
          + ", ".join(f"{r.spec}->{r.query}: {r.layer}" for r in res["layers"].itertuples()))
    write_table(wide, "table3_cross_modal.csv")
    res["summary"].to_csv(RESULTS / "table3_cross_modal_long.csv", index=False)
    res["per_seed"].to_csv(RESULTS / "table3_cross_modal_per_seed.csv", index=False)
    write_json("table3_cross_modal.json", {"model": model.name, "quick": args.quick,
                                           "layers": res["layers"].to_dict("records"),
                                           "average": wide["Avg."].to_dict()})
    save_figure(bar_figure(wide.drop(columns="Avg."), f"Cross-modal transfer to image queries ({model.name})"),
                "table3_cross_modal")


if __name__ == "__main__":
    main()
