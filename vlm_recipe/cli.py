"""Train the embedded VLM (gemma-3-270m-vlm) and write its shipped weights.

Five stages on CPU (see vlm_recipe/trainer.py and docs/embedded-vlm.md): free class codes,
the projector and a rank-8 LoRA of Gemma-3-270m's attention learn to caption through the LM
(read); the SigLIP encoder learns to put each render on its concept's code (vision); then
projector and LoRA caption real renders (align), the LoRA and projector caption one or two
images per sequence (lora), and projector and LoRA caption renders the encoder never saw, on a
learning-rate schedule of their own (realign). Plain text and a KL term on synthetic few-shot prompts
keep the LM close to the base LLM throughout. Fixed seed; a checkpoint under the user cache lets
an interrupted run resume where it stopped (run the same command again). Writes
taskvec/embedded/weights/{vision,lm_delta}.safetensors and manifest.json, and
analyses/results/embedded_vlm_training.json (loss curves, timings).

Run from the repository root:

    python -m vlm_recipe                  # the shipped run, TrainConfig() = recipe v7 (< 30 min on 2 idle cores)
    python -m vlm_recipe --fresh          # ignore the checkpoint, start over
    python -m vlm_recipe --quick --out /tmp/vlm-weights   # every stage, a few steps each (a smoke run)
    python -m vlm_recipe --recipe v6      # replay an earlier shipped recipe, recorded in vlm_recipe/recipes/
    python -m vlm_recipe --recipe my.json # or any recipe file (a shipped manifest.json too)

The recorded recipes (v0 ... v7, each the full TrainConfig of one shipped version of the weights;
docs/embedded-vlm.md tells their history) all write over the shipped weights by default, so
measure them with `python -m analyses.eval_embedded_vlm`, then
`git checkout taskvec/embedded/weights analyses/results` to get the shipped ones back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from taskvec.cache import cache_dir

from .concepts import Concept, training_concepts
from .config import RECIPES, STAGES, TrainConfig, load_recipe, recipe_names
from .trainer import export, train

#: The shipped weights' folder in this checkout.
WEIGHTS = Path(__file__).resolve().parents[1] / "taskvec" / "embedded" / "weights"


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    ap = argparse.ArgumentParser(prog="python -m vlm_recipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=None,
                    help=f"a recorded recipe ({', '.join(recipe_names())}; in {RECIPES.name}/) or a recipe JSON file "
                         "(default: TrainConfig(), the shipped run, which is the newest recipe)")
    ap.add_argument("--seed", type=int, default=None, help="the run's seed (default: the recipe's, 0)")
    ap.add_argument("--n-extra", type=int, default=150, help="other emoji besides the tasks' concepts (default 150)")
    ap.add_argument("--out", default=str(WEIGHTS), help=f"where the shipped weights go (default {WEIGHTS})")
    ap.add_argument("--work", default=None, help="checkpoint / render cache folder (default: user cache)")
    ap.add_argument("--fresh", action="store_true", help="delete the checkpoint and start over")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: all cores; on a machine shared with other jobs, 1 can be faster)")
    ap.add_argument("--quick", action="store_true", help="a few steps of each stage on 40 classes (smoke test)")
    for stage in STAGES:
        ap.add_argument(f"--{stage}-steps", type=int, default=None)
    return ap


def quick(config: TrainConfig) -> TrainConfig:
    """``--quick``: the recipe's stages, each a few steps long (a stage the recipe lacks stays out)."""
    return replace(config, renders_per_concept=4, read_steps=6 if config.read_steps else 0, read_batch=8, vision_steps=20,
                   vision_batch=64, align_steps=10, align_batch=8, align_text_batch=2, lora_steps=4, lora_batch=8,
                   lora_text_batch=2, realign_steps=6 if config.realign_steps else 0,
                   realign_renders_per_concept=2 if config.realign_renders_per_concept else 0)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's :class:`TrainConfig`: the recipe, at ``--seed``, shortened by ``--quick``, with any ``--<stage>-steps``."""
    config = load_recipe(args.recipe) if args.recipe else TrainConfig()
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.quick:
        config = quick(config)
    overrides = {f"{s}_steps": getattr(args, f"{s}_steps") for s in STAGES if getattr(args, f"{s}_steps") is not None}
    return replace(config, **overrides)


def concepts_from_args(args: argparse.Namespace, seed: int) -> list[Concept]:
    """The classes: the tasks' concepts and ``--n-extra`` other emoji (40 of them all with ``--quick``)."""
    concepts = training_concepts(args.n_extra, seed=seed)
    if args.quick:
        concepts = concepts[::len(concepts) // 40][:40]
    return concepts


def _thin(xs: list[float], n: int = 200) -> list[float]:
    step = max(1, len(xs) // n)
    return [round(sum(xs[i:i + step]) / len(xs[i:i + step]), 4) for i in range(0, len(xs), step)]


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    config = config_from_args(args)
    concepts = concepts_from_args(args, config.seed)
    work = Path(args.work) if args.work else cache_dir("vlm-train", f"seed{config.seed}" + ("-quick" if args.quick else ""))
    if args.fresh and work.exists():
        shutil.rmtree(work)
    groups = {g: sum(c.group == g for c in concepts) for g in sorted({c.group for c in concepts})}
    print(f"recipe {args.recipe or 'TrainConfig()'}; {len(concepts)} concepts {groups}; checkpoint folder {work}", flush=True)

    result = train(concepts, config, work_dir=work)
    out = export(result, concepts, config, args.out, extra={"seed": config.seed, "n_extra": args.n_extra})
    print(f"wrote the weights to {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)")
    print(f"trainable parameters: {result.parameters}; wall time {result.seconds / 60:.1f} min, "
          f"CPU time {result.cpu_seconds / 60:.1f} min on {torch.get_num_threads()} thread(s)")
    if args.quick:
        print("final losses (mean of the last 20 steps): " + json.dumps(
            {k: round(sum(v[-20:]) / len(v[-20:]), 4) for k, v in result.losses.items() if v}))
        return
    if Path(args.out).resolve() != WEIGHTS.resolve():
        print("weights written elsewhere than the shipped folder: analyses/results/embedded_vlm_training.json left as is")
        return
    from analyses._common import write_json  # the results folder of the analyses (this runs from the repository root)

    write_json("embedded_vlm_training.json", {
        "train_minutes": round(result.seconds / 60, 2),
        "train_cpu_minutes": round(result.cpu_seconds / 60, 2),
        "threads": torch.get_num_threads(),
        "trainable_parameters": result.parameters["trainable_shipped"],
        "parameters": result.parameters,
        "concepts": groups,
        "config": config.to_json(),
        "loss_curves_thinned": {k: _thin(v) for k, v in result.losses.items()},
        "first_last_loss": {k: [v[0], sum(v[-20:]) / len(v[-20:])] for k, v in result.losses.items() if v},
        "code_fit_cosine": result.code_fit_cosine,
    })


if __name__ == "__main__":
    main()
