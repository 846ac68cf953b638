"""Paper Appendix A.4: t-SNE of task vectors from text ICL, image ICL and instructions, all tasks.

One point per ICL prompt (and one per instruction), colour = task, marker = specification,
at an early, a middle and a late layer; figA_tsne_neighbours.csv says how often a point's nearest
neighbour (of each specification) in the map is of its own task.

    python -m analyses.figA_tsne [--quick] [--model ID] [--layers 2 9 15]
"""

from __future__ import annotations

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import pairs
from analyses._common import RESULTS, experiment_parser, load_model, save_figure, setting_from, tasks_from, write_table


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--layers", nargs="+", type=int, default=None)
    args = ap.parse_args(argv)
    model = load_model(args.model, args)
    s = setting_from(args)
    specs = ["text", "image"] if model.is_vlm else ["text"]
    vectors = []
    for task in tasks_from(args):
        for spec in specs:
            vectors.append(taskvec.extract_icl(model, pairs(task, "val", spec, s.n_val), task=task.name,
                                               n_shots=s.n_shots, seeds=s.seeds, keep=True, progress=False))
        vectors.append(taskvec.extract_instruction(model, task.instruction, task=task.name))
    n = model.n_layers
    layers = args.layers or [n // 6, n // 2, (5 * n) // 6]
    frames, near = [], {}
    for layer in layers:
        r = taskvec.tsne(vectors, layer, seed=args.seed)
        frames.append(r.df.assign(layer=layer))
        near[layer] = r.neighbours()
        save_figure(r.figure(), f"figA_tsne_layer{layer}")
    points = pd.concat(frames, ignore_index=True)
    counts = points.groupby(["layer", "spec"]).size().unstack("spec")
    print(f"\nt-SNE points per layer and specification ({model.name})")
    write_table(counts, "figA_tsne_counts.csv")
    print(f"\nShare of each specification's points whose nearest point of a specification (columns) is "
          f"of the same task, in the map (chance ~1/{points.task.nunique()})")
    write_table(pd.concat(near, names=["layer"]).round(3), "figA_tsne_neighbours.csv")
    points.to_csv(RESULTS / "figA_tsne.csv", index=False)


if __name__ == "__main__":
    main()
