"""Where the embedded VLM loses recognition: the encoder's separation against the reader's (projector + LM).

On the held-out augmented renders of ``eval_embedded_vlm.py`` (same seed, so the same images:
``vlm_recipe.evaluate.held_out_renders``) and the
training renders of the shipped run (re-rendered from the manifest's seed), per group:

0. *encoder, training renders*: the same for the training renders (without the training's jitter),
   so that the gap to (1) is what the encoder memorised of its render pool;
1. *encoder*: a held-out render's pooled feature is nearest (cosine) to its own concept's class
   mean (the mean feature of that concept's training renders);
2. *reader on the class mean*: the image token made from the class-mean feature (the vision
   tower's output replaced by it) is named (first token, captioning prompt ``Image:<image>Name:``);
3. *reader on the held-out mean*: the same from the mean feature of the concept's held-out renders;
4. *renders*: the held-out renders themselves are named;
5. *renders the encoder places right*: (4) restricted to the renders of (1).

If (1) is high but (2) low, the reader is what fails; if (2) is high but (4) low, the reader only
names features close to the class mean.

Prints a table; writes analyses/results/embedded_vlm_gap.json.

    python -m analyses.diagnose_embedded_vlm [--renders 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import taskvec  # noqa: E402
from analyses._common import DEFAULT_VLM, write_json  # noqa: E402
from taskvec.embedded import CAPTION_PROMPT  # noqa: E402
from taskvec.embedded.assemble import read_manifest  # noqa: E402
from taskvec.inputs.render import render_emoji  # noqa: E402
from vlm_recipe.codes import codes_as_image_features  # noqa: E402
from vlm_recipe.concepts import Concept  # noqa: E402
from vlm_recipe.data import from_uint8, render_pool  # noqa: E402
from vlm_recipe.evaluate import held_out_renders, names_concept  # noqa: E402

GROUPS = ("flags", "animals", "foods")


def pooled_features(model: taskvec.Model, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``[n, 3, H, W]`` -> ``[n, vision_hidden]``: the vision tower's output, mean over patches."""
    tower = model.hf.model.vision_tower
    with torch.no_grad():
        return torch.cat([tower(pixel_values=pixels[i:i + batch]).last_hidden_state.mean(1).float()
                          for i in range(0, len(pixels), batch)])


def nearest_mean_is_own(feats: torch.Tensor, means: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``[m, hidden]`` features -> ``[m]`` bool: the nearest (cosine) row of ``means`` ``[n, hidden]`` is ``which[i]``."""
    return (F.normalize(feats, dim=-1) @ F.normalize(means, dim=-1).T).argmax(-1) == which


def first_tokens(model: taskvec.Model, images: list, features: torch.Tensor | None = None, batch: int = 32) -> list[str]:
    """Greedy first token of the captioning prompt on each image; with ``features`` (``[n, vision_hidden]``)
    the vision tower's output for image ``i`` is replaced by ``features[i]``."""
    out = []
    for s in tqdm(range(0, len(images), batch), desc="captions", leave=False):
        prompts = taskvec.zero_shot([(im, "") for im in images[s:s + batch]], template=CAPTION_PROMPT)
        replaced = (contextlib.nullcontext() if features is None
                    else codes_as_image_features(model.hf, features[s:s + batch], torch.arange(len(prompts))))
        with replaced:  # one batch per block: the hook maps the batch's images to its rows of features
            out += taskvec.predict(model, prompts, batch_size=len(prompts), progress=False)
    return out


def named(preds: list[str], concepts: list[Concept]) -> torch.Tensor:
    return torch.tensor([names_concept(p, c) for p, c in zip(preds, concepts)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_VLM)
    ap.add_argument("--renders", type=int, default=4, help="held-out renders per concept (default 4, as the eval)")
    ap.add_argument("--seed", type=int, default=0, help="the eval's seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    vlm = taskvec.load(args.model)
    manifest = read_manifest()
    concepts = [Concept.from_json(c) for c in manifest["concepts"]]
    train = manifest["train_config"]
    pool = render_pool(concepts, train["renders_per_concept"], vlm.processor, seed=train["seed"])
    n, per = pool.shape[:2]
    train_feats = pooled_features(vlm, from_uint8(pool.flatten(0, 1))).view(n, per, -1)  # [n_concepts, per, hidden]
    means = train_feats.mean(1)  # [n_concepts, hidden]
    # the same test on the training renders themselves: the gap to the held-out row is what the encoder memorised
    train_which = torch.arange(n).repeat_interleave(per)
    train_nearest = nearest_mean_is_own(train_feats.flatten(0, 1), means, train_which)

    task = [i for i, c in enumerate(concepts) if c.group in GROUPS]
    which = torch.tensor([i for i in task for _ in range(args.renders)])
    # the eval's held-out images: it draws the task concepts' renders first, in manifest order
    images = [img for per_concept in held_out_renders([concepts[i] for i in task], args.renders, args.seed) for img in per_concept]
    held = pooled_features(vlm, vlm.processor.image_processor(images=images, return_tensors="pt")["pixel_values"])
    nearest = nearest_mean_is_own(held, means, which)

    task_concepts = [concepts[i] for i in task]
    plain = [render_emoji(c.emoji, 224) for c in task_concepts]  # any image: its features are replaced
    held_mean = held.view(len(task), args.renders, -1).mean(1)
    render_named = named(first_tokens(vlm, images), [concepts[int(i)] for i in which])
    rows = {
        "encoder, training renders: nearest class mean is its own": (train_nearest, train_which),
        "encoder: nearest class mean is its own": (nearest, which),
        "reader: class-mean feature named": (named(first_tokens(vlm, plain, means[task]), task_concepts), torch.tensor(task)),
        "reader: held-out mean feature named": (named(first_tokens(vlm, plain, held_mean), task_concepts), torch.tensor(task)),
        "held-out renders named": (render_named, which),
        "held-out renders named, where the encoder is right": (render_named[nearest], which[nearest]),
    }
    table = pd.DataFrame({
        name: {g: float(ok[torch.tensor([concepts[int(i)].group == g for i in idx])].float().mean()) for g in GROUPS}
        for name, (ok, idx) in rows.items()
    }).T
    print(f"\nWhere recognition is lost ({args.model}; first token, prompt 'Image:<image>Name:')")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    write_json("embedded_vlm_gap.json", {
        "model": args.model,
        "weights": vlm.key,
        "held_out_renders_per_concept": args.renders,
        "class_mean_from_training_renders": per,
        "table": {row: table.loc[row].to_dict() for row in table.index},
    })


if __name__ == "__main__":
    main()
