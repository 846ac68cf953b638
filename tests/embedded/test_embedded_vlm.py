"""The embedded VLM (gemma-3-270m-vlm): a real Gemma-3 VLM, built from the base LLM plus shipped weights."""

from __future__ import annotations

import random

import pytest
import torch

import taskvec
from taskvec.embedded import CAPTION_PROMPT
from taskvec.embedded.assemble import read_manifest
from taskvec.embedded.spec import VLMSpec, vlm_processor, vlm_tokenizer
from taskvec.models.loading import converted_dir
from vlm_recipe.concepts import Concept
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
