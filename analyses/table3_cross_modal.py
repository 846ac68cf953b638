"""Paper Table 3: cross-modal transfer on image queries, all baselines, six tasks.

Rows: Random (majority label among the examples), No Context, Image ICL Base, Image ICL Patch,
Text ICL xBase, Text ICL xPatch. Layers chosen on the validation split (mean over tasks),
accuracy on the test split.

    python analyses/table3_cross_modal.py            # embedded VLM, paper sizes
    python analyses/table3_cross_modal.py --quick    # a few minutes on a CPU
    python analyses/table3_cross_modal.py --model HuggingFaceM4/idefics2-8b --device cuda
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import taskvec  # noqa: E402
from _common import RESULTS, bar_figure, experiment_parser, load_model, save_figure, setting_from, store_for, tasks_from, write_json, write_table  # noqa: E402

COMBOS = [("image", "image"), ("text", "image")]
ORDER = ["Random", "No Context", "Image ICL Base", "Image ICL Patch", "Text ICL xBase", "Text ICL xPatch"]


def paper_rows(summary):
    """Name rows as the paper does and keep the image-query settings."""
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
    wide = wide.reindex([o for o in ORDER if o in wide.index])
    wide["Avg."] = wide.mean(axis=1)
    return wide


def main(argv=None) -> None:
    args = experiment_parser(__doc__).parse_args(argv)
    model = load_model(args.model, args)
    tasks = tasks_from(args)
    s = setting_from(args)
    res = taskvec.transfer_experiment(model, tasks, COMBOS, s, store=store_for(args, "transfer"))
    wide = paper_rows(res["summary"])
    print(f"\nTable 3 on {model.name} ({'quick' if args.quick else 'paper'} setting); layers: "
          + ", ".join(f"{r.spec}->{r.query}: {r.layer}" for r in res["layers"].itertuples()))
    write_table(wide, "table3_cross_modal.csv")
    res["summary"].to_csv(RESULTS / "table3_cross_modal_long.csv", index=False)
    write_json("table3_cross_modal.json", {"model": model.name, "quick": args.quick,
                                           "layers": res["layers"].to_dict("records"),
                                           "average": wide["Avg."].to_dict()})
    save_figure(bar_figure(wide.drop(columns="Avg."), f"Cross-modal transfer to image queries ({model.name})"),
                "table3_cross_modal")


if __name__ == "__main__":
    main()
