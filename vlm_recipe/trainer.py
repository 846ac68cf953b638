"""Training the embedded VLM on a CPU in up to five stages, resumable at any step.

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
   :class:`NameAnchoredHead`.
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

All randomness comes from ``TrainConfig.seed``: the batch of step ``i`` of stage ``s`` is drawn
from its own generator, so a run resumed from a checkpoint takes the same steps as one that
never stopped. Matmuls run in bfloat16 autocast (3x faster on this CPU); trained weights stay
float32, the frozen LM's are stored in bfloat16 (the values autocast would cast them to).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from taskvec.embedded.assemble import DELTA_FILE, MANIFEST_FILE, VISION_FILE, build_model
from taskvec.embedded.spec import BASE_LLM, VLMSpec, vlm_processor, vlm_tokenizer
from taskvec.errors import TaskvecError
from taskvec.models.loading import converted_dir

from .codes import CodeHead, codes_as_image_features, fit_projector_to_codes, noisy_codes
from .concepts import Concept
from .data import CAPTION_TEMPLATES, caption_batch, from_uint8, jitter_pixels, render_pool
from .distill import icl_distill_loss
from .lora import add_lora, lora_state

STAGES = ("read", "vision", "align", "lora", "realign")
#: Offsets of the caption pools' seeds from the run's (far from the eval's held-out seed, 1_000_003).
CAPTION_POOL_SEED = 7_000_001
REALIGN_POOL_SEED = 9_000_011
#: Knobs added after weights had shipped, with the value every run before them had.
LATER_KNOBS: dict[str, Any] = {"caption_renders_per_concept": 0, "realign_steps": 0, "realign_renders_per_concept": 0}
_READ, _VISION, _ALIGN, _LORA, _REALIGN, _DONE = range(6)

#: Openings of the plain-text samples drawn from the base LLM for stage 3 (varied, none about the tasks).
TEXT_OPENINGS = (
    "The", "In 1998,", "Once upon a time", "def main():", "How to", "Water is", "She said that",
    "The following", "import numpy as np", "Yesterday", "Music", "A good way to", "The results show",
    "Dear", "Chapter 1", "If you", "Mathematics", "The weather", "My favourite", "There are many",
    "According to", "This week", "<html>", "It was", "Q: What is", "Scientists", "We", "The best",
    "Step 1:", "Summary:", "In the", "Note:",
)


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (the defaults are the shipped run).

    Attributes:
        seed: the one seed of the run.
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
        anchor_names: stage 1's classifier is a :class:`NameAnchoredHead` (else a free linear layer).
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

    def to_json(self) -> dict[str, Any]:
        """The knobs as JSON; a knob of :data:`LATER_KNOBS` at its earlier value is left out, so an
        earlier recipe keeps its manifest's form and its checkpoint's fingerprint."""
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return {k: v for k, v in d.items() if not (k in LATER_KNOBS and v == LATER_KNOBS[k])}

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


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _lr(step: int, total: int, peak: float, warmup: float) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _vision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items() if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))}


class _Checkpoint:
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


def _frozen_lm_to_bf16(model: Any) -> None:
    """Store the frozen language model's linear weights in bfloat16, once.

    Under bf16 autocast a float32 weight that takes no gradient is cast to bfloat16 again at every
    call: four passes through the LM per caption step re-read its 270M weights each time (about
    half a second per step on this CPU). A weight already in bfloat16 is used as it is, and holds
    the very values the cast would have made, so the run's numbers do not change. The unembedding
    gets its own bfloat16 copy: it is tied to the input embedding, which stays float32.
    """
    lm = model.model.language_model
    for mod in lm.modules():
        if isinstance(mod, torch.nn.Linear) and not mod.weight.requires_grad:
            mod.weight.data = mod.weight.data.to(torch.bfloat16)
    tied = model.lm_head.weight
    head = torch.nn.Linear(tied.shape[1], tied.shape[0], bias=False, device="meta")
    head.weight = torch.nn.Parameter(tied.detach().to(torch.bfloat16), requires_grad=False)
    model.lm_head = head


def _project_init(model: Any, seed: int) -> None:
    """Gemma-3 initialises the projection at zero; start it at unit per-dimension scale instead."""
    proj = model.model.multi_modal_projector
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = proj.mm_input_projection_weight
        w.copy_(torch.randn(w.shape, generator=g) / w.shape[0] ** 0.5)


class NameAnchoredHead(torch.nn.Module):
    """Stage-1 classifier whose class weights are a learned projection of the names' embeddings.

    A locked text tower, as in the contrastive pretraining of real VLM encoders (CLIP, SigLIP,
    LiT): the frozen LM's input embeddings of each class name (mean over the name's tokens) pass
    through a learned linear map into the encoder's space, and the logits are scaled cosines. The
    encoder so learns features laid out like the names, up to a linear map, which the captioning
    stage's linear projector can learn to undo. The image tokens are never set to the embeddings:
    the projector starts random and learns from the caption loss alone.

    Args:
        name_embeddings: ``[n_classes, d_model]``.
        hidden: width of the encoder's output.

    Example:
        >>> head = NameAnchoredHead(torch.randn(5, 640), 256)
        >>> head(torch.randn(2, 256)).shape
        torch.Size([2, 5])
    """

    def __init__(self, name_embeddings: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("names", F.normalize(name_embeddings.float(), dim=-1), persistent=False)
        self.proj = torch.nn.Linear(name_embeddings.shape[-1], hidden, bias=False)
        self.log_scale = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``[b, hidden]`` pooled encoder output -> ``[b, n_classes]`` logits."""
        w = F.normalize(self.proj(self.names), dim=-1)
        return self.log_scale.exp() * F.normalize(feats.float(), dim=-1) @ w.T


def name_embeddings(model: Any, tokenizer: Any, names: Sequence[str]) -> torch.Tensor:
    """Mean input embedding of each name's tokens (as they follow ``A:`` in a caption): ``[n, d_model]``.

    Example:
        >>> name_embeddings(vlm.hf, vlm.tokenizer, ["Wolf", "Pizza"]).shape    # doctest: +SKIP
        torch.Size([2, 640])
    """
    emb = model.model.language_model.embed_tokens
    with torch.no_grad():
        return torch.stack([emb(torch.tensor(tokenizer(n, add_special_tokens=False)["input_ids"])).float().mean(0)
                            for n in names])


def _caption_loss(model: Any, batch: Any) -> torch.Tensor:
    """Cross-entropy of the caption tokens only (unembedding applied to those positions alone)."""
    out = model.model(**batch.model_inputs(), use_cache=False)
    hidden = out.last_hidden_state
    where = batch.targets >= 0
    logits = model.lm_head(hidden[where]).float()
    return F.cross_entropy(logits, batch.targets[where])


def _text_loss(model: Any, ids: torch.Tensor, positions: int, gen: torch.Generator) -> torch.Tensor:
    """Next-token cross-entropy of plain text at ``positions`` random positions per sequence."""
    lm = model.model.language_model
    hidden = lm(input_ids=ids, use_cache=False).last_hidden_state
    b, s = ids.shape
    pos = torch.stack([torch.randperm(s - 4, generator=gen)[:positions] + 3 for _ in range(b)])
    rows = torch.arange(b).unsqueeze(1).expand_as(pos)
    logits = model.lm_head(hidden[rows, pos]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[rows, pos + 1].reshape(-1))


def sample_text(base_dir: Path, n: int, length: int, seed: int, progress: bool = True) -> torch.Tensor:
    """``n`` plain-text sequences of ``length`` tokens sampled from the base LLM: ``[n, length]`` ids.

    Example:
        >>> sample_text(converted_dir("gemma-3-270m"), 4, 16, seed=0).shape     # doctest: +SKIP
        torch.Size([4, 16])
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    lm = Gemma3ForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    torch.manual_seed(seed)
    out = []
    per = 16
    openings = [TEXT_OPENINGS[i % len(TEXT_OPENINGS)] for i in range(n)]
    for start in tqdm(range(0, n, per), desc="sampling plain text", disable=not progress):
        chunk = openings[start : start + per]
        enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            ids = lm.generate(**enc, do_sample=True, top_k=50, temperature=1.0, min_new_tokens=length,
                              max_new_tokens=length, pad_token_id=tok.pad_token_id)
        out.append(ids[:, -length:])
    return torch.cat(out)[:n]


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
        stages: which of :data:`STAGES` to run, in that order (tests run fewer).
        on_step: called as ``on_step(stage, step, loss)`` after every step.

    Returns:
        a :class:`TrainResult`.

    Example:
        >>> from vlm_recipe.concepts import Concept
        >>> cs = [Concept("🐺", "wolf", "animals"), Concept("🍕", "pizza", "foods")]
        >>> r = train(cs, replace(TrainConfig(), vision_steps=2, vision_batch=4, renders_per_concept=2,
        ...           align_steps=0, lora_steps=0), progress=False)    # doctest: +SKIP
        >>> len(r.losses["vision"])                                      # doctest: +SKIP
        2
    """
    from tqdm.auto import tqdm

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise TaskvecError(f"unknown training stages {unknown}: use a subset of {STAGES}")
    if len(concepts) < 2:
        raise TaskvecError("training needs at least two concepts to tell apart")
    if base_dir is None:
        base_dir = converted_dir(BASE_LLM)
    base_dir = Path(base_dir)
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    key = config.key(concepts)
    ckpt = _Checkpoint(work, key, config.checkpoint_seconds)
    t_start, cpu_start = time.time(), _cpu()
    state = ckpt.load() or {"stage": 0, "step": 0, "losses": {s: [] for s in STAGES}, "seconds": 0.0, "cpu_seconds": 0.0}
    if state["stage"] >= len(STAGES):
        print("the checkpoint holds a finished run: exporting it again (delete it, or --fresh, to retrain)", flush=True)
    elif state["step"] or state["stage"]:
        print(f"resuming the VLM training at stage {STAGES[state['stage']]} step {state['step']}", flush=True)
    spec = config.spec
    tokenizer = vlm_tokenizer(base_dir)
    processor = vlm_processor(tokenizer, spec)

    # --- data: the render pools (cached), split into the concepts' renders ----------------------
    def cached_pool(name: str, per_concept: int, seed: int) -> torch.Tensor:
        path = work / f"{name}-{key}.pt" if work else None
        if path is not None and path.exists():
            return torch.load(path)
        made = render_pool(concepts, per_concept, processor, seed=seed, progress=progress)
        if path is not None:
            torch.save(made, path)
        return made

    pool = cached_pool("pool", config.renders_per_concept, config.seed)
    caption_pool = (cached_pool("caption-pool", config.caption_renders_per_concept, config.seed + CAPTION_POOL_SEED)
                    if config.caption_renders_per_concept else pool)
    realign_pool = (cached_pool("realign-pool", config.realign_renders_per_concept, config.seed + REALIGN_POOL_SEED)
                    if config.realign_renders_per_concept and config.realign_steps and "realign" in stages else caption_pool)
    n_cls = len(pool)
    # a concept drawn under several names (a task alias, an identical flag) is captioned with any of them
    names = [(c.caption, *c.aliases) for c in concepts]

    torch.manual_seed(config.seed)
    model = build_model(base_dir, spec)
    _project_init(model, config.seed)
    model.requires_grad_(False)
    if config.bf16:
        _frozen_lm_to_bf16(model)
    lm_layers = model.model.language_model.layers
    if "vision" in state:
        model.load_state_dict(state["vision"], strict=False)

    def snapshot() -> dict[str, Any]:
        snap = {**state, "vision": _vision_keys(model.state_dict()), "seconds": state["seconds"] + time.time() - t_start,
                "cpu_seconds": state.get("cpu_seconds", 0.0) + _cpu() - cpu_start}
        if lora_params:
            snap["lora"] = lora_state(lm_layers, spec.lora_targets)
        return snap

    def draw(stage: int, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, random.Random]:
        """Batch of step ``step`` of stage ``stage`` (0: vision, from the encoder's pool; 1, 2: align and
        lora, from the caption stages'; 3: realign, from its own)."""
        source = pool if stage == 0 else realign_pool if stage == 3 else caption_pool
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + stage * 100_003 + step)
        cls = torch.randint(n_cls, (batch,), generator=gen)
        idx = torch.randint(source.shape[1], (batch,), generator=gen)
        pix = from_uint8(source[cls, idx])
        if config.jitter:
            pix = jitter_pixels(pix, gen)
        return cls, pix, random.Random(int(torch.randint(2**31, (1,), generator=gen)))

    running = [s for s in STAGES if s in stages and getattr(config, f"{s}_steps")]

    def label(stage: str) -> str:
        """Progress-bar title: the stage's place among the stages this run has, e.g. ``2/4 vision``."""
        return f"{running.index(stage) + 1}/{len(running)} {stage}"

    def plain_text() -> torch.Tensor:
        text_path = work / f"text-{config.seed}.pt" if work else None
        if text_path is not None and text_path.exists():
            return torch.load(text_path)
        n = max(64, 4 * config.lora_text_batch, 4 * config.align_text_batch)
        text = sample_text(base_dir, n, 48, config.seed, progress)
        if text_path is not None:
            torch.save(text, text_path)
        return text

    def text_term(text: torch.Tensor | None, n: int, seed: int, like: torch.Tensor) -> torch.Tensor:
        """Plain-text loss of ``n`` sequences drawn with ``seed``; zero (as ``like``) when there are none."""
        if text is None or not n:
            return like * 0
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randint(len(text), (n,), generator=gen)
        return _text_loss(model, text[rows], config.text_positions, gen)

    def distill_term(seed: int, like: torch.Tensor) -> torch.Tensor:
        """KL to the base LLM on ``distill_batch`` synthetic few-shot prompts; zero without LoRA or prompts."""
        if not (lora_params and config.distill_batch):
            return like * 0
        return icl_distill_loss(model, tokenizer, config.distill_batch, seed)

    def caption_step(batch: Any, opt: torch.optim.Optimizer, trained: list[torch.nn.Parameter], text: torch.Tensor | None,
                     n_text: int, text_seed: int, kl_seed: int, inputs: Any = None) -> tuple[float, float, float]:
        """One optimiser step on caption + plain-text + weighted KL loss; returns the three terms.
        ``inputs``: a context manager around the forward (the read stage's codes)."""
        with autocast, inputs or contextlib.nullcontext():
            cap = _caption_loss(model, batch)
            txt = text_term(text, n_text, text_seed, cap)
            kl = distill_term(kl_seed, cap)
            loss = cap + txt + config.distill_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        return cap.item(), txt.item(), kl.item()

    def end_caption_step(stage: str, step: int, bar: Any, opt: torch.optim.Optimizer, cap: float, txt: float, kl: float) -> None:
        state["step"] = step + 1
        bar.set_postfix(caption=f"{cap:.3f}", text=f"{txt:.3f}", kl=f"{kl:.3f}")
        if on_step:
            on_step(stage, step, cap)
        ckpt.save({**snapshot(), "opt": opt.state_dict()})

    def new_lora() -> list[torch.nn.Parameter]:
        torch.manual_seed(config.seed + 3)
        return add_lora(lm_layers, spec.lora_targets, spec.lora_rank, spec.lora_scale)

    lora_params: list[torch.nn.Parameter] = []
    if state["stage"] >= _LORA or "lora" in state:  # resuming a run that already has the update
        lora_params = new_lora()
        if "lora" in state:
            _load_lora(lm_layers, spec, state["lora"])

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16)
    vision = model.model.vision_tower
    projector = model.model.multi_modal_projector

    # --- stage 0: free class codes, the projector and the LoRA learn to caption through the LM ---
    if state["stage"] == _READ and "read" in stages and config.read_steps:
        if "codes" in state:
            codes = torch.nn.Parameter(state["codes"].clone())
        else:
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + 5)
            codes = torch.nn.Parameter(torch.randn(n_cls, spec.vision_hidden, generator=g))
        if not lora_params:
            lora_params = new_lora()
        projector.requires_grad_(True)
        groups = [{"params": [codes], "peak": config.read_code_lr},
                  {"params": list(projector.parameters()), "peak": config.read_projector_lr},
                  {"params": lora_params, "peak": config.lora_lr}]
        trained = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, lr=config.lora_lr, weight_decay=0.0)
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        text = plain_text() if config.align_text_batch else None
        no_pixels = torch.zeros(config.read_batch, 3, spec.image_size, spec.image_size)
        bar = tqdm(range(state["step"], config.read_steps), desc=label("read"), disable=not progress,
                   initial=state["step"], total=config.read_steps)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr(step, config.read_steps, g["peak"], config.warmup)
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 3 * 100_003 + step)
            cls = torch.randint(n_cls, (config.read_batch,), generator=gen)
            rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
            batch = caption_batch(processor, [[rng.choice(names[int(c)])] for c in cls], no_pixels, rng=rng,
                                  templates=config.templates)
            feats = noisy_codes(codes[cls], config.read_noise * min(1.0, 2 * step / config.read_steps), gen)
            cap, txt, kl = caption_step(batch, opt, trained, text, config.align_text_batch, config.seed * 7_919 + 30_000 + step,
                                        config.seed * 7_919 + 70_000 + step,
                                        codes_as_image_features(model, feats, torch.arange(len(cls))))
            state["losses"]["read"].append(cap)
            state.setdefault("read_distill_losses", []).append(kl)
            state["codes"] = codes.detach().clone()
            end_caption_step("read", step, bar, opt, cap, txt, kl)
        projector.requires_grad_(False)
    if state["stage"] == _READ:
        state.update(stage=_VISION, step=0)
        state.pop("opt", None)
        ckpt.save(snapshot(), force=True)

    # --- stage 1: the encoder as a classifier ---------------------------------------------------
    if "codes" in state:
        head: torch.nn.Module = CodeHead(state["codes"], config.code_pull)
    elif config.anchor_names:
        head = NameAnchoredHead(name_embeddings(model, tokenizer, [n[0] for n in names]), spec.vision_hidden)
    else:
        head = torch.nn.Linear(spec.vision_hidden, n_cls)
    if state["stage"] == _VISION and "vision" in stages and config.vision_steps:
        vision.requires_grad_(True)
        params = list(vision.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.05)
        if "head" in state:
            head.load_state_dict(state["head"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        vision.train()
        bar = tqdm(range(state["step"], config.vision_steps), desc=label("vision"), disable=not progress,
                   initial=state["step"], total=config.vision_steps)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr(step, config.vision_steps, config.vision_lr, config.warmup)
            cls, pix, _ = draw(0, step, config.vision_batch)
            with autocast:
                feats = vision(pixel_values=pix).last_hidden_state.mean(1)
                loss = head.loss(feats, cls) if isinstance(head, CodeHead) else F.cross_entropy(head(feats).float(), cls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            state["losses"]["vision"].append(loss.item())
            state["step"] = step + 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if on_step:
                on_step("vision", step, loss.item())
            ckpt.save({**snapshot(), "head": head.state_dict(), "opt": opt.state_dict()})
        vision.eval()
        vision.requires_grad_(False)
    if state["stage"] == _VISION:
        if "codes" in state and "vision" in stages:
            state["code_fit_cosine"] = _fit_to_codes(model, caption_pool, state["codes"], config, autocast)
        state.update(stage=_ALIGN, step=0)
        state.pop("opt", None)
        ckpt.save(snapshot(), force=True)

    # --- stages 2 and 4: projector (+ LoRA; + encoder at a vision rate) captioning real renders --
    def align_cycle(name: str, steps: int, source: int, seed_base: int, vision_lr: float) -> None:
        """One caption cycle with a warm-up and cosine of its own, drawing from pool ``source`` of ``draw``."""
        nonlocal lora_params
        projector.requires_grad_(True)
        groups = [{"params": list(projector.parameters()), "peak": config.align_lr}]
        if vision_lr:  # else the encoder stays as stage 1 left it (and no backward runs through it)
            vision.requires_grad_(True)
            groups.append({"params": list(vision.parameters()), "peak": vision_lr})
        text = None
        if config.align_lora:
            if not lora_params:
                lora_params = new_lora()
            groups.append({"params": lora_params, "peak": config.lora_lr})
            text = plain_text() if config.align_text_batch else None
        trained = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        bar = tqdm(range(state["step"], steps), desc=label(name), disable=not progress, initial=state["step"], total=steps)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, g["peak"], config.warmup)
            cls, pix, rng = draw(source, step, config.align_batch)
            batch = caption_batch(processor, [[rng.choice(names[int(c)])] for c in cls], pix, rng=rng,
                                  templates=config.templates)
            cap, txt, kl = caption_step(batch, opt, trained, text, config.align_text_batch, seed_base + 50_000 + step,
                                        seed_base + 90_000 + step)
            state["losses"].setdefault(name, []).append(cap)
            if text is not None:
                state.setdefault(f"{name}_text_losses", []).append(txt)
            if lora_params and config.distill_batch:
                state.setdefault(f"{name}_distill_losses", []).append(kl)
            end_caption_step(name, step, bar, opt, cap, txt, kl)
        vision.requires_grad_(False)
        projector.requires_grad_(False)

    if state["stage"] == _ALIGN and "align" in stages and config.align_steps:
        align_cycle("align", config.align_steps, 1, config.seed * 7_919, config.align_vision_lr)
    if state["stage"] == _ALIGN:
        state.update(stage=_LORA, step=0)
        state.pop("opt", None)
        ckpt.save(snapshot(), force=True)

    # --- stage 3: LoRA on the LM + projector, captions mixed with plain text ---------------------
    if state["stage"] == _LORA and "lora" in stages and config.lora_steps:
        text = plain_text()
        if not lora_params:
            lora_params = new_lora()
        projector.requires_grad_(True)
        opt = torch.optim.AdamW(
            [{"params": lora_params, "peak": config.lora_lr},
             {"params": list(projector.parameters()), "peak": config.lora_projector_lr}],
            weight_decay=0.0,
        )
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        bar = tqdm(range(state["step"], config.lora_steps), desc=label("lora"), disable=not progress,
                   initial=state["step"], total=config.lora_steps)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr(step, config.lora_steps, g["peak"], config.warmup)
            cls, pix, rng = draw(2, step, config.lora_batch)
            samples: list[list[str]] = []
            i = 0
            while i < len(cls):
                k = 2 if rng.random() < config.multi_image and i + 1 < len(cls) else 1
                samples.append([rng.choice(names[int(c)]) for c in cls[i : i + k]])
                i += k
            batch = caption_batch(processor, samples, pix, rng=rng, templates=config.templates)
            cap, txt, kl = caption_step(batch, opt, lora_params + list(projector.parameters()), text, config.lora_text_batch,
                                        config.seed + step, config.seed * 7_919 + 190_000 + step)
            state["losses"]["lora"].append(cap)
            state.setdefault("text_losses", []).append(txt)
            if config.distill_batch:
                state.setdefault("distill_losses", []).append(kl)
            end_caption_step("lora", step, bar, opt, cap, txt, kl)
        projector.requires_grad_(False)
    if state["stage"] == _LORA:
        state.update(stage=_REALIGN, step=0)
        state.pop("opt", None)
        ckpt.save(snapshot(), force=True)

    # --- stage 4: a second align cycle on renders the encoder never saw -------------------------
    if state["stage"] == _REALIGN and "realign" in stages and config.realign_steps:
        align_cycle("realign", config.realign_steps, 3, config.seed * 7_919 + 200_000, 0.0)
    if state["stage"] == _REALIGN:
        state.update(stage=_DONE, step=0)
        state.pop("opt", None)
    final = snapshot()
    ckpt.save(final, force=True)

    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    lora = final.get("lora", {})
    parameters = {
        "vision_tower": n(vision),
        "projector": n(projector),
        "lm_delta": sum(v.numel() for v in lora.values()),
        "stage1_classifier_discarded": n(head),
    }
    parameters["trainable_shipped"] = parameters["vision_tower"] + parameters["projector"] + parameters["lm_delta"]
    return TrainResult(
        losses={s: list(state["losses"].get(s, [])) for s in STAGES}
        | {k: list(state.get(f"{k}_losses", []))
           for k in ("text", "align_text", "distill", "align_distill", "read_distill", "realign_text", "realign_distill")},
        seconds=final["seconds"],
        cpu_seconds=final["cpu_seconds"],
        parameters=parameters,
        state={"vision": final["vision"], "lora": lora},
        code_fit_cosine=final.get("code_fit_cosine"),
    )


def _fit_to_codes(model: Any, pool: torch.Tensor, codes: torch.Tensor, config: TrainConfig, autocast: Any) -> float:
    """End of stage 1 after a read stage: fold the linear map from the encoder's features of the
    (jittered) renders of ``pool`` (the caption stages' pool) onto the codes into the projector (:func:`~vlm_recipe.codes.fit_projector_to_codes`)."""
    vision = model.model.vision_tower
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 7)
    n_cls, per = pool.shape[:2]
    flat = pool.flatten(0, 1)
    feats = []
    with torch.no_grad(), autocast:
        for start in range(0, len(flat), 256):
            pix = from_uint8(flat[start : start + 256])
            if config.jitter:
                pix = jitter_pixels(pix, gen)
            feats.append(vision(pixel_values=pix).last_hidden_state.mean(1).float())
    classes = torch.arange(n_cls).repeat_interleave(per)
    return fit_projector_to_codes(model, torch.cat(feats), classes, codes)


def _load_lora(layers: Any, spec: VLMSpec, saved: dict[str, torch.Tensor]) -> None:
    from .lora import LoRALinear

    for key, value in saved.items():
        stem, which = key.rsplit(".", 1)
        index, path = stem.split(".", 1)
        mod = layers[int(index)]
        for p in path.split("."):
            mod = getattr(mod, p)
        if not isinstance(mod, LoRALinear):
            raise TaskvecError(f"checkpoint names a LoRA update at {stem!r} the model does not have: delete the checkpoint")
        getattr(mod, which).data.copy_(value)


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
