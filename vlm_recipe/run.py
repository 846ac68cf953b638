"""One training run's shared state and the steps every stage takes alike.

A :class:`Run` holds the model under training, the render pools, the plain text, the checkpointed
state (which stage, which step, the losses so far) and the run's :class:`~vlm_recipe.seeds.SeedStreams`;
the stages (:mod:`vlm_recipe.stages`) draw their batches, take their caption steps and write their
checkpoints through it.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from taskvec.embedded.assemble import build_model
from taskvec.embedded.spec import BASE_LLM, vlm_processor, vlm_tokenizer
from taskvec.errors import TaskvecError
from taskvec.models.loading import converted_dir

from .concepts import Concept
from .config import STAGES, TrainConfig
from .data import from_uint8, jitter_pixels, render_pool
from .distill import icl_distill_loss
from .lora import add_lora, load_lora, lora_state
from .model import caption_loss, frozen_lm_to_bf16, project_init
from .seeds import SeedStreams
from .text import sample_text, text_loss

#: The value of a checkpoint's ``stage`` once every stage has run.
DONE = len(STAGES)


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Learning rate of ``step`` of ``total``: linear warm-up over the fraction ``warmup``, then a cosine to 0.

    Example:
        >>> [round(lr_at(s, 10, 1.0, 0.2), 2) for s in (0, 1, 2, 9)]
        [0.5, 1.0, 1.0, 0.04]
    """
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def vision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's and projector's weights of a VLM state dict (what a run trains besides the LoRA)."""
    return {k: v.detach().clone() for k, v in state.items() if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))}


class Checkpoint:
    """One file holding the run's state; written atomically, at most every ``every`` seconds."""

    def __init__(self, folder: Path | None, key: str, every: float) -> None:
        self.path = folder / "checkpoint.pt" if folder else None
        self.key, self.every, self.last = key, every, time.time()

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        data = torch.load(self.path, weights_only=False)
        return data if data.get("key") == self.key else None

    def save(self, data: dict[str, Any], *, force: bool = False) -> None:
        if self.path is None or (not force and time.time() - self.last < self.every):
            return
        tmp = self.path.with_name(f"checkpoint.tmp{os.getpid()}")
        torch.save({**data, "key": self.key}, tmp)
        os.replace(tmp, self.path)
        self.last = time.time()


class Run:
    """A training run: set up (pools rendered or read from the work folder, the model built, a
    checkpoint of the same run resumed), then driven stage by stage by :func:`vlm_recipe.trainer.train`.

    Args: as :func:`vlm_recipe.trainer.train`.

    Attributes:
        config, concepts, seeds: the recipe, the classes, the run's seed streams.
        state: what the checkpoint holds: ``stage`` (index into :data:`STAGES`, :data:`DONE` at the
            end), ``step`` within it, ``losses``, times, and the weights trained so far.
        model, vision, projector, lm_layers: the VLM under training and its parts.
        lora_params: the LoRA factors once the update exists (else empty).
        pool, caption_pool, realign_pool: ``[n_concepts, renders, 3, H, W]`` uint8 render pools of
            the encoder, the caption stages and the realign stage (the same tensor where a stage
            has no pool of its own).
        names: per concept, every name it may be captioned with.
    """

    def __init__(self, concepts: Sequence[Concept], config: TrainConfig, *, work_dir: str | Path | None,
                 base_dir: str | Path | None, progress: bool, stages: Sequence[str],
                 on_step: Callable[[str, int, float], None] | None) -> None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise TaskvecError(f"unknown training stages {unknown}: use a subset of {STAGES}")
        if len(concepts) < 2:
            raise TaskvecError("training needs at least two concepts to tell apart")
        self.concepts, self.config, self.stages = list(concepts), config, tuple(stages)
        self.progress, self.on_step = progress, on_step
        self.seeds = SeedStreams(config.seed)
        self.base_dir = Path(base_dir) if base_dir is not None else converted_dir(BASE_LLM)
        self.work = Path(work_dir) if work_dir is not None else None
        if self.work is not None:
            self.work.mkdir(parents=True, exist_ok=True)
        self.key = config.key(concepts)
        self.ckpt = Checkpoint(self.work, self.key, config.checkpoint_seconds)
        self.t_start, self.cpu_start = time.time(), cpu_seconds()
        self.state: dict[str, Any] = self.ckpt.load() or {
            "stage": 0, "step": 0, "losses": {s: [] for s in STAGES}, "seconds": 0.0, "cpu_seconds": 0.0}
        if self.state["stage"] >= DONE:
            print("the checkpoint holds a finished run: exporting it again (delete it, or --fresh, to retrain)", flush=True)
        elif self.state["step"] or self.state["stage"]:
            print(f"resuming the VLM training at stage {STAGES[self.state['stage']]} step {self.state['step']}", flush=True)
        self.spec = config.spec
        self.tokenizer = vlm_tokenizer(self.base_dir)
        self.processor = vlm_processor(self.tokenizer, self.spec)

        # the render pools (cached in the work folder)
        self.pool = self._cached_pool("pool", config.renders_per_concept, self.seeds.encoder_pool)
        self.caption_pool = (self._cached_pool("caption-pool", config.caption_renders_per_concept, self.seeds.caption_pool)
                             if config.caption_renders_per_concept else self.pool)
        realign_own = config.realign_renders_per_concept and config.realign_steps and "realign" in stages
        self.realign_pool = (self._cached_pool("realign-pool", config.realign_renders_per_concept, self.seeds.realign_pool)
                             if realign_own else self.caption_pool)
        self.n_cls = len(self.pool)
        # a concept drawn under several names (a task alias, an identical flag) is captioned with any of them
        self.names = [(c.caption, *c.aliases) for c in concepts]

        # the model: the base LLM frozen, the image side fresh (or as the checkpoint has it)
        torch.manual_seed(self.seeds.model_init)
        self.model = build_model(self.base_dir, self.spec)
        project_init(self.model, self.seeds.projector_init)
        self.model.requires_grad_(False)
        if config.bf16:
            frozen_lm_to_bf16(self.model)
        self.lm_layers = self.model.model.language_model.layers
        if "vision" in self.state:
            self.model.load_state_dict(self.state["vision"], strict=False)
        self.lora_params: list[torch.nn.Parameter] = []
        if self.state["stage"] >= STAGES.index("lora") or "lora" in self.state:  # resuming a run that already has the update
            self.lora_params = self.new_lora()
            if "lora" in self.state:
                load_lora(self.lm_layers, self.state["lora"])
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16)
        self.vision = self.model.model.vision_tower
        self.projector = self.model.model.multi_modal_projector
        self.running = [s for s in STAGES if s in stages and getattr(config, f"{s}_steps")]

    # --- where the run is ------------------------------------------------------------------------
    def at(self, stage: str) -> bool:
        """The run is at ``stage`` (it has not run it yet, or stopped within it)."""
        return self.state["stage"] == STAGES.index(stage)

    def runs(self, stage: str) -> bool:
        """The run is at ``stage``, was asked to run it, and the recipe gives it steps."""
        return self.at(stage) and stage in self.stages and bool(getattr(self.config, f"{stage}_steps"))

    def finish(self, stage: str) -> None:
        """Past ``stage`` (if the run was at it): on to the next one at step 0, with a checkpoint (the
        last stage's is written by :meth:`result`)."""
        if not self.at(stage):
            return
        self.state.update(stage=self.state["stage"] + 1, step=0)
        self.state.pop("opt", None)
        if self.state["stage"] < DONE:
            self.ckpt.save(self.snapshot(), force=True)

    def snapshot(self) -> dict[str, Any]:
        """The state to checkpoint: the run's, the trained weights and the time spent so far."""
        snap = {**self.state, "vision": vision_keys(self.model.state_dict()),
                "seconds": self.state["seconds"] + time.time() - self.t_start,
                "cpu_seconds": self.state.get("cpu_seconds", 0.0) + cpu_seconds() - self.cpu_start}
        if self.lora_params:
            snap["lora"] = lora_state(self.lm_layers, self.spec.lora_targets)
        return snap

    def steps(self, stage: str, total: int) -> Any:
        """The steps of ``stage`` still to run, as a progress bar titled ``2/4 vision`` (its place among the run's stages)."""
        return tqdm(range(self.state["step"], total), desc=f"{self.running.index(stage) + 1}/{len(self.running)} {stage}",
                    disable=not self.progress, initial=self.state["step"], total=total)

    # --- what the stages draw --------------------------------------------------------------------
    def _cached_pool(self, name: str, per_concept: int, seed: int) -> torch.Tensor:
        path = self.work / f"{name}-{self.key}.pt" if self.work else None
        if path is not None and path.exists():
            return torch.load(path)
        made = render_pool(self.concepts, per_concept, self.processor, seed=seed, progress=self.progress)
        if path is not None:
            torch.save(made, path)
        return made

    def draw(self, stage: str, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, random.Random]:
        """Batch of step ``step`` of ``stage``: classes, their (jittered) renders, and a ``random.Random``
        for the caption formats; vision draws from the encoder's pool, align and lora from the
        caption stages', realign from its own."""
        source = {"vision": self.pool, "realign": self.realign_pool}.get(stage, self.caption_pool)
        gen = torch.Generator().manual_seed(self.seeds.batch(stage, step))
        cls = torch.randint(self.n_cls, (batch,), generator=gen)
        idx = torch.randint(source.shape[1], (batch,), generator=gen)
        pix = from_uint8(source[cls, idx])
        if self.config.jitter:
            pix = jitter_pixels(pix, gen)
        return cls, pix, random.Random(int(torch.randint(2**31, (1,), generator=gen)))

    def new_lora(self) -> list[torch.nn.Parameter]:
        """Wrap the LM's target layers in LoRA side matrices (``B`` at zero); returns the factors."""
        torch.manual_seed(self.seeds.lora_init)
        return add_lora(self.lm_layers, self.spec.lora_targets, self.spec.lora_rank, self.spec.lora_scale)

    def plain_text(self) -> torch.Tensor:
        """The plain-text sequences sampled from the base LLM (once; cached in the work folder)."""
        config = self.config
        text_path = self.work / f"text-{config.seed}.pt" if self.work else None
        if text_path is not None and text_path.exists():
            return torch.load(text_path)
        n = max(64, 4 * config.lora_text_batch, 4 * config.align_text_batch)
        text = sample_text(self.base_dir, n, 48, self.seeds.plain_text, self.progress)
        if text_path is not None:
            torch.save(text, text_path)
        return text

    # --- one caption step ------------------------------------------------------------------------
    def _text_term(self, text: torch.Tensor | None, n: int, seed: int, like: torch.Tensor) -> torch.Tensor:
        """Plain-text loss of ``n`` sequences drawn with ``seed``; zero (as ``like``) when there are none."""
        if text is None or not n:
            return like * 0
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randint(len(text), (n,), generator=gen)
        return text_loss(self.model, text[rows], self.config.text_positions, gen)

    def _distill_term(self, seed: int, like: torch.Tensor) -> torch.Tensor:
        """KL to the base LLM on ``distill_batch`` synthetic few-shot prompts; zero without LoRA or prompts."""
        if not (self.lora_params and self.config.distill_batch):
            return like * 0
        return icl_distill_loss(self.model, self.tokenizer, self.config.distill_batch, seed)

    def caption_step(self, stage: str, step: int, batch: Any, opt: torch.optim.Optimizer, trained: list[torch.nn.Parameter],
                     text: torch.Tensor | None, n_text: int, inputs: Any = None) -> tuple[float, float, float]:
        """One optimiser step of ``stage`` on caption + plain-text + weighted KL loss; returns the three terms.
        ``inputs``: a context manager around the forward (the read stage's codes)."""
        with self.autocast, inputs or contextlib.nullcontext():
            cap = caption_loss(self.model, batch)
            txt = self._text_term(text, n_text, self.seeds.text(stage, step), cap)
            kl = self._distill_term(self.seeds.distill(stage, step), cap)
            loss = cap + txt + self.config.distill_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        return cap.item(), txt.item(), kl.item()

    def end_step(self, stage: str, step: int, bar: Any, opt: torch.optim.Optimizer, loss: float,
                 postfix: dict[str, str], extra: dict[str, Any] | None = None) -> None:
        """After a step: advance, show the losses, call ``on_step``, checkpoint (at most every ``checkpoint_seconds``)."""
        self.state["step"] = step + 1
        bar.set_postfix(**postfix)
        if self.on_step:
            self.on_step(stage, step, loss)
        self.ckpt.save({**self.snapshot(), **(extra or {}), "opt": opt.state_dict()})
