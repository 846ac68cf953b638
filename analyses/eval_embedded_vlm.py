"""Measure the embedded VLM (gemma-3-270m-vlm): recognition, zero-shot and 5-shot image ICL, LLM-vs-VLM cosine.

1. Recognition: greedy caption of held-out augmented renders (a seed the training never used)
   and of the plain renders the tasks use, with the captioning prompt ``Image:<image>Name:``
   (``taskvec.embedded.CAPTION_PROMPT``, the first caption format of the training).
   *exact*: the generated text up to the first newline equals the concept's name (or one of
   its aliases: another task's name for the same emoji, or the name of a pixel-identical flag);
   *first token*: taskvec's paper metric (greedy first token, prefix match) against the name.
2. The six tasks on image queries (test split): zero-shot (query alone) and 5-shot image ICL
   (demonstrations drawn from the validation split), plus 5-shot text ICL on the VLM and on the
   base LLM for reference. Paper metric (first token, prefix match, case-sensitive). On image
   queries, also how often the answer is the query image's *name* instead (what a VLM trained on
   ``Q:<image>\\nA:{name}`` captions does on every image prompt).
3. The image token against word embeddings: its cosine with its own name's mean input embedding
   and with the other names' (a copy of a word embedding would be near 1).
4. Per-layer cosine similarity between the base LLM's and the VLM's residual streams on the same
   text ICL prompts (at the last demonstration's delimiter, where task vectors are read).

Prints tables; writes analyses/results/embedded_vlm.json.

    python -m analyses.eval_embedded_vlm [--quick] [--renders 4]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import taskvec  # noqa: E402
from analyses._common import DEFAULT_LLM, DEFAULT_VLM, write_json  # noqa: E402
from taskvec.embedded import CAPTION_PROMPT  # noqa: E402
from taskvec.embedded.assemble import read_manifest  # noqa: E402
from taskvec.inputs.render import render_emoji  # noqa: E402
from taskvec.tasks import PAPER_TASKS, get_task  # noqa: E402
from vlm_recipe.concepts import Concept  # noqa: E402
from vlm_recipe.evaluate import held_out_renders, names_concept  # noqa: E402
from vlm_recipe.model import name_embeddings  # noqa: E402


def caption(model: taskvec.Model, images: list, *, max_new_tokens: int = 8, batch_size: int = 32) -> tuple[list[str], list[str]]:
    """Greedy caption of each image with the prompt ``Image:<image>Name:``, cut at the first newline,
    and the first generated token alone (the paper's prediction)."""
    out, first = [], []
    prompts = taskvec.zero_shot([(img, "") for img in images], template=CAPTION_PROMPT)
    for start in tqdm(range(0, len(prompts), batch_size), desc="captions"):
        batch = model.encode(prompts[start:start + batch_size])
        with torch.no_grad():
            ids = model.hf.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)
        new = ids[:, batch.input_ids.shape[1]:]
        out += [t.split("\n")[0].strip() for t in model.tokenizer.batch_decode(new, skip_special_tokens=True)]
        first += [model.tokenizer.decode([int(t)]) for t in new[:, 0]]
    return out, first


def recognition(model: taskvec.Model, concepts: list[Concept], renders: int, seed: int) -> pd.DataFrame:
    rows, images = [], []
    for c, held in zip(concepts, held_out_renders(concepts, renders, seed)):
        images += held
        rows += [(c, "held-out augmented")] * len(held)
        images.append(render_emoji(c.emoji, 224))
        rows.append((c, "plain (task image)"))
    preds, first = caption(model, images)
    return pd.DataFrame([
        {"group": c.group, "concept": c.caption, "render": kind, "prediction": p,
         "exact": p in (c.caption, *c.aliases), "first_token": names_concept(f, c)}
        for (c, kind), p, f in zip(rows, preds, first)
    ])


def image_token_vs_names(model: taskvec.Model, concepts: list[Concept]) -> dict[str, float]:
    """Is the image token a copy of its name's word embedding? Cosine of each plain render's
    projected image token with its own name's mean input embedding, with the other names', and
    how often the nearest name embedding (by cosine) is its own."""
    tok, hf = model.tokenizer, model.hf
    pix = model.processor.image_processor(images=[render_emoji(c.emoji, 224) for c in concepts], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        img = torch.cat([hf.model.get_image_features(pixel_values=pix[i:i + 64]).pooler_output[:, 0].float()
                         for i in range(0, len(pix), 64)])
    names = name_embeddings(hf, tok, [c.caption for c in concepts])
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(names, dim=-1).T
    off = ~torch.eye(len(concepts), dtype=torch.bool)
    return {"own_name": float(cos.diag().mean()), "other_names": float(cos[off].mean()),
            "nearest_name_is_own": float((cos.argmax(-1) == torch.arange(len(concepts))).float().mean()),
            "image_token_norm": float(img.norm(dim=-1).mean()), "name_embedding_norm": float(names.norm(dim=-1).mean()),
            "n_concepts": len(concepts)}


def task_scores(model: taskvec.Model, task, modality: str, n_shots: int, seed: int, limit: int | None) -> tuple[float, float]:
    """Accuracy on the test split, and how often the prediction is the query's own name instead
    (the item's text input, e.g. ``France`` for the flag of France; NaN on text queries)."""
    test = task.pairs("test", modality=modality)[:limit]
    if n_shots:
        prompts = taskvec.sample_icl_prompts(task.pairs("val", modality=modality), test, n_shots=n_shots, seed=seed)
    else:
        prompts = taskvec.zero_shot(test)
    preds = taskvec.predict(model, prompts, batch_size=16, progress=False)
    named = float("nan")
    if modality == "image":
        names = [x for x, _ in task.pairs("test", "text", emoji_only=True)[:limit]]
        assert len(names) == len(preds), "text and image queries must cover the same items"
        named = taskvec.accuracy(preds, names)
    return taskvec.accuracy(preds, [p.label for p in prompts]), named


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_VLM)
    ap.add_argument("--llm", default=DEFAULT_LLM)
    ap.add_argument("--renders", type=int, default=4, help="held-out augmented renders per concept (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20 concepts per group, 20 queries per task")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    limit = 20 if args.quick else None

    vlm = taskvec.load(args.model)
    manifest = read_manifest()
    concepts = [Concept.from_json(c) for c in manifest["concepts"]]
    task_groups = ("flags", "animals", "foods")
    evaluated = [c for c in concepts if c.group in task_groups]
    others = [c for c in concepts if c.group == "other"]
    if args.quick:
        evaluated = [c for g in task_groups for c in [c for c in evaluated if c.group == g][:20]]
        others = others[:20]
    else:
        others = others[::3]

    # 1. recognition --------------------------------------------------------------------------
    rec = recognition(vlm, evaluated + others, args.renders, args.seed)
    table = rec.groupby(["group", "render"])[["exact", "first_token"]].mean().unstack("render")
    print("\nRecognition (Image:<image>Name: -> the concept's name)")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    held = rec[rec.render == "held-out augmented"]
    recognition_accuracy = {g: float(held[held.group == g].exact.mean()) for g in task_groups}
    wrong = held[~held.exact].groupby("group").apply(lambda d: list(zip(d.concept, d.prediction))[:8], include_groups=False)

    copy = image_token_vs_names(vlm, evaluated)
    print(f"\nImage token vs name embeddings (plain renders, {copy['n_concepts']} concepts): cosine with its own name "
          f"{copy['own_name']:.3f}, with other names {copy['other_names']:.3f}; nearest name is its own for "
          f"{copy['nearest_name_is_own']:.0%}")

    # 2. tasks: zero-shot and 5-shot ------------------------------------------------------------
    llm = taskvec.load(args.llm)
    rows = []
    for name in tqdm(PAPER_TASKS, desc="tasks"):
        task = get_task(name)
        zero, zero_named = task_scores(vlm, task, "image", 0, args.seed, limit)
        icl, icl_named = task_scores(vlm, task, "image", 5, args.seed, limit)
        rows.append({
            "task": name,
            "image zero-shot": zero,
            "image 5-shot ICL": icl,
            "text 5-shot ICL (VLM)": task_scores(vlm, task, "text", 5, args.seed, limit)[0],
            "text 5-shot ICL (base LLM)": task_scores(llm, task, "text", 5, args.seed, limit)[0],
            "image zero-shot: names the image": zero_named,
            "image 5-shot ICL: names the image": icl_named,
        })
    tasks = pd.DataFrame(rows).set_index("task")
    tasks.loc["mean"] = tasks.mean()
    print("\nThe six tasks (test split, first-token prefix match)")
    print(tasks.to_string(float_format=lambda v: f"{v:.2f}"))

    # 3. LLM vs VLM residual cosine on the same text ICL prompts --------------------------------
    prompts = [p for name in PAPER_TASKS for p in taskvec.sample_icl_prompts(
        get_task(name).pairs("val"), get_task(name).pairs("val")[: (8 if args.quick else 30)], n_shots=5, seed=args.seed)]
    _, r_llm = taskvec.read_residuals(llm, prompts, keep=True, progress=True)
    _, r_vlm = taskvec.read_residuals(vlm, prompts, keep=True, progress=True)
    per_prompt = torch.nn.functional.cosine_similarity(r_llm, r_vlm, dim=-1)  # [n_prompts, n_layers]
    mean_vec = torch.nn.functional.cosine_similarity(r_llm.mean(0), r_vlm.mean(0), dim=-1)
    cos = pd.DataFrame({"mean cosine per prompt": per_prompt.mean(0).numpy(), "min over prompts": per_prompt.min(0).values.numpy(),
                        "cosine of mean (task vector)": mean_vec.numpy()})
    cos.index.name = "layer"
    print("\nBase LLM vs VLM, residual at the last demonstration's delimiter, same text ICL prompts")
    print(cos.to_string(float_format=lambda v: f"{v:.4f}"))

    write_json("embedded_vlm.json", {
        "model": args.model,
        "recognition_accuracy": recognition_accuracy,
        "recognition_metric": "exact name (or alias) of the greedy caption of held-out augmented renders, prompt 'Image:<image>Name:'",
        "recognition_table": {f"{g}|{r}|{m}": float(v) for (g, r), row in rec.groupby(["group", "render"])[["exact", "first_token"]].mean().iterrows() for m, v in row.items()},
        "recognition_counts": {g: int((held.group == g).sum()) for g in held.group.unique()},
        "image_token_vs_name_embeddings": copy,
        "recognition_errors_sample": {g: [list(x) for x in v] for g, v in wrong.items()},
        "train_minutes": manifest["train_minutes"],
        "trainable_parameters": manifest["parameters"]["trainable_shipped"],
        "parameters": manifest["parameters"],
        "tasks": {t: row.to_dict() for t, row in tasks.iterrows()},
        "llm_vlm_cosine_per_layer": cos.to_dict(orient="list"),
        "n_cosine_prompts": len(prompts),
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
