"""Paper Table 8: task-vector patching in all four example→query modality combinations.

    python -m analyses.table8_all_modalities [--quick] [--model ID]
"""

from __future__ import annotations

import taskvec
from analyses._common import bar_figure, experiment_parser, load_model, save_figure, setting_from, store_for, tasks_from, write_table

COMBOS = [("image", "image"), ("text", "image"), ("text", "text"), ("image", "text")]


def main(argv=None) -> None:
    args = experiment_parser(__doc__).parse_args(argv)
    model = load_model(args.model, args)
    res = taskvec.transfer_experiment(model, tasks_from(args), COMBOS, setting_from(args),
                                      store=store_for(args, "transfer"))
    s = res["summary"]
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
