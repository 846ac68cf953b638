"""The embedded VLM's shipped manifest and the pieces of its training recipe (vlm_recipe/), without a model."""

from __future__ import annotations

import json
import random

import pytest
import torch

import taskvec
from taskvec.embedded.assemble import read_manifest
from taskvec.embedded.spec import VLMSpec
from taskvec.tasks import PAPER_TASKS, get_task
from vlm_recipe import TrainConfig
from vlm_recipe.concepts import Concept, extra_concepts, merge_identical, task_concepts


def test_every_task_emoji_is_a_training_class():
    shipped = {c["emoji"] for c in read_manifest()["concepts"]}
    for name in PAPER_TASKS:
        missing = [it.input for it in get_task(name).items if it.emoji and it.emoji not in shipped]
        assert not missing, f"{name}: {missing[:5]}"


def test_captions_are_task_inputs_never_outputs():
    captions = {c["caption"] for c in read_manifest()["concepts"]} | {a for c in read_manifest()["concepts"] for a in c["aliases"]}
    inputs = {it.input for n in PAPER_TASKS for it in get_task(n).items}
    outputs = {it.output for n in PAPER_TASKS for it in get_task(n).items} - inputs
    assert captions & inputs
    assert not captions & outputs, sorted(captions & outputs)[:5]


def test_no_caption_is_written_as_an_icl_query():
    """A caption in the ICL prompts' own Q:/A: format teaches the VLM to name every image after Q:
    (the v0-v2 weights did, and image ICL sat at the floor); the shipped recipe has none."""
    icl_query = taskvec.GENERIC.query.format(x="{image}")
    for before, _, _ in TrainConfig().templates:
        assert before != icl_query and not before.endswith(taskvec.GENERIC.marker), before
    assert read_manifest()["train_config"]["templates"] == [list(t) for t in TrainConfig().templates], "the shipped weights are not this recipe's"


def test_the_shipped_weights_are_the_default_recipe():
    """Every knob of the shipped run is ``TrainConfig()``'s, so the model card's recipe and
    ``python -m vlm_recipe`` reproduce the shipped weights."""
    shipped = dict(read_manifest()["train_config"])
    default = json.loads(json.dumps(TrainConfig().to_json()))
    shipped.pop("checkpoint_seconds"), default.pop("checkpoint_seconds")
    assert shipped == default, {k: (shipped.get(k), v) for k, v in default.items() if shipped.get(k) != v}


def test_read_noise_keeps_codes_recognisable_and_trainable():
    """The read stage's noise has the asked norm, is reproducible, leaves the gradient to the codes,
    and at ratio 0 is no noise at all."""
    from vlm_recipe.codes import noisy_codes

    codes = torch.randn(64, 256, requires_grad=True)
    a = noisy_codes(codes, 0.75, torch.Generator().manual_seed(1))
    b = noisy_codes(codes, 0.75, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    ratio = (a - codes).norm(dim=-1) / codes.norm(dim=-1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.75), atol=1e-4)
    cos = torch.nn.functional.cosine_similarity(a.detach(), codes.detach())
    assert 0.7 < float(cos.mean()) < 0.9 and (torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(codes, dim=-1).T).argmax(-1).tolist() == list(range(64))
    a.sum().backward()
    assert torch.equal(codes.grad, torch.ones_like(codes))
    assert noisy_codes(codes, 0.0, torch.Generator()) is codes


def test_concepts_use_task_inputs_and_merge_identical_flags():
    cs = task_concepts(["country-capital"])
    assert any(c.caption == "France" and c.emoji == "🇫🇷" for c in cs)
    merged = merge_identical([Concept("🇹🇩", "Chad", "flags"), Concept("🇷🇴", "Romania", "flags"), Concept("🇫🇷", "France", "flags")])
    assert merged[0].aliases == ("Romania",) and merged[2].aliases == ()
    extra = extra_concepts(20, exclude=cs)
    assert len({c.emoji for c in extra}) == 20 and not {c.emoji for c in extra} & {c.emoji for c in cs}


def test_bad_spec_is_rejected():
    with pytest.raises(taskvec.TaskvecError, match="square"):
        VLMSpec(tokens_per_image=12)


def test_synthetic_icl_prompts_follow_their_rules():
    from vlm_recipe.distill import SYNTHETIC_TASKS, synthetic_icl_prompt

    r = random.Random(0)
    x, y = SYNTHETIC_TASKS["upper"](r)
    assert y == x.upper() and x.islower()
    x, y = SYNTHETIC_TASKS["next-number"](r)
    assert int(y) == int(x) + 1
    x, y = SYNTHETIC_TASKS["word-count"](r)
    assert int(y) == len(x.split())
    paper = {(it.input, it.output) for n in PAPER_TASKS for it in get_task(n).items}
    for _ in range(50):
        pairs = [block.split("\nA:") for block in synthetic_icl_prompt(r).split("\n\n")]
        assert 2 <= len(pairs) <= 6 and all(len(p) == 2 and p[0].startswith("Q:") and p[1] for p in pairs)
        assert not {(p[0][2:], p[1]) for p in pairs} & paper


def test_jitter_pixels_warps_reproducibly_within_range():
    from vlm_recipe.data import jitter_pixels

    x = torch.rand(4, 3, 32, 32) * 2 - 1
    a = jitter_pixels(x, torch.Generator().manual_seed(1))
    b = jitter_pixels(x, torch.Generator().manual_seed(1))
    c = jitter_pixels(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01  # it does change the images


def test_name_anchored_head_learns_only_its_projection():
    from vlm_recipe.model import NameAnchoredHead

    names = torch.randn(6, 640)
    head = NameAnchoredHead(names, 32)
    feats = torch.randn(3, 32, requires_grad=True)
    logits = head(feats)
    assert logits.shape == (3, 6)
    # logits are scaled cosines: bounded by the scale
    assert logits.abs().max() <= head.log_scale.exp() + 1e-4
    logits.sum().backward()
    assert head.proj.weight.grad is not None and feats.grad is not None
    assert {n for n, _ in head.named_parameters()} == {"proj.weight", "log_scale"}  # the names stay frozen


def test_code_head_pulls_features_onto_their_codes():
    from vlm_recipe.codes import CodeHead

    codes = torch.randn(5, 16)
    head = CodeHead(codes, pull=1.0)
    assert {n for n, _ in head.named_parameters()} == {"log_scale"}  # the codes stay frozen
    cls = torch.tensor([0, 3])
    on_code = head.loss(codes[cls] * 7.0, cls)       # scale does not matter: the projector normalises
    off_code = head.loss(codes[[1, 2]], cls)
    assert on_code < off_code
    assert head(codes).argmax(-1).tolist() == list(range(5))
