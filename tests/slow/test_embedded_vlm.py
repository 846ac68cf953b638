"""The embedded VLM's training recipe (vlm_recipe/) run on a tiny vision tower over the real Gemma-3-270m:
each stage trains what it should and leaves the rest (minutes)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from taskvec.embedded.spec import VLMSpec
from vlm_recipe import TrainConfig, TrainResult, train
from vlm_recipe.concepts import Concept


TRIO = [Concept("🇫🇷", "France", "flags"), Concept("🐺", "Wolf", "animals"), Concept("🍕", "Pizza", "foods")]
TINY_SPEC = VLMSpec(vision_hidden=64, vision_layers=1, vision_heads=2, vision_mlp=128)


def _stage_two(**overrides) -> TrainConfig:
    """The stage-2 tests' run on :data:`TINY_SPEC`: two vision steps, then three align steps (``overrides`` win)."""
    run = dict(renders_per_concept=2, caption_renders_per_concept=2, vision_steps=2, vision_batch=8, align_steps=3,
               align_batch=4, lora_steps=0, warmup=0.0, align_text_batch=0)
    return replace(TrainConfig(spec=TINY_SPEC), **run | overrides)


def _run_stage_two(config: TrainConfig, work_dir) -> TrainResult:
    """:data:`TRIO` through stages 1 and 2 (vision, align) with ``config``."""
    return train(TRIO, config, work_dir=work_dir, progress=False, stages=("vision", "align"))


TOWER, PROJECTOR = "model.vision_tower.", "model.multi_modal_projector."


def _weights(result: TrainResult, prefix: str) -> dict[str, torch.Tensor]:
    """A run's trained image-side weights under ``prefix`` (:data:`TOWER` or :data:`PROJECTOR`)."""
    return {k: v for k, v in result.state["vision"].items() if k.startswith(prefix)}


def _pools(folder, config: TrainConfig, *names: str) -> list[torch.Tensor]:
    """The render pools a :data:`TRIO` run with ``config`` cached in ``folder`` (``pool``, ``caption-pool``, ...)."""
    return [torch.load(folder / f"{name}-{config.key(TRIO)}.pt") for name in names]


def _share_an_image(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two pools ``[concepts, renders, ...]`` hold any image bit for bit the same."""
    a, b = a.flatten(0, 1).flatten(1), b.flatten(0, 1).flatten(1)
    return bool((a[:, None] == b[None]).all(-1).any())


def _same_weights(result: TrainResult, reference: TrainResult, prefix: str) -> bool:
    """Every weight of ``reference`` under ``prefix`` is bit for bit the same in ``result``."""
    return all(torch.equal(_weights(result, prefix)[k], v) for k, v in _weights(reference, prefix).items())


@pytest.mark.slow
def test_short_training_lowers_the_loss(tmp_path):
    concepts = [Concept("🇫🇷", "France", "flags"), Concept("🇯🇵", "Japan", "flags"), Concept("🐺", "Wolf", "animals"),
                Concept("🍕", "Pizza", "foods")]
    config = replace(TrainConfig(spec=TINY_SPEC), renders_per_concept=4, vision_steps=12, vision_batch=16, vision_lr=3e-3,
                     align_steps=24, align_batch=8, align_lr=1e-2, lora_steps=0, warmup=0.0, align_lora=False)
    result = train(concepts, config, work_dir=tmp_path, progress=False, stages=("vision", "align"))
    for stage in ("vision", "align"):
        assert len(result.losses[stage]) == getattr(config, f"{stage}_steps")
    first = lambda xs: sum(xs[:3]) / 3  # noqa: E731
    vision, align = result.losses["vision"], result.losses["align"]
    # the classifier learns 4 classes fast and steadily
    assert sum(vision[-3:]) / 3 < 0.8 * first(vision), [round(x, 2) for x in vision]
    # captioning through the frozen LM drops within a few steps, then is noisy at this tiny batch
    assert min(align[3:]) < 0.9 * first(align), [round(x, 2) for x in align]
    assert (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_align_lora_trains_the_lm_update_in_stage_two(tmp_path):
    """With ``align_lora`` the LoRA factors exist and move during stage 2 (B starts at zero), and
    a resumed run reloads them; without it stage 2 leaves the LM untouched (no update at all)."""
    config = _stage_two(align_lora=True)
    result = _run_stage_two(config, tmp_path)
    lora = result.state["lora"]
    assert lora and any(k.endswith(".lora_B") and v.abs().sum() > 0 for k, v in lora.items())
    again = _run_stage_two(config, tmp_path)
    assert all(torch.equal(again.state["lora"][k], v) for k, v in lora.items())
    frozen = _run_stage_two(replace(config, align_lora=False), tmp_path / "frozen")
    assert frozen.state["lora"] == {} and len(frozen.losses["align"]) == 3


@pytest.mark.slow
def test_align_stage_leaves_the_encoder_frozen_at_rate_zero(tmp_path):
    """At ``align_vision_lr=0`` (the shipped recipe) stage 2 trains the projector on the encoder's
    features and leaves the encoder as stage 1 left it; at a positive rate the encoder moves."""
    config = _stage_two(align_lora=False)
    assert TrainConfig().align_vision_lr == 0.0
    before = _run_stage_two(replace(config, align_steps=0), tmp_path / "stage1")  # stage 1 alone (the same steps: same seed)
    after = _run_stage_two(config, tmp_path / "frozen")
    assert len(after.losses["align"]) == 3 and _weights(before, TOWER)
    assert _same_weights(after, before, TOWER)
    assert not _same_weights(after, before, PROJECTOR)
    after = _run_stage_two(replace(config, align_vision_lr=5e-4), tmp_path / "trained")
    assert not _same_weights(after, before, TOWER)


@pytest.mark.slow
def test_caption_stages_read_renders_the_encoder_never_saw(tmp_path):
    """With ``caption_renders_per_concept`` the align stage captions a second pool, from another
    seed: the two pools share no image, the encoder (trained on its own pool) comes out the same,
    and the projector, which learned from the other images, does not."""
    config = _stage_two(align_lora=False)
    # at 0, as in every shipped run, the knob is left out of the recipe's JSON, so earlier manifests stay valid
    assert "caption_renders_per_concept" not in replace(config, caption_renders_per_concept=0).to_json()
    own = _run_stage_two(replace(config, caption_renders_per_concept=0), tmp_path / "own")
    other = _run_stage_two(config, tmp_path / "other")
    assert _weights(own, TOWER) and _same_weights(other, own, TOWER)
    assert not _same_weights(other, own, PROJECTOR)
    encoder_pool, caption_pool = _pools(tmp_path / "other", config, "pool", "caption-pool")
    assert caption_pool.shape[:2] == (3, 2) and not list((tmp_path / "own").glob("caption-pool-*"))
    assert not _share_an_image(encoder_pool, caption_pool)


@pytest.mark.slow
def test_realign_stage_captions_a_pool_of_its_own(tmp_path):
    """The realign stage runs its steps on a third pool that shares no image with the encoder's,
    moves the projector and the LM update but not the encoder, and at 0 steps (every run up to
    v5) is no stage at all: no pool, no losses, the knobs left out of the recipe's JSON."""
    config = _stage_two(align_lora=True, caption_renders_per_concept=0, distill_batch=0, realign_steps=3,
                        realign_renders_per_concept=2)
    stages = ("vision", "align", "realign")
    without = train(TRIO, replace(config, realign_steps=0), work_dir=tmp_path / "without", progress=False, stages=stages)
    result = train(TRIO, config, work_dir=tmp_path / "with", progress=False, stages=stages)
    assert len(result.losses["realign"]) == 3 and without.losses["realign"] == []
    assert result.losses["align"] == without.losses["align"]  # the same run up to the new stage
    assert _weights(result, TOWER) and _same_weights(result, without, TOWER)
    assert not _same_weights(result, without, PROJECTOR)
    assert any(not torch.equal(v, without.state["lora"][k]) for k, v in result.state["lora"].items())
    encoder_pool, realign_pool = _pools(tmp_path / "with", config, "pool", "realign-pool")
    assert realign_pool.shape[:2] == (3, 2) and not list((tmp_path / "without").glob("realign-pool-*"))
    assert not _share_an_image(encoder_pool, realign_pool)
    earlier = replace(config, realign_steps=0, realign_renders_per_concept=0).to_json()
    assert "realign_steps" not in earlier and "realign_renders_per_concept" not in earlier


def test_frozen_lm_in_bfloat16_changes_no_number():
    """Storing the frozen LM's weights in bfloat16 (done once, to spare autocast a cast per call)
    gives bit for bit the caption and distillation losses and gradients of the float32 weights."""
    from taskvec.embedded.assemble import build_model
    from taskvec.embedded.spec import vlm_processor, vlm_tokenizer
    from taskvec.models.loading import converted_dir
    from vlm_recipe.data import caption_batch
    from vlm_recipe.distill import icl_distill_loss
    from vlm_recipe.lora import add_lora
    from vlm_recipe.model import caption_loss, frozen_lm_to_bf16

    base = converted_dir("gemma-3-270m")
    tokenizer = vlm_tokenizer(base)
    model = build_model(base, TINY_SPEC).requires_grad_(False)
    torch.manual_seed(0)
    lora = add_lora(model.model.language_model.layers, TINY_SPEC.lora_targets, TINY_SPEC.lora_rank, TINY_SPEC.lora_scale)
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.02)  # a moved update, so the distillation term is not zero
    pix = torch.rand(2, 3, TINY_SPEC.image_size, TINY_SPEC.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = caption_batch(vlm_processor(tokenizer, TINY_SPEC), [["France"], ["Wolf"]], pix, rng=random.Random(0))

    def losses_and_grads() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for p in lora:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = [caption_loss(model, batch), icl_distill_loss(model, tokenizer, 2, seed=1)]
        sum(losses).backward()
        return [x.detach() for x in losses], [p.grad.clone() for p in lora]

    before = losses_and_grads()
    frozen_lm_to_bf16(model)
    after = losses_and_grads()
    assert model.model.language_model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert model.model.language_model.embed_tokens.weight.dtype == torch.float32  # the input embedding stays float32
    assert before[0][1] > 0 and all(torch.equal(a, b) for a, b in zip(before[0] + before[1], after[0] + after[1]))


@pytest.mark.slow
def test_distillation_starts_at_the_base_and_is_recorded(tmp_path):
    """The KL to the base LLM is exactly zero before the update moves (B starts at zero), then positive."""
    config = _stage_two(align_lora=True, distill_batch=2)
    kl = _run_stage_two(config, tmp_path).losses["align_distill"]
    assert len(kl) == 3 and abs(kl[0]) < 1e-6 and max(kl[1:]) > 1e-6, kl


@pytest.mark.slow
def test_read_stage_teaches_codes_and_the_encoder_lands_on_them(tmp_path):
    """The read stage lowers the caption loss on free codes; the vision stage then trains against
    those codes (its features' cosine to their own code rises), and a resumed run is identical."""
    from vlm_recipe.codes import CodeHead, codes_as_image_features

    config = replace(TrainConfig(spec=TINY_SPEC), renders_per_concept=2, read_steps=12, read_batch=6, read_code_lr=0.2,
                     vision_steps=20, vision_batch=12, align_steps=0, lora_steps=0, warmup=0.0, align_text_batch=0,
                     distill_batch=0)
    result = train(TRIO, config, work_dir=tmp_path, progress=False, stages=("read", "vision"))
    read, vision = result.losses["read"], result.losses["vision"]
    assert len(read) == 12 and sum(read[-3:]) / 3 < 0.7 * sum(read[:3]) / 3, [round(x, 2) for x in read]
    assert sum(vision[-3:]) / 3 < sum(vision[:3]) / 3, [round(x, 2) for x in vision]
    assert result.state["lora"] and any(v.abs().sum() > 0 for k, v in result.state["lora"].items() if k.endswith("lora_B"))
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["codes"].shape == (3, 64)
    again = train(TRIO, config, work_dir=tmp_path, progress=False, stages=("read", "vision"))
    assert again.losses["read"] == read and all(torch.equal(again.state["vision"][k], v) for k, v in result.state["vision"].items())
    # the codes replace the vision tower's output inside the block, and only there
    from taskvec.embedded.assemble import build_model
    from taskvec.models.loading import converted_dir

    model = build_model(converted_dir("gemma-3-270m"), TINY_SPEC)
    pix = torch.zeros(2, 3, TINY_SPEC.image_size, TINY_SPEC.image_size)
    with codes_as_image_features(model, saved["codes"], torch.tensor([2, 0])):
        inside = model.model.vision_tower(pixel_values=pix).last_hidden_state
    outside = model.model.vision_tower(pixel_values=pix).last_hidden_state
    assert torch.equal(inside[0, 3], saved["codes"][2]) and not torch.equal(outside[0, 3], saved["codes"][2])
    assert CodeHead(saved["codes"])(saved["codes"]).argmax(-1).tolist() == [0, 1, 2]
