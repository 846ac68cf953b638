"""Paper Tables 4 and 7: task vectors from the base LLM patched into the VLM built on it.

For each task: text-ICL vectors from the LLM and from the VLM on the same prompts, their
per-layer cosine similarity, the random-pair baseline (cosine between VLM vectors of different
tasks), and test accuracy on image queries of VLM-VLM xPatch and LLM-VLM xPatch, each at its own
validation-chosen layer and, so the gap is not a layer change, LLM-VLM xPatch also at the VLM-VLM
layer (the reference patches both at the VLM's one pinned layer). Every accuracy comes with n, the
number of seeds, their spread and a 95% Wilson interval (table7_llm_to_vlm_intervals.csv). Full
setting: three seeds run one by one; the VLM-VLM runs share Table 3's and Table 8's partial
results. The expected time is printed first.

    python -m analyses.table4_llm_to_vlm [--quick] [--model VLM] [--llm LLM]
    python -m analyses.table4_llm_to_vlm --model HuggingFaceM4/idefics2-8b --llm mistralai/Mistral-7B-v0.1
"""

from __future__ import annotations

import itertools

import pandas as pd

import taskvec
from taskvec.experiments.cross_modal import queries, score, summarise, task_vector, transfer_plan, zero_shot
from analyses._common import (DEFAULT_LLM, bar_figure, expected_time, experiment_parser, load_model, save_figure,
                              setting_from, store_for, tasks_from, write_json, write_table)


def main(argv=None) -> None:
    ap = experiment_parser(__doc__)
    ap.add_argument("--llm", default=DEFAULT_LLM, help=f"base LLM of the VLM (default {DEFAULT_LLM})")
    args = ap.parse_args(argv)
    vlm, llm = load_model(args.model, args), load_model(args.llm, args)
    tasks, s = tasks_from(args), setting_from(args)
    store = store_for(args, "transfer")
    combos = [("text", "image")]
    plan = pd.concat([transfer_plan(vlm, tasks, combos, s), transfer_plan(vlm, tasks, combos, s, source=llm)])
    # beyond the two experiments: pooled vectors of both models (cosines), the LLM's vectors again
    # per seed and their test queries at the VLM-VLM layer
    n_val = sum(min(s.n_val or 10**9, len(t.select("val"))) for t in tasks) * len(s.seeds)
    n_test = sum(min(s.n_test or 10**9, len(t.select("test", "image"))) for t in tasks) * len(s.runs())
    extra = pd.DataFrame([dict(model="target", prompt="icl-text", forwards=n_val),
                          dict(model="source", prompt="icl-text", forwards=2 * n_val),
                          dict(model="target", prompt="query-image", forwards=n_test)])
    expected_time(pd.concat([plan, extra]), {"target": vlm, "source": llm}, tasks[-1], s, what="Tables 4 and 7")
    own = taskvec.transfer_experiment(vlm, tasks, combos, s, store=store)
    cross = taskvec.transfer_experiment(vlm, tasks, combos, s, store=store, source=llm)

    vv = {t.name: task_vector(vlm, t, "text", s) for t in tasks}
    lv = {t.name: task_vector(llm, t, "text", s) for t in tasks}
    cos = pd.DataFrame({t: lv[t].cosine(vv[t]).numpy() for t in vv})  # rows = layers
    cos.index.name = "layer"
    pairs = list(itertools.permutations(vv, 2))
    random_cos = pd.Series({layer: sum(float(vv[a].cosine(vv[b])[layer]) for a, b in pairs) / max(len(pairs), 1)
                            for layer in range(vlm.n_layers)}, name="random pairs")
    layer_vv = int(own["layers"].layer.iloc[0])
    layer_lv = int(cross["layers"].layer.iloc[0])

    common = []  # LLM-VLM xPatch at the VLM-VLM layer, on the same test queries, per seed as the runs above
    for t in tasks:
        qs = zero_shot(queries(t, "test", "image", s), s.template)
        for seed, rs in s.runs():
            vec = lv[t.name] if seed == "pooled" else task_vector(llm, t, "text", rs)
            preds = taskvec.patch_predict(vlm, vec, qs, layer_vv, batch_size=s.batch_size, allow_transfer=True,
                                          progress=False)
            c = score(qs, preds, rs)
            common.append(dict(task=t.name, method="LLM-VLM xPatch at the VLM-VLM layer", spec="text", query="image",
                               accuracy=sum(c) / len(c), n=len(c), correct=sum(c), layer=layer_vv, seed=str(seed)))
    common_runs = pd.DataFrame(common)
    common = summarise(common_runs)
    rows = {"VLM-VLM xPatch": own["summary"].query("method == 'xPatch'").set_index("task").accuracy,
            "LLM-VLM xPatch": cross["summary"].query("method == 'xPatch'").set_index("task").accuracy,
            f"LLM-VLM xPatch at the VLM-VLM layer {layer_vv}": common.set_index("task").accuracy}
    table7 = pd.DataFrame(rows).T
    intervals = pd.concat([own["summary"].query("method == 'xPatch'").assign(method="VLM-VLM xPatch", layer=layer_vv),
                           cross["summary"].query("method == 'xPatch'").assign(method="LLM-VLM xPatch", layer=layer_lv),
                           common], ignore_index=True)[["task", "method", "layer", "accuracy", "n", "n_seeds", "seed_sd",
                                                       "ci_low", "ci_high"]]
    per_seed = pd.concat([own["per_seed"].query("method == 'xPatch'").assign(method="VLM-VLM xPatch"),
                          cross["per_seed"].query("method == 'xPatch'").assign(method="LLM-VLM xPatch"), common_runs],
                         ignore_index=True)
    table7["Avg."] = table7.mean(axis=1)
    mean_cos_at = float(cos.loc[layer_lv].mean())
    table4 = pd.DataFrame({"cosine sim.": [None, mean_cos_at, float(random_cos[layer_lv])],
                           "avg. accuracy": [table7.loc["VLM-VLM xPatch", "Avg."], table7.loc["LLM-VLM xPatch", "Avg."],
                                             None]},
                          index=["VLM-VLM xPatch", "LLM-VLM xPatch", "Random pairs"])
    print(f"\nTable 4: {llm.name} -> {vlm.name}; layers VLM-VLM {layer_vv}, LLM-VLM {layer_lv}")
    write_table(table4, "table4_llm_to_vlm.csv")
    print("\nTable 7 (per task)")
    write_table(table7, "table7_llm_to_vlm_per_task.csv")
    write_table(intervals, "table7_llm_to_vlm_intervals.csv", index=False)
    write_table(per_seed, "table7_llm_to_vlm_per_seed.csv", index=False)
    write_table(cos.assign(**{"random pairs": random_cos}), "table4_cosine_per_layer.csv")
    write_json("table4_llm_to_vlm.json", {"llm": llm.name, "vlm": vlm.name, "layer_vlm_vlm": layer_vv,
                                          "layer_llm_vlm": layer_lv, "mean_cosine_at_layer": mean_cos_at,
                                          "random_pair_cosine_at_layer": float(random_cos[layer_lv]),
                                          "accuracy": table7["Avg."].to_dict(),
                                          "n_test_per_task": intervals.groupby("task").n.first().to_dict()})
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in cos.columns:
        fig.add_trace(go.Scatter(x=cos.index, y=cos[t], name=t, mode="lines"))
    fig.add_trace(go.Scatter(x=random_cos.index, y=random_cos, name="random pairs", line=dict(dash="dot", color="black")))
    fig.update_layout(title=f"Cosine similarity of text-ICL task vectors, {llm.name} vs {vlm.name}",
                      xaxis_title="layer", yaxis_title="cosine", template="plotly_white")
    save_figure(fig, "table4_cosine_per_layer")
    save_figure(bar_figure(table7.drop(columns="Avg."), "LLM→VLM transfer, image queries"), "table7_llm_to_vlm")


if __name__ == "__main__":
    main()
