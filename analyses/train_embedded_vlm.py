"""Train the embedded VLM (gemma-3-270m-vlm) and write its shipped weights.

Five stages on CPU (see taskvec/embedded/train.py and docs/embedded-vlm.md): free class codes,
the projector and a rank-8 LoRA of Gemma-3-270m's attention learn to caption through the LM
(read); the SigLIP encoder learns to put each render on its concept's code (vision); then
projector and LoRA caption real renders (align), the LoRA and projector caption one or two
images per sequence (lora), and projector and LoRA caption renders the encoder never saw, on a
learning-rate schedule of their own (realign). Plain text and a KL term on synthetic few-shot prompts
keep the LM close to the base LLM throughout. Fixed seed; a checkpoint under the user cache lets
an interrupted run resume where it stopped (run the same command again). Writes
taskvec/embedded/weights/{vision,lm_delta}.safetensors and manifest.json, and
analyses/results/embedded_vlm_training.json (loss curves, timings).

    python analyses/train_embedded_vlm.py            # the shipped run (< 30 min on 2 idle cores)
    python analyses/train_embedded_vlm.py --fresh    # ignore the checkpoint, start over
    python analyses/train_embedded_vlm.py --quick --out /tmp/vlm-weights   # a 2-minute smoke run
    python analyses/train_embedded_vlm.py --v6       # the previous shipped recipe (1400 vision, 140 align, 100 realign steps),
    python analyses/train_embedded_vlm.py --v5       # the one before (no realign stage),
    python analyses/train_embedded_vlm.py --v4       # the one before (encoder trained in align too),
    python analyses/train_embedded_vlm.py --v3       # the one before (codes read noise-free),
    python analyses/train_embedded_vlm.py --v2       # the one before (Q:/A: captions),
    python analyses/train_embedded_vlm.py --v1       # the one before (no read stage),
    python analyses/train_embedded_vlm.py --v0       # or the first one (frozen LM in stage 2); all
        # replace the shipped weights, so measure them with eval_embedded_vlm.py, then
        # `git checkout taskvec/embedded/weights analyses/results` to get the shipped ones back
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from _common import write_json  # noqa: E402
from taskvec.cache import cache_dir  # noqa: E402
from taskvec.embedded.concepts import training_concepts  # noqa: E402
from taskvec.embedded.data import QA_CAPTION_TEMPLATES  # noqa: E402
from taskvec.embedded.train import STAGES, TrainConfig, export, train  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent.parent / "taskvec" / "embedded" / "weights"

# Earlier shipped recipes, newest first, as changes to the shipped one (``TrainConfig()``): v6 is the
# shipped (v7) recipe with its settings, v5 is v6 with its own on top, and so on back to v1 / v0, so
# every earlier recipe stays reproducible. Each becomes a flag ``--vN``: (what it was, its settings).
_V6 = dict(vision_steps=1400, align_steps=140, realign_steps=100)
_V5 = _V6 | dict(realign_steps=0, realign_renders_per_concept=0)
_V4 = _V5 | dict(align_steps=90, align_vision_lr=5e-4)
_V3 = _V4 | dict(renders_per_concept=32, read_steps=160, read_noise=0.0, align_steps=60, lora_steps=40, distill_batch=6)
_V2 = _V3 | dict(renders_per_concept=24, read_steps=140, vision_steps=1200, lora_steps=50, templates=QA_CAPTION_TEMPLATES)
EARLIER_RECIPES: dict[str, tuple[str, dict]] = {
    "v6": ("the seventh shipped weights (1400 vision, 140 align and 100 realign steps)", _V6),
    "v5": ("the sixth shipped weights (no realign stage)", _V5),
    "v4": ("the fifth shipped weights (the encoder trained in the align stage too)", _V4),
    "v3": ("the fourth shipped weights (no noise on the codes in the read stage)", _V3),
    "v2": ("the third shipped weights (40%% of captions in the Q:/A: format)", _V2),
    "v1": ("the second shipped weights (no read stage: name-anchored encoder first)",
           _V2 | dict(read_steps=0, align_steps=200, align_lr=5e-3)),
    "v0": ("the first shipped weights (frozen LM in stage 2, no distillation)",
           _V2 | dict(read_steps=0, vision_steps=2000, align_steps=200, align_batch=48, align_lr=3e-3, align_lora=False,
                      align_text_batch=4, lora_steps=100, lora_text_batch=8, distill_batch=0)),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-extra", type=int, default=150, help="other emoji besides the tasks' concepts (default 150)")
    ap.add_argument("--out", default=str(WEIGHTS), help=f"where the shipped weights go (default {WEIGHTS})")
    ap.add_argument("--work", default=None, help="checkpoint / render cache folder (default: user cache)")
    ap.add_argument("--fresh", action="store_true", help="delete the checkpoint and start over")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: all cores; on a machine shared with other jobs, 1 can be faster)")
    ap.add_argument("--quick", action="store_true", help="a few steps of each stage on 40 classes (smoke test)")
    earlier = ap.add_mutually_exclusive_group()
    for name, (about, _) in EARLIER_RECIPES.items():
        earlier.add_argument(f"--{name}", action="store_true", help=f"the recipe of {about}; docs/embedded-vlm.md")
    for stage in STAGES:
        ap.add_argument(f"--{stage}-steps", type=int, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    config = TrainConfig(seed=args.seed)
    concepts = training_concepts(args.n_extra, seed=args.seed)
    for name, (_, settings) in EARLIER_RECIPES.items():
        if getattr(args, name):
            config = replace(config, **settings)
    if args.quick:  # the recipe's stages, each a few steps long
        concepts = concepts[::len(concepts) // 40][:40]
        config = replace(config, renders_per_concept=4, read_steps=6 if config.read_steps else 0, read_batch=8, vision_steps=20,
                         vision_batch=64, align_steps=10, align_batch=8, align_text_batch=2, lora_steps=4, lora_batch=8, lora_text_batch=2,
                         realign_steps=6 if config.realign_steps else 0,
                         realign_renders_per_concept=2 if config.realign_renders_per_concept else 0)
    overrides = {f"{s}_steps": getattr(args, f"{s}_steps") for s in STAGES if getattr(args, f"{s}_steps") is not None}
    config = replace(config, **overrides)
    work = Path(args.work) if args.work else cache_dir("vlm-train", f"seed{args.seed}" + ("-quick" if args.quick else ""))
    if args.fresh and work.exists():
        shutil.rmtree(work)
    groups = {g: sum(c.group == g for c in concepts) for g in sorted({c.group for c in concepts})}
    print(f"{len(concepts)} concepts {groups}; checkpoint folder {work}", flush=True)

    result = train(concepts, config, work_dir=work)
    out = export(result, concepts, config, args.out, extra={"seed": args.seed, "n_extra": args.n_extra})
    print(f"wrote the weights to {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)")
    print(f"trainable parameters: {result.parameters}; wall time {result.seconds / 60:.1f} min, "
          f"CPU time {result.cpu_seconds / 60:.1f} min on {torch.get_num_threads()} thread(s)")

    def thin(xs: list[float], n: int = 200) -> list[float]:
        step = max(1, len(xs) // n)
        return [round(sum(xs[i:i + step]) / len(xs[i:i + step]), 4) for i in range(0, len(xs), step)]

    if args.quick:
        return
    if Path(args.out).resolve() != WEIGHTS.resolve():
        print("weights written elsewhere than the shipped folder: analyses/results/embedded_vlm_training.json left as is")
        return
    write_json("embedded_vlm_training.json", {
        "train_minutes": round(result.seconds / 60, 2),
        "train_cpu_minutes": round(result.cpu_seconds / 60, 2),
        "threads": torch.get_num_threads(),
        "trainable_parameters": result.parameters["trainable_shipped"],
        "parameters": result.parameters,
        "concepts": groups,
        "config": config.to_json(),
        "loss_curves_thinned": {k: thin(v) for k, v in result.losses.items()},
        "first_last_loss": {k: [v[0], sum(v[-20:]) / len(v[-20:])] for k, v in result.losses.items() if v},
        "code_fit_cosine": result.code_fit_cosine,
    })


if __name__ == "__main__":
    main()
