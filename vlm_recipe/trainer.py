"""Training the embedded VLM on a CPU in up to five stages, resumable at any step: :func:`train`, then :func:`export`.

0. **read** (``read_steps > 0``, the shipped run): a free code per concept stands in for the
   encoder's output (:mod:`vlm_recipe.codes`); codes, projector and the LoRA update of
   the LM learn to caption them, with the plain-text and KL terms of stage 2; each code is read
   with noise (``read_noise``), so the LM names the neighbourhood of a code where the encoder's
   features will land, not the code alone. The LM so learns
   to read image tokens before any encoder exists, which the encoder-first recipe could not
   teach it in the CPU budget (docs/embedded-vlm.md).
1. **vision**: the SigLIP encoder learns to tell the concepts apart (a temporary classifier on
   its mean-pooled output; no language model involved, so it is cheap). After a read stage the
   classifier's class weights are the frozen codes (:class:`~vlm_recipe.codes.CodeHead`),
   so each render's feature lands on the code the LM already names; otherwise it is a
   :class:`~vlm_recipe.model.NameAnchoredHead`.
2. **align**: the projector and the encoder learn to caption through the language model:
   image → name, loss on the name tokens only. With ``align_lora`` (the shipped run) the LoRA
   update of stage 3 starts here, on captions mixed with plain text, and a KL term holds the
   tuned LM's outputs on synthetic few-shot prompts to the base LLM's
   (:mod:`vlm_recipe.distill`): without it the LM learned to name images but lost its text
   in-context learning (docs/embedded-vlm.md). Without ``align_lora`` the LM stays frozen (v0).
3. **lora**: a low-rank update of the language model's attention (plus the projector) on
   captions (one or two images per sequence) mixed with plain text sampled from the base LLM
   and the same KL term, so the VLM's LM moves only slightly away from the base LLM.
4. **realign** (``realign_steps > 0``): stage 2 once more, with a learning-rate schedule of its
   own, on renders the encoder never saw, so the projector and the LM learn how the encoder's
   features of new images spread around the ones it was trained on.

Each stage is one function of :mod:`vlm_recipe.stages`, working on a :class:`~vlm_recipe.run.Run`
(the model, the pools, the checkpointed state). All randomness comes from ``TrainConfig.seed``
through named seed streams (:class:`~vlm_recipe.seeds.SeedStreams`): the batch of step ``i`` of a
stage is drawn from its own generator, so a run resumed from a checkpoint takes the same steps as
one that never stopped. Matmuls run in bfloat16 autocast (3x faster on this CPU); trained weights stay
float32, the frozen LM's are stored in bfloat16 (the values autocast would cast them to).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from taskvec.embedded.assemble import DELTA_FILE, MANIFEST_FILE, VISION_FILE
from taskvec.embedded.spec import BASE_LLM

from .concepts import Concept
from .config import STAGES, TrainConfig, TrainResult
from .run import Run
from .stages import align_stage, lora_stage, read_stage, realign_stage, stage_one_head, vision_stage

#: Losses recorded besides each stage's caption (or classifier) loss: ``text`` and ``distill`` are
#: the lora stage's plain-text and KL terms; ``<stage>_text``, ``<stage>_distill`` the other stages'.
EXTRA_LOSSES = ("text", "align_text", "distill", "align_distill", "read_distill", "realign_text", "realign_distill")


def train(
    concepts: Sequence[Concept],
    config: TrainConfig = TrainConfig(),
    *,
    work_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    progress: bool = True,
    stages: Sequence[str] = STAGES,
    on_step: Callable[[str, int, float], None] | None = None,
) -> TrainResult:
    """Train the vision tower, projector and LM delta of the embedded VLM.

    Args:
        concepts: the classes (see :func:`vlm_recipe.concepts.training_concepts`).
        config: the recipe.
        work_dir: folder for the render pool, sampled text and the resumable checkpoint
            (``None``: keep nothing, no resume).
        base_dir: converted base LLM (default: ``taskvec.models.loading.converted_dir("gemma-3-270m")``).
        progress: show tqdm bars.
        stages: which of :data:`~vlm_recipe.config.STAGES` to run, in that order (tests run fewer).
        on_step: called as ``on_step(stage, step, loss)`` after every step.

    Returns:
        a :class:`~vlm_recipe.config.TrainResult`.

    Example:
        >>> from vlm_recipe.concepts import Concept
        >>> cs = [Concept("🐺", "wolf", "animals"), Concept("🍕", "pizza", "foods")]
        >>> r = train(cs, replace(TrainConfig(), vision_steps=2, vision_batch=4, renders_per_concept=2,
        ...           align_steps=0, lora_steps=0), progress=False)    # doctest: +SKIP
        >>> len(r.losses["vision"])                                      # doctest: +SKIP
        2
    """
    run = Run(concepts, config, work_dir=work_dir, base_dir=base_dir, progress=progress, stages=stages, on_step=on_step)
    read_stage(run)
    head = stage_one_head(run)
    vision_stage(run, head)
    align_stage(run)
    lora_stage(run)
    realign_stage(run)

    final = run.snapshot()
    run.ckpt.save(final, force=True)
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    lora = final.get("lora", {})
    parameters = {
        "vision_tower": n(run.vision),
        "projector": n(run.projector),
        "lm_delta": sum(v.numel() for v in lora.values()),
        "stage1_classifier_discarded": n(head),
    }
    parameters["trainable_shipped"] = parameters["vision_tower"] + parameters["projector"] + parameters["lm_delta"]
    return TrainResult(
        losses={s: list(run.state["losses"].get(s, [])) for s in STAGES}
        | {k: list(run.state.get(f"{k}_losses", [])) for k in EXTRA_LOSSES},
        seconds=final["seconds"],
        cpu_seconds=final["cpu_seconds"],
        parameters=parameters,
        state={"vision": final["vision"], "lora": lora},
        code_fit_cosine=final.get("code_fit_cosine"),
    )


def export(result: TrainResult, concepts: Sequence[Concept], config: TrainConfig, out_dir: str | Path,
           extra: dict[str, Any] | None = None) -> Path:
    """Write the shipped weights: ``vision.safetensors``, ``lm_delta.safetensors`` (fp16) and ``manifest.json``.

    Example:
        >>> export(result, concepts, TrainConfig(), "taskvec/embedded/weights")    # doctest: +SKIP
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in result.state["vision"].items()}, str(out / VISION_FILE))
    save_file({k: v.to(torch.float16).contiguous() for k, v in result.state["lora"].items()}, str(out / DELTA_FILE))
    manifest = {
        "name": "gemma-3-270m-vlm",
        "base": BASE_LLM,
        "spec": config.spec.to_json(),
        "train_config": config.to_json(),
        "train_minutes": round(result.seconds / 60, 2),
        "train_cpu_minutes": round(result.cpu_seconds / 60, 2),
        "torch_threads": torch.get_num_threads(),
        "parameters": result.parameters,
        "final_losses": {s: (sum(v[-20:]) / len(v[-20:]) if v else None) for s, v in result.losses.items()},
        "code_fit_cosine": result.code_fit_cosine,
        "concepts": [c.to_json() for c in concepts],
        **(extra or {}),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return out
