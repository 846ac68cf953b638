"""Paper Table 2: top-5 decodings of a mean hidden state at the middle layer, text and image ICL.

Which hidden state (``--object``):

- ``query`` (default, the paper's: "the token representation at a middle layer ... averaged
  across runs", the lens's position): the residual at the *query's* delimiter of each 5-shot
  prompt, averaged over the prompts;
- ``task-vector``: the task vector itself, the residual at the *last demonstration's* delimiter
  averaged over the prompts (what is patched; taskvec's earlier Table 2).

The CSV says which object and how many prompts were averaged.

    python -m analyses.table2_task_vector_decodings [--quick] [--model VLM] [--layer L] [--object query|task-vector]
"""

from __future__ import annotations

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import pairs
from taskvec.sites.collect import read_residuals
from analyses._common import experiment_parser, load_model, setting_from, tasks_from, write_table


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--object", default="query", choices=["query", "task-vector"],
                    help="decode the mean query-delimiter state (paper) or the task vector (last demo's delimiter)")
    args = ap.parse_args(argv)
    model = load_model(args.model, args)
    s = setting_from(args)
    layer = model.n_layers // 2 if args.layer is None else model.check_layer(args.layer)
    specs = ["text", "image"] if model.is_vlm else ["text"]
    rows = []
    for task in tasks_from(args):
        row = {"task": task.name}
        for spec in specs:
            val = pairs(task, "val", spec, s.n_val)
            prompts = [p for seed in s.seeds for p in taskvec.sample_icl_prompts(val, val, n_shots=s.n_shots, seed=seed)]
            at = "query" if args.object == "query" else "last_demo"
            mean, _ = read_residuals(model, prompts, at=at, batch_size=s.batch_size, progress=False)
            top = taskvec.decode(model, mean, layer=layer, top_k=5)
            row[f"{spec} ICL"] = ", ".join(t.strip() or "◇" for t in top.token)
            row[f"{spec} n_prompts"] = len(prompts)
        row["object"] = args.object
        rows.append(row)
    what = "query-delimiter state" if args.object == "query" else "task vector (last demonstration's delimiter)"
    print(f"\nTop-5 decodings of the mean {what} at layer {layer} of {model.name} (◇ = non-word token)")
    write_table(pd.DataFrame(rows).set_index("task"), "table2_task_vector_decodings.csv")


if __name__ == "__main__":
    main()
