"""The embedded VLM (gemma-3-270m-vlm): a real Gemma-3 VLM, built from the base LLM plus shipped weights."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

import taskvec
from taskvec.embedded import CAPTION_PROMPT
from taskvec.embedded.assemble import read_manifest
from taskvec.embedded.spec import VLMSpec, vlm_processor, vlm_tokenizer
from taskvec.models.loading import converted_dir
from taskvec.tasks import PAPER_TASKS, get_task
from vlm_recipe import TrainConfig, TrainResult, train
from vlm_recipe.concepts import Concept, extra_concepts, merge_identical, task_concepts
from vlm_recipe.data import CAPTION_TEMPLATES, caption_batch, render_augmented, render_pool


@pytest.fixture(scope="module")
def vlm() -> taskvec.Model:
    return taskvec.load("gemma-3-270m-vlm")


def test_is_a_real_gemma3_vlm(vlm):
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

    assert isinstance(vlm.hf, Gemma3ForConditionalGeneration)
    assert isinstance(vlm.processor, Gemma3Processor)
    assert vlm.is_vlm and vlm.n_layers == 18 and vlm.d_model == 640
    assert vlm.hf.config.mm_tokens_per_image == read_manifest()["spec"]["tokens_per_image"]
    # the image token lies past the embedding matrix, as in the released Gemma-3 VLMs
    assert vlm.tokenizer.image_token_id == vlm.hf.config.image_token_id >= vlm.hf.config.text_config.vocab_size


def test_traced_forward_with_images(vlm):
    img = taskvec.get_task("country-capital").pairs("val", "image", image_size=96)[0][0]
    prompt = taskvec.icl_prompt([(img, "Jakarta")], img)
    batch = vlm.encode([prompt])
    n_img = int((batch.input_ids == vlm.tokenizer.image_token_id).sum())
    assert n_img == 2 * vlm.hf.config.mm_tokens_per_image
    with vlm.trace(batch):
        h = vlm.residual(vlm.layers()[9].output).save()
    assert h.shape == (1, batch.input_ids.shape[1], 640)
    assert len(vlm.delimiters(batch)[0]) == 2


def test_lm_differs_slightly_from_the_base(vlm, gemma):
    spec = VLMSpec.from_json(read_manifest()["spec"])
    base_layers, vlm_layers = gemma.layers(traced=False), vlm.layers(traced=False)
    rel = []
    for i in range(vlm.n_layers):
        for path in spec.lora_targets:
            a = dict(base_layers[i].named_modules())[path].weight
            b = dict(vlm_layers[i].named_modules())[path].weight
            rel.append(float((a - b).norm() / a.norm()))
    assert min(rel) > 0, "every LoRA target must have moved"
    # small: a typical target moves by a few percent, none by a quarter (what the LM does stays close:
    # the residual cosine to the base is >= 0.98 per layer, analyses/results/embedded_vlm.json)
    median = sorted(rel)[len(rel) // 2]
    assert median < 0.1 and max(rel) < 0.25, f"the LM delta should be small: median {median:.3f}, max {max(rel):.3f}"
    # everything else is the base LLM, bit for bit
    assert torch.equal(base_layers[3].mlp.down_proj.weight, vlm_layers[3].mlp.down_proj.weight)
    assert torch.equal(gemma.hf.model.embed_tokens.weight, vlm.hf.model.language_model.embed_tokens.weight)


def test_vlm_keeps_in_context_learning(vlm, gemma):
    """The LoRA delta must not cost the LM its text ICL: the shipped VLM keeps about 60% of the base LLM's
    5-shot accuracy on these two tasks; a run without distillation kept under 10% (0.02 vs 0.27 on six)."""
    accs = {}
    for name in ("country-capital", "animal-latin"):
        task = taskvec.get_task(name)
        prompts = taskvec.sample_icl_prompts(task.pairs("val", "text"), task.pairs("test", "text")[:24], n_shots=5, seed=0)
        labels = [p.label for p in prompts]
        accs[name] = [taskvec.accuracy(taskvec.predict(m, prompts, progress=False), labels) for m in (gemma, vlm)]
    base, ours = (sum(a[i] for a in accs.values()) for i in (0, 1))
    assert base > 0.5 and ours >= 0.4 * base, accs


@pytest.fixture(scope="module")
def food_naming(vlm) -> dict[str, float]:
    """Share of the food tasks' image queries the VLM answers with the image's own name, asked
    ``Q:<image>\\nA:`` alone (``"zero"``) and after five image demonstrations (``"icl"``)."""
    named: dict[str, list[bool]] = {"zero": [], "icl": []}
    for name in ("food-color", "food-flavor"):
        task = taskvec.get_task(name)
        test = task.pairs("test", "image")[:12]
        own = [x for x, _ in task.pairs("test", "text", emoji_only=True)[:12]]
        for kind, prompts in (("zero", taskvec.zero_shot(test)),
                              ("icl", taskvec.sample_icl_prompts(task.pairs("val", "image"), test, n_shots=5, seed=0))):
            named[kind] += [taskvec.is_correct(p, n) for p, n in zip(taskvec.predict(vlm, prompts, progress=False), own)]
    return {k: sum(v) / len(v) for k, v in named.items()}


def test_demonstrations_cut_how_often_the_vlm_names_the_query_image(food_naming):
    """Asked ``Q:<image>\\nA:`` alone, the VLM names the image (it is a captioner); five image
    demonstrations of a food task must pull it away from that by at least a quarter, or it ignores
    them. v7 names the query image in 1 of these 19 prompts with demonstrations, 18 without (v6 5
    and 19, v5 10 and 17; analyses/results/embedded_vlm.json). The v2 weights, trained on ``Q:<image>\\nA:{name}``
    captions, named it in 13 of 19 with demonstrations (image ICL 0.00 on both food tasks)."""
    assert food_naming["zero"] >= 0.5 and food_naming["icl"] <= 0.75 * food_naming["zero"], food_naming


def test_demonstrations_mostly_stop_the_vlm_naming_the_query_image(food_naming):
    """The target: five demonstrations at least halve the naming and leave it under a third (v7 names
    1 of 19 with them, 18 without; v6 and v4 met it too, v5 named 10 of 19 and failed it)."""
    assert food_naming["icl"] <= min(1 / 3, food_naming["zero"] / 2), food_naming


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


def _held_out(n: int, seed: int = 12345):
    concepts = [Concept.from_json(c) for c in read_manifest()["concepts"] if c["group"] in ("flags", "animals", "foods")]
    rng = random.Random(seed)  # never a training seed
    picked = rng.sample(concepts, n)
    return concepts, picked, taskvec.zero_shot([(render_augmented(c.emoji, rng), c.caption) for c in picked], template=CAPTION_PROMPT)


def test_image_token_carries_the_category(vlm):
    """What the shipped weights do reach: the image decides whether a flag, an animal or a food is named."""
    concepts, picked, prompts = _held_out(40)
    first = lambda name: vlm.tokenizer(name, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    groups = {g: sorted({first(c.caption) for c in concepts if c.group == g}) for g in ("flags", "animals", "foods")}
    probs = torch.softmax(taskvec.first_token_logits(vlm, prompts, progress=False), dim=-1)
    hits = 0
    for c, p in zip(picked, probs):
        mass = {g: float(p[ids].sum()) for g, ids in groups.items()}
        hits += max(mass, key=mass.get) == c.group
    majority = max(sum(c.group == g for c in picked) for g in groups) / len(picked)
    assert hits / len(picked) >= 0.75 > majority + 0.1, (hits, majority)


def _held_out_per_group(n: int, seed: int = 12345):
    concepts = [Concept.from_json(c) for c in read_manifest()["concepts"]]
    rng = random.Random(seed)  # never a training seed
    picked = [c for g in ("flags", "animals", "foods") for c in rng.sample([c for c in concepts if c.group == g], n)]
    return picked, taskvec.zero_shot([(render_augmented(c.emoji, rng), c.caption) for c in picked], template=CAPTION_PROMPT)


def _named(vlm, picked, prompts) -> dict[str, float]:
    preds = taskvec.predict(vlm, prompts, progress=False)
    ok = [any(taskvec.is_correct(p, n) for n in (c.caption, *c.aliases)) for p, c in zip(preds, picked)]
    return {g: sum(o for o, c in zip(ok, picked) if c.group == g) / sum(c.group == g for c in picked)
            for g in ("flags", "animals", "foods")}


def test_names_held_out_renders(vlm):
    """A floor under the shipped weights, below the target test's bar so that it tells a small slip
    from a broken image path: v7 names 91-97% of held-out renders (analyses/results/
    embedded_vlm.json; 1.0 / 1.0 / 1.0 of this sample; v6 1.0 / 0.8 / 0.7, v5 0.8 / 0.8 / 0.8, v4
    1.0 / 0.4 / 0.7); v1 named 5-12%, chance is ~1/450."""
    picked, prompts = _held_out_per_group(10)
    named = _named(vlm, picked, prompts)
    assert sum(named.values()) / 3 >= 0.8 and min(named.values()) >= 0.7, named


def test_recognises_held_out_renders(vlm):
    """Issue #3's target: at least 90% of held-out renders named per group (v7: 1.0 / 1.0 / 0.95 of
    this sample, 97 / 91 / 94% in analyses/results/embedded_vlm.json; v6 0.95 / 0.75 / 0.95 failed it)."""
    picked, prompts = _held_out_per_group(20, seed=54321)
    named = _named(vlm, picked, prompts)
    assert min(named.values()) >= 0.9, named


def test_caption_batch_matches_the_processor():
    """The first training caption is CAPTION_PROMPT's query plus the name, tokenised as the processor does."""
    tok = vlm_tokenizer(converted_dir("gemma-3-270m"))
    proc = vlm_processor(tok, VLMSpec())
    img = render_augmented("🐺", random.Random(0))
    enc = proc(text=[CAPTION_PROMPT.query.format(x=proc.boi_token) + "wolf\n"], images=[[img]], return_tensors="pt")
    ours = caption_batch(proc, [["wolf"]], enc["pixel_values"], rng=random.Random(0), templates=CAPTION_TEMPLATES[:1])
    assert ours.input_ids[0].tolist() == enc["input_ids"][0].tolist()
    assert torch.equal(ours.token_type_ids, enc["token_type_ids"])
    scored = [tok.decode([int(ours.input_ids[0, i + 1])]) for i in (ours.targets[0] >= 0).nonzero().flatten()]
    assert scored == ["wolf", "\n"]


def test_render_pool_depends_on_the_seed_not_on_the_workers():
    """The pool's renders are drawn in order from one seed; worker processes only draw the glyphs,
    so a cached pool, a resumed run and a rerun on another machine see the same images."""
    proc = vlm_processor(vlm_tokenizer(converted_dir("gemma-3-270m")), VLMSpec())
    cs = [Concept("🐺", "wolf", "animals"), Concept("🍕", "pizza", "foods")]
    here = render_pool(cs, 3, proc, seed=5, workers=1, chunk=2, progress=False)
    in_workers = render_pool(cs, 3, proc, seed=5, workers=2, chunk=2, progress=False)
    assert here.shape == (2, 3, 3, VLMSpec().image_size, VLMSpec().image_size) and here.dtype == torch.uint8
    assert torch.equal(here, in_workers)
    # the renders are augmented: no two of a concept alike, and another seed gives other images
    assert not torch.equal(here[0, 0], here[0, 1])
    assert not torch.equal(here, render_pool(cs, 3, proc, seed=6, workers=1, progress=False))


def test_no_caption_is_written_as_an_icl_query():
    """A caption in the ICL prompts' own Q:/A: format teaches the VLM to name every image after Q:
    (the v0-v2 weights did, and image ICL sat at the floor); the shipped recipe has none."""
    icl_query = taskvec.GENERIC.query.format(x="{image}")
    for before, _, _ in TrainConfig().templates:
        assert before != icl_query and not before.endswith(taskvec.GENERIC.marker), before
    assert read_manifest()["train_config"]["templates"] == [list(t) for t in TrainConfig().templates], "the shipped weights are not this recipe's"


def test_the_shipped_weights_are_the_default_recipe():
    """Every knob of the shipped run is ``TrainConfig()``'s, so the model card's recipe and
    ``python analyses/train_embedded_vlm.py`` reproduce the shipped weights."""
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
    from vlm_recipe.trainer import _caption_loss, _frozen_lm_to_bf16

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
            losses = [_caption_loss(model, batch), icl_distill_loss(model, tokenizer, 2, seed=1)]
        sum(losses).backward()
        return [x.detach() for x in losses], [p.grad.clone() for p in lora]

    before = losses_and_grads()
    _frozen_lm_to_bf16(model)
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
    from vlm_recipe.trainer import NameAnchoredHead

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
