"""Paper Table 2: top-5 decodings of the mean task vector at the middle layer, text and image ICL.

    python -m analyses.table2_task_vector_decodings [--quick] [--model VLM] [--layer L]
"""

from __future__ import annotations

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import pairs
from analyses._common import experiment_parser, load_model, setting_from, tasks_from, write_table


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    args = ap.parse_args(argv)
    model = load_model(args.model, args)
    s = setting_from(args)
    layer = model.n_layers // 2 if args.layer is None else model.check_layer(args.layer)
    specs = ["text", "image"] if model.is_vlm else ["text"]
    rows = []
    for task in tasks_from(args):
        row = {"task": task.name}
        for spec in specs:
            v = taskvec.extract_icl(model, pairs(task, "val", spec, s.n_val), task=task.name, n_shots=s.n_shots,
                                    seeds=s.seeds, progress=False)
            top = taskvec.decode(model, v.vectors, layer=layer, top_k=5)
            row[f"{spec} ICL"] = ", ".join(t.strip() or "◇" for t in top.token)
        rows.append(row)
    print(f"\nTop-5 decodings of the mean task vector at layer {layer} of {model.name} (◇ = non-word token)")
    write_table(pd.DataFrame(rows).set_index("task"), "table2_task_vector_decodings.csv")


if __name__ == "__main__":
    main()
