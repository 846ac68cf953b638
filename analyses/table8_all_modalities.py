"""Paper Table 8: task-vector patching in all four example→query modality combinations.

Full setting: every validation and test item, three seeds run one by one (mean over seeds, with
the per-seed spread and a 95% Wilson interval over all queries, table8_all_modalities_long.csv);
text test queries on the items the image test queries cover. The script prints its expected time
first. It shares its partial results with Table 3 (the image-query combinations).

    python -m analyses.table8_all_modalities [--quick] [--model ID]
"""

from __future__ import annotations

import taskvec
from taskvec.experiments.cross_modal import transfer_plan
from analyses._common import (RESULTS, bar_figure, expected_time, experiment_parser, load_model, save_figure, setting_from,
                              store_for, tasks_from, write_table)

COMBOS = [("image", "image"), ("text", "image"), ("text", "text"), ("image", "text")]


def main(argv=None) -> None:
    args = experiment_parser(__doc__).parse_args(argv)
    model = load_model(args.model, args)
    tasks, setting = tasks_from(args), setting_from(args)
    expected_time(transfer_plan(model, tasks, COMBOS, setting), {"target": model}, tasks[-1], setting, what="Table 8")
    res = taskvec.transfer_experiment(model, tasks, COMBOS, setting, store=store_for(args, "transfer"))
    s = res["summary"]
    s.to_csv(RESULTS / "table8_all_modalities_long.csv", index=False, float_format="%.4f")
    res["per_seed"].to_csv(RESULTS / "table8_all_modalities_per_seed.csv", index=False, float_format="%.4f")
    s = s[s.method.isin(["Patch", "xPatch"])].copy()
    s["setting"] = s.apply(lambda r: f"{r['spec'].capitalize()} - {r['query'].capitalize()} {r['method']}", axis=1)
    wide = s.pivot_table(index="setting", columns="task", values="accuracy")
    wide = wide.reindex([f"{a.capitalize()} - {b.capitalize()} {'Patch' if a == b else 'xPatch'}" for a, b in COMBOS])
    wide["Avg."] = wide.mean(axis=1)
    print(f"\nTable 8 on {model.name}; layers: "
          + ", ".join(f"{r.spec}->{r.query}: {r.layer}" for r in res["layers"].itertuples()))
    write_table(wide, "table8_all_modalities.csv")
    save_figure(bar_figure(wide.drop(columns="Avg."), f"All modality combinations ({model.name})"),
                "table8_all_modalities")


if __name__ == "__main__":
    main()
