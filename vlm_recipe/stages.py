"""The five stages of a training run, one function each (the order and what each does: :mod:`vlm_recipe.trainer`).

Each stage runs only if the run is at it, was asked to run it and the recipe gives it steps
(:meth:`Run.runs <vlm_recipe.run.Run.runs>`); it resumes at the checkpoint's step, and ends by
moving the run on to the next stage (:meth:`Run.finish <vlm_recipe.run.Run.finish>`), also when it
had nothing to do.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from .codes import CodeHead, codes_as_image_features, fit_projector_to_codes, noisy_codes
from .data import caption_batch, from_uint8, jitter_pixels
from .model import NameAnchoredHead, name_embeddings
from .run import Run, lr_at


def _set_lr(opt: torch.optim.Optimizer, step: int, total: int, warmup: float) -> None:
    """Every parameter group at its own peak rate (``"peak"``) on the stage's schedule."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, total, g["peak"], warmup)


def _resume(run: Run, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimiser's state as the checkpoint left it within this stage (if it did)."""
    if "opt" in run.state:
        opt.load_state_dict(run.state["opt"])
    return opt


def read_stage(run: Run) -> None:
    """Stage 0: free class codes, the projector and the LoRA learn to caption through the LM, each
    code read with noise (ramped up over the stage's first half)."""
    config, state, projector = run.config, run.state, run.projector
    if run.runs("read"):
        if "codes" in state:
            codes = torch.nn.Parameter(state["codes"].clone())
        else:
            g = torch.Generator().manual_seed(run.seeds.codes_init)
            codes = torch.nn.Parameter(torch.randn(run.n_cls, run.spec.vision_hidden, generator=g))
        if not run.lora_params:
            run.lora_params = run.new_lora()
        projector.requires_grad_(True)
        groups = [{"params": [codes], "peak": config.read_code_lr},
                  {"params": list(projector.parameters()), "peak": config.read_projector_lr},
                  {"params": run.lora_params, "peak": config.lora_lr}]
        trained = [p for g in groups for p in g["params"]]
        opt = _resume(run, torch.optim.AdamW(groups, lr=config.lora_lr, weight_decay=0.0))
        text = run.plain_text() if config.align_text_batch else None
        no_pixels = torch.zeros(config.read_batch, 3, run.spec.image_size, run.spec.image_size)
        bar = run.steps("read", config.read_steps)
        for step in bar:
            _set_lr(opt, step, config.read_steps, config.warmup)
            gen = torch.Generator().manual_seed(run.seeds.batch("read", step))
            cls = torch.randint(run.n_cls, (config.read_batch,), generator=gen)
            rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
            batch = caption_batch(run.processor, [[rng.choice(run.names[int(c)])] for c in cls], no_pixels, rng=rng,
                                  templates=config.templates)
            feats = noisy_codes(codes[cls], config.read_noise * min(1.0, 2 * step / config.read_steps), gen)
            cap, txt, kl = run.caption_step("read", step, batch, opt, trained, text, config.align_text_batch,
                                            codes_as_image_features(run.model, feats, torch.arange(len(cls))))
            state["losses"]["read"].append(cap)
            state.setdefault("read_distill_losses", []).append(kl)
            state["codes"] = codes.detach().clone()
            run.end_step("read", step, bar, opt, cap, _caption_postfix(cap, txt, kl))
        projector.requires_grad_(False)
    run.finish("read")


def stage_one_head(run: Run) -> torch.nn.Module:
    """The encoder's temporary classifier: against the read stage's codes when there are codes, else
    over the names' embeddings (:class:`NameAnchoredHead`) or a free linear layer. Made whether or
    not stage 1 runs (the run's parameter count names it)."""
    if "codes" in run.state:
        return CodeHead(run.state["codes"], run.config.code_pull)
    if run.config.anchor_names:
        return NameAnchoredHead(name_embeddings(run.model, run.tokenizer, [n[0] for n in run.names]), run.spec.vision_hidden)
    return torch.nn.Linear(run.spec.vision_hidden, run.n_cls)


def vision_stage(run: Run, head: torch.nn.Module) -> None:
    """Stage 1: the encoder learns to tell the concepts apart through ``head`` (no LM involved);
    after a read stage, the projector is then fitted to carry its features onto the codes."""
    config, state, vision = run.config, run.state, run.vision
    if run.runs("vision"):
        vision.requires_grad_(True)
        params = list(vision.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.05)
        if "head" in state:
            head.load_state_dict(state["head"])
        _resume(run, opt)
        vision.train()
        bar = run.steps("vision", config.vision_steps)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, config.vision_steps, config.vision_lr, config.warmup)
            cls, pix, _ = run.draw("vision", step, config.vision_batch)
            with run.autocast:
                feats = vision(pixel_values=pix).last_hidden_state.mean(1)
                loss = head.loss(feats, cls) if isinstance(head, CodeHead) else F.cross_entropy(head(feats).float(), cls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            state["losses"]["vision"].append(loss.item())
            run.end_step("vision", step, bar, opt, loss.item(), {"loss": f"{loss.item():.3f}"}, {"head": head.state_dict()})
        vision.eval()
        vision.requires_grad_(False)
    if run.at("vision") and "codes" in state and "vision" in run.stages:
        state["code_fit_cosine"] = fit_to_codes(run)
    run.finish("vision")


def fit_to_codes(run: Run) -> float:
    """End of stage 1 after a read stage: fold the linear map from the encoder's features of the
    (jittered) renders of the caption stages' pool onto the codes into the projector
    (:func:`~vlm_recipe.codes.fit_projector_to_codes`); returns the fit's mean cosine."""
    pool = run.caption_pool
    gen = torch.Generator().manual_seed(run.seeds.code_fit)
    n_cls, per = pool.shape[:2]
    flat = pool.flatten(0, 1)
    feats = []
    with torch.no_grad(), run.autocast:
        for start in range(0, len(flat), 256):
            pix = from_uint8(flat[start : start + 256])
            if run.config.jitter:
                pix = jitter_pixels(pix, gen)
            feats.append(run.vision(pixel_values=pix).last_hidden_state.mean(1).float())
    classes = torch.arange(n_cls).repeat_interleave(per)
    return fit_projector_to_codes(run.model, torch.cat(feats), classes, run.state["codes"])


def _align_cycle(run: Run, stage: str, steps: int, vision_lr: float) -> None:
    """One caption cycle (stage 2 or 4) with a warm-up and cosine of its own: the projector (+ the
    LoRA with ``align_lora``; + the encoder at ``vision_lr``) captions real renders."""
    config, state, vision, projector = run.config, run.state, run.vision, run.projector
    projector.requires_grad_(True)
    groups = [{"params": list(projector.parameters()), "peak": config.align_lr}]
    if vision_lr:  # else the encoder stays as stage 1 left it (and no backward runs through it)
        vision.requires_grad_(True)
        groups.append({"params": list(vision.parameters()), "peak": vision_lr})
    text = None
    if config.align_lora:
        if not run.lora_params:
            run.lora_params = run.new_lora()
        groups.append({"params": run.lora_params, "peak": config.lora_lr})
        text = run.plain_text() if config.align_text_batch else None
    trained = [p for g in groups for p in g["params"]]
    opt = _resume(run, torch.optim.AdamW(groups, weight_decay=0.0))
    bar = run.steps(stage, steps)
    for step in bar:
        _set_lr(opt, step, steps, config.warmup)
        cls, pix, rng = run.draw(stage, step, config.align_batch)
        batch = caption_batch(run.processor, [[rng.choice(run.names[int(c)])] for c in cls], pix, rng=rng,
                              templates=config.templates)
        cap, txt, kl = run.caption_step(stage, step, batch, opt, trained, text, config.align_text_batch)
        state["losses"].setdefault(stage, []).append(cap)
        if text is not None:
            state.setdefault(f"{stage}_text_losses", []).append(txt)
        if run.lora_params and config.distill_batch:
            state.setdefault(f"{stage}_distill_losses", []).append(kl)
        run.end_step(stage, step, bar, opt, cap, _caption_postfix(cap, txt, kl))
    vision.requires_grad_(False)
    projector.requires_grad_(False)


def align_stage(run: Run) -> None:
    """Stage 2: the projector (and the LoRA, and the encoder at ``align_vision_lr``) caption the caption stages' renders."""
    if run.runs("align"):
        _align_cycle(run, "align", run.config.align_steps, run.config.align_vision_lr)
    run.finish("align")


def lora_stage(run: Run) -> None:
    """Stage 3: the LoRA and the projector caption one or two images per sequence, mixed with plain text."""
    config, state, projector = run.config, run.state, run.projector
    if run.runs("lora"):
        text = run.plain_text()
        if not run.lora_params:
            run.lora_params = run.new_lora()
        projector.requires_grad_(True)
        opt = _resume(run, torch.optim.AdamW(
            [{"params": run.lora_params, "peak": config.lora_lr},
             {"params": list(projector.parameters()), "peak": config.lora_projector_lr}],
            weight_decay=0.0,
        ))
        bar = run.steps("lora", config.lora_steps)
        for step in bar:
            _set_lr(opt, step, config.lora_steps, config.warmup)
            cls, pix, rng = run.draw("lora", step, config.lora_batch)
            samples: list[list[str]] = []
            i = 0
            while i < len(cls):
                k = 2 if rng.random() < config.multi_image and i + 1 < len(cls) else 1
                samples.append([rng.choice(run.names[int(c)]) for c in cls[i : i + k]])
                i += k
            batch = caption_batch(run.processor, samples, pix, rng=rng, templates=config.templates)
            cap, txt, kl = run.caption_step("lora", step, batch, opt, run.lora_params + list(projector.parameters()), text,
                                            config.lora_text_batch)
            state["losses"]["lora"].append(cap)
            state.setdefault("text_losses", []).append(txt)
            if config.distill_batch:
                state.setdefault("distill_losses", []).append(kl)
            run.end_step("lora", step, bar, opt, cap, _caption_postfix(cap, txt, kl))
        projector.requires_grad_(False)
    run.finish("lora")


def realign_stage(run: Run) -> None:
    """Stage 4: a second align cycle, the encoder frozen, on renders the encoder never saw."""
    if run.runs("realign"):
        _align_cycle(run, "realign", run.config.realign_steps, 0.0)
    run.finish("realign")


def _caption_postfix(cap: float, txt: float, kl: float) -> dict[str, str]:
    return {"caption": f"{cap:.3f}", "text": f"{txt:.3f}", "kl": f"{kl:.3f}"}
