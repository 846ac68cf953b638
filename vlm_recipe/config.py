"""A training run's recipe (:class:`TrainConfig`), what a run produces (:class:`TrainResult`), and
the recorded recipes of every shipped version of the weights (``recipes/v0.json`` ... ``v7.json``).

A recipe is data: each file of ``recipes/`` holds the full :class:`TrainConfig` of one shipped
version (``"config"``), and :func:`load_recipe` turns it back into the very ``TrainConfig`` that
version was trained with (``python -m vlm_recipe --recipe v6`` replays it). The files were written
from the ``--v0`` ... ``--v6`` flags of the training script they replace, so they hold what those
flags gave (``tests/unit/test_vlm_recipes.py`` checks it against a record of the old flags).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from taskvec.embedded.spec import VLMSpec
from taskvec.errors import TaskvecError

from .concepts import Concept
from .data import CAPTION_TEMPLATES

#: The stages of a run, in the order they run (a checkpoint stores the index of the current one;
#: ``len(STAGES)``: the run is done).
STAGES = ("read", "vision", "align", "lora", "realign")
#: Knobs added after weights had shipped, with the value every run before them had.
LATER_KNOBS: dict[str, Any] = {"caption_renders_per_concept": 0, "realign_steps": 0, "realign_renders_per_concept": 0}
#: The folder of the recorded recipes (``v7.json`` is today's shipped run, ``TrainConfig()``).
RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (the defaults are the shipped run).

    Attributes:
        seed: the one seed of the run (:class:`~vlm_recipe.seeds.SeedStreams` derives every draw from it).
        spec: the model sizes.
        renders_per_concept: augmented renders per concept in the cached pool the encoder learns from.
        caption_renders_per_concept: renders per concept of a second pool (another seed) that the
            caption stages (align, lora) read: the encoder never trained on them, so the projector
            and the LM learn how its features of *new* images spread, not of the renders it
            memorised (0: the caption stages read the encoder's pool, as every shipped run has;
            a candidate with 16, 96 encoder renders, 110 read and 190 align steps named fewer
            held-out renders than v5, docs/embedded-vlm.md).
        read_steps, read_batch, read_code_lr, read_projector_lr: stage 0 (free class codes,
            projector and LoRA captioning through the LM; 0 steps: no such stage, v0/v1).
        read_noise: in stage 0 each code is read with random noise of this norm relative to the
            code's (ramped up from 0 over the stage's first half; 0.75 is a cosine of 0.8 to the
            code, about the spread of the encoder's features around their codes), so that the
            LM names any feature near a code, not the code alone (v0-v3: 0).
        code_pull: weight of the pull of each feature towards its code in stage 1.
        vision_steps, vision_batch, vision_lr: stage 1 (encoder as a classifier).
        align_steps, align_batch, align_lr, align_vision_lr: stage 2 (projector, and the encoder at
            ``align_vision_lr``; 0: the encoder stays frozen as stage 1 left it, as since v5).
        align_lora: stage 2 also trains the LoRA update (rate ``lora_lr``) on captions plus
            ``align_text_batch`` plain-text sequences per step; else the LM stays frozen (v0).
        lora_steps, lora_batch, lora_text_batch, lora_lr, lora_projector_lr: stage 3.
        realign_steps, realign_renders_per_concept: stage 4, a second align cycle (its own warm-up
            and cosine; the align stage's batch, rates and terms, the encoder frozen) on a pool of
            that many renders per concept from another seed, which the encoder never trained on
            (0 renders: the caption stages' pool; 0 steps: no such stage, as up to v5).
        distill_batch, distill_weight: whenever the LoRA update trains, ``distill_batch`` synthetic
            few-shot prompts per step whose output distribution at the answer delimiters is held
            to the base LLM's by a KL term of weight ``distill_weight``
            (:mod:`vlm_recipe.distill`; 0 prompts: no such term).
        multi_image: fraction of stage-3 caption sequences with two images.
        templates: the caption prompts ``(before, after, weight)`` of every caption stage
            (:data:`~vlm_recipe.data.CAPTION_TEMPLATES`; v0-v2 used ``QA_CAPTION_TEMPLATES``).
        text_positions: positions per plain-text sequence that carry loss (the unembedding over
            262k words is the costliest op, so not every position is scored).
        warmup: fraction of each stage spent warming the learning rate up.
        bf16: run matmuls in bfloat16 autocast.
        jitter: warp and tint every drawn render again (:func:`vlm_recipe.data.jitter_pixels`).
        anchor_names: stage 1's classifier is a :class:`~vlm_recipe.model.NameAnchoredHead` (else a free linear layer).
        checkpoint_seconds: write a checkpoint at most this often.
    """

    seed: int = 0
    spec: VLMSpec = field(default_factory=VLMSpec)
    renders_per_concept: int = 48
    caption_renders_per_concept: int = 0
    read_steps: int = 140
    read_batch: int = 32
    read_code_lr: float = 0.3
    read_projector_lr: float = 5e-3
    read_noise: float = 0.75
    code_pull: float = 30.0
    vision_steps: int = 2200
    vision_batch: int = 128
    vision_lr: float = 2e-3
    align_steps: int = 40
    align_batch: int = 32
    align_lr: float = 1e-3
    align_vision_lr: float = 0.0
    align_lora: bool = True
    align_text_batch: int = 2
    lora_steps: int = 30
    lora_batch: int = 24
    lora_text_batch: int = 2
    lora_lr: float = 1e-3
    lora_projector_lr: float = 3e-4
    realign_steps: int = 80
    realign_renders_per_concept: int = 16
    distill_batch: int = 4
    distill_weight: float = 2.0
    multi_image: float = 0.25
    templates: tuple[tuple[str, str, float], ...] = CAPTION_TEMPLATES
    text_positions: int = 8
    warmup: float = 0.05
    bf16: bool = True
    jitter: bool = True
    anchor_names: bool = True
    checkpoint_seconds: float = 60.0

    def as_recipe(self) -> dict[str, Any]:
        """Every knob as JSON (what a recipe file records; :meth:`from_json` reads it back)."""
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return json.loads(json.dumps(d))

    def to_json(self) -> dict[str, Any]:
        """The knobs as JSON; a knob of :data:`LATER_KNOBS` at its earlier value is left out, so an
        earlier recipe keeps its manifest's form and its checkpoint's fingerprint."""
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return {k: v for k, v in d.items() if not (k in LATER_KNOBS and v == LATER_KNOBS[k])}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config of :meth:`as_recipe` or :meth:`to_json` (a manifest's ``train_config``): a knob
        of :data:`LATER_KNOBS` that is missing had its earlier value; any other must be there.

        Numbers take their knob's type (``30`` for a float knob is ``30.0``), so a hand-written
        recipe gives the same config, and the same checkpoint fingerprint, as a written one.

        Example:
            >>> TrainConfig.from_json(TrainConfig().as_recipe()) == TrainConfig()
            True
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise TaskvecError(f"the recipe has knobs TrainConfig does not know: {unknown}")
        missing = sorted(set(known) - set(d) - set(LATER_KNOBS))
        if missing:
            raise TaskvecError(f"the recipe does not give {missing}: a recipe names every knob of TrainConfig")
        kw: dict[str, Any] = {}
        for name, f in known.items():
            v = d.get(name, LATER_KNOBS.get(name))
            if name == "spec":
                v = VLMSpec.from_json(v)
            elif name == "templates":
                v = tuple((str(before), str(after), float(weight)) for before, after, weight in v)
            elif f.type in ("int", "float", "bool"):
                v = {"int": int, "float": float, "bool": bool}[f.type](v)
            kw[name] = v
        return cls(**kw)

    def key(self, concepts: Sequence[Concept]) -> str:
        """Fingerprint of the config and class list (a checkpoint only resumes the same run)."""
        d = self.to_json()
        d.pop("checkpoint_seconds")
        blob = json.dumps([d, [c.to_json() for c in concepts]], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        losses: per stage, the loss of every step.
        seconds: wall time of the whole run (summed over resumed pieces).
        cpu_seconds: CPU time of the run's process (user + system, summed over resumed pieces);
            on a shared machine wall time also counts the waits for other processes.
        parameters: trainable parameter counts by part (``vision_tower``, ``projector``,
            ``lm_delta``) and the temporary classifier of stage 1.
        state: the trained weights: ``vision`` (tower + projector keys of the VLM) and ``lora``.
        code_fit_cosine: after a read stage, the mean cosine between the encoder's features and
            their codes reached by the projector fit at the end of stage 1 (else ``None``).
    """

    losses: dict[str, list[float]]
    seconds: float
    cpu_seconds: float
    parameters: dict[str, int]
    state: dict[str, dict[str, torch.Tensor]]
    code_fit_cosine: float | None = None


def recipe_names() -> list[str]:
    """The recorded recipes, oldest first.

    Example:
        >>> recipe_names()[0], recipe_names()[-1]
        ('v0', 'v7')
    """
    return sorted((p.stem for p in RECIPES.glob("*.json")), key=lambda s: (len(s), s))


def recipe_file(recipe: str | Path) -> Path:
    """The file of a recorded recipe's name (``"v6"``), or ``recipe`` itself when it is a file."""
    path = Path(recipe)
    if path.is_file():
        return path
    if path.suffix != ".json" and (RECIPES / f"{recipe}.json").is_file():
        return RECIPES / f"{recipe}.json"
    raise TaskvecError(f"no recipe {str(recipe)!r}: give a JSON file or one of {', '.join(recipe_names())}")


def load_recipe(recipe: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` of a recorded recipe (``"v6"``) or of a JSON file: a recipe file
    (``{"config": ...}``), a shipped ``manifest.json`` (its ``train_config``) or a bare config.

    Example:
        >>> load_recipe("v7") == TrainConfig()
        True
        >>> load_recipe("v5").realign_steps
        0
    """
    data = json.loads(recipe_file(recipe).read_text())
    for key in ("config", "train_config"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    return TrainConfig.from_json(data)


def write_recipe(config: TrainConfig, path: str | Path, *, name: str, about: str) -> Path:
    """Record ``config`` as a recipe file that :func:`load_recipe` reads back."""
    path = Path(path)
    blob = {"name": name, "about": about, "config": config.as_recipe()}
    path.write_text(json.dumps(blob, indent=1, ensure_ascii=False) + "\n")
    return path
