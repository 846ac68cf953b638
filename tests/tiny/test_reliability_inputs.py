"""Reliability audit (issue 24), arguments, prompts and images on tiny random models: layers,
positions, counts, modes and prompt lists are refused at the boundary, before any work, with a
message naming the argument, the value and the fix; images of any PIL mode reach the processor as
scaled RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import taskvec
from taskvec.models.tiny import build_tiny

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]




@pytest.fixture(scope="module")
def queries() -> list[taskvec.Prompt]:
    return taskvec.zero_shot(PAIRS)


@pytest.fixture(scope="module")
def vector(tiny) -> taskvec.TaskVector:
    return taskvec.extract_icl(tiny, PAIRS, n_shots=2, progress=False)


class Spy:
    """Counts the model's forwards, to show a refusal comes before any work."""

    def __init__(self, model: taskvec.Model) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> "Spy":
        def hook(*_):
            self.calls += 1
        self.handle = self.model.hf.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _refused(model, call, match):
    with Spy(model) as spy, pytest.raises(taskvec.TaskvecError, match=match) as err:
        call()
    assert spy.calls == 0, "the argument was refused only after the model ran"
    return str(err.value)


# --- layers -------------------------------------------------------------------------------------


def test_LY3_a_float_layer_is_refused_naming_layers_and_the_range(tiny, vector, queries):
    n = tiny.n_layers
    msg = _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, queries, 2.5, progress=False),
                   r"layers=2\.5 is not an integer")
    assert f"0..{n - 1}" in msg
    _refused(tiny, lambda: taskvec.layer_sweep(tiny, vector, queries, layers=2.5, progress=False), "layers=2.5")


def test_LY4_a_string_layer_is_refused_not_split_into_digits(tiny, vector, queries):
    for bad in ("3", "12"):
        _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, queries, bad, progress=False),
                 f"layers='{bad}' is a string, not a layer: pass a layer index")
        _refused(tiny, lambda: taskvec.lens(tiny, queries, layers=bad, progress=False), f"layers='{bad}'")
        _refused(tiny, lambda: vector.patch(bad), "string")


def test_LY5_a_bool_layer_is_refused(tiny, vector, queries):
    _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, queries, True, progress=False),
             "layers=True is not an integer")
    _refused(tiny, lambda: taskvec.lens(tiny, queries, layers=[True], progress=False), r"layers\[0\]=True")


def test_LY7_lens_refuses_float_and_string_layers_in_a_list(tiny, queries):
    _refused(tiny, lambda: taskvec.lens(tiny, queries, layers=[2.5], progress=False),
             r"layers\[0\]=2\.5 is not an integer .* pass a layer index in 0\.\.")
    _refused(tiny, lambda: taskvec.lens(tiny, queries, layers=[1, "3"], progress=False), r"layers\[1\]='3'")
    _refused(tiny, lambda: taskvec.residuals_at(tiny, queries, layers=[99], progress=False),
             r"layers\[0\]=99 is out of range")
    _refused(tiny, lambda: taskvec.collect(tiny, queries, layers=[0, 2.5], progress=False), r"layers\[1\]=2\.5")


def test_LY8_lens_takes_one_integer_layer(tiny, queries):
    r = taskvec.lens(tiny, queries[:2], layers=1, top_k=2, progress=False)
    assert r.layers == [1] and r.hidden.shape[:2] == (2, 1)
    assert taskvec.lens(tiny, queries[:2], layers=np.int64(1), top_k=2, progress=False).layers == [1]


# --- prompts and counts -------------------------------------------------------------------------


def test_P02_an_empty_prompt_list_is_refused_by_every_runner(tiny):
    for call in (lambda: taskvec.predict(tiny, []), lambda: taskvec.first_token_logits(tiny, []),
                 lambda: taskvec.generate(tiny, []), lambda: taskvec.run(tiny, [], out="logits"),
                 lambda: taskvec.lens(tiny, []), lambda: taskvec.collect(tiny, [])):
        _refused(tiny, call, r"prompts=\[\] is empty: pass at least one prompt")
    _refused(tiny, lambda: taskvec.predict(tiny, "Q:France\nA:"), "is one prompt: pass a list of prompts")


def test_P03_patch_predict_checks_mode_and_queries_before_any_work(tiny, vector, queries):
    _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, [], 1, mode="multiply"),
             r"mode='multiply': use one of \('replace', 'add'\)")
    _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, [], 1), r"queries=\[\] is empty")
    _refused(tiny, lambda: taskvec.patch_generate(tiny, vector, queries, 1, mode="mul"), "mode='mul'")
    _refused(tiny, lambda: taskvec.layer_sweep(tiny, vector, queries, mode="mul", progress=False), "mode='mul'")
    _refused(tiny, lambda: taskvec.patch_predict(tiny, "v.safetensors", queries, 1), "vector='v.safetensors' is a str")


def test_P06_a_query_without_answer_marker_names_icl_prompt(tiny, vector):
    for bad in (["Hello world"], [taskvec.Prompt("France")]):
        _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, bad, 1, progress=False),
                 r"prompt 0 .* is free text .*build queries with taskvec\.icl_prompt\(\[\], x\)")


def test_P06c_a_string_query_with_a_delimiter_names_icl_prompt_not_the_data(tiny, vector):
    msg = _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, ["Q:France\nA:"], 1, progress=False),
                   r"taskvec\.icl_prompt\(\[\], x\)")
    assert "marker text itself" not in msg
    # the same query built with icl_prompt runs
    assert len(taskvec.patch_predict(tiny, vector, [taskvec.icl_prompt([], "France")], 1, progress=False)) == 1


def test_P09_a_float_position_is_refused_naming_position(tiny, queries):
    _refused(tiny, lambda: taskvec.lens(tiny, queries, position=2.5, progress=False),
             r"position=2\.5 is not a whole number: pass a token index")
    _refused(tiny, lambda: taskvec.residuals_at(tiny, queries, position="last", progress=False), "position='last'")
    with pytest.raises(taskvec.TaskvecError, match=r"position=99 is outside prompt 0.*-1 is the last token"):
        taskvec.lens(tiny, queries[:1], position=99, progress=False)


def test_P10b_top_k_above_the_vocabulary_is_refused_before_any_work(tiny, queries):
    vocab = tiny.vocab_size
    assert vocab == tiny.hf.get_output_embeddings().weight.shape[0]
    msg = _refused(tiny, lambda: taskvec.lens(tiny, queries, top_k=vocab + 1, progress=False),
                   f"top_k={vocab + 1} is out of range: pass a whole number in 1..{vocab}")
    assert f"scores {vocab} tokens" in msg
    _refused(tiny, lambda: taskvec.lens(tiny, queries, top_k=0, progress=False), "top_k=0")
    assert taskvec.lens(tiny, queries[:1], layers=[0], top_k=vocab, progress=False).df.shape[0] == vocab


def test_P13b_extract_instruction_of_none_names_the_instruction(tiny):
    _refused(tiny, lambda: taskvec.extract_instruction(tiny, None), "instruction=None is a NoneType")


def test_P16_max_new_tokens_below_one_is_refused_naming_it(tiny, vector, queries):
    _refused(tiny, lambda: taskvec.patch_generate(tiny, vector, queries, 1, max_new_tokens=0),
             "max_new_tokens=0: pass a whole number >= 1")
    _refused(tiny, lambda: taskvec.generate(tiny, queries, max_new_tokens=-2), "max_new_tokens=-2")
    _refused(tiny, lambda: taskvec.run(tiny, queries, out="generate", max_new_tokens=0), "max_new_tokens=0")
    assert len(taskvec.patch_generate(tiny, vector, queries[:1], 1, max_new_tokens=1)) == 1


def test_P17_a_batch_mixing_templates_says_so(tiny, vector):
    other = taskvec.Template(name="inout", demo="In:{x}\nOut:{y}\n", query="In:{x}\nOut:", marker="Out:")
    mixed = [taskvec.icl_prompt([], "France"), taskvec.icl_prompt([], "Japan", template=other)]
    msg = _refused(tiny, lambda: taskvec.patch_predict(tiny, vector, mixed, 1, progress=False),
                   "prompts 0 and 1 of one batch use different templates")
    assert "same template=" in msg and "marker text itself" not in msg
    # each template alone works, in separate batches
    assert len(taskvec.patch_predict(tiny, vector, mixed, 1, batch_size=1, progress=False)) == 2


def test_counts_and_choices_of_the_runner_are_checked_first(tiny, queries):
    _refused(tiny, lambda: taskvec.predict(tiny, queries, batch_size=0), "batch_size=0: pass a whole number >= 1")
    _refused(tiny, lambda: taskvec.predict(tiny, queries, batch_size=True), "batch_size=True")
    _refused(tiny, lambda: taskvec.run(tiny, queries, out="text"), r"out='text': use one of")
    _refused(tiny, lambda: taskvec.predict(tiny, queries, intervention="v"), "intervention='v' is a str")
    _refused(tiny, lambda: taskvec.collect(tiny, queries, site="mlp"), "site='mlp'")
    _refused(tiny, lambda: taskvec.collect(tiny, queries, at=1.5), "at=1.5")


def test_a_query_only_batch_read_at_last_demo_names_what_is_missing(tiny, queries):
    _refused(tiny, lambda: taskvec.read_residuals(tiny, queries, progress=False), "has no demonstration")
    demos_only = [taskvec.icl_prompt(PAIRS[:2], None)]
    _refused(tiny, lambda: taskvec.collect(tiny, demos_only, at="query"), "prompt 0 has no query")
    # demonstrations without a query: the last demonstration is the last delimiter
    batch = tiny.encode(demos_only)
    assert int(taskvec.sites.positions.resolve(tiny, batch, "last_demo")[0]) == tiny.delimiters(batch)[0][-1]


# --- images -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> taskvec.Model:
    torch.manual_seed(0)
    return taskvec.load(str(build_tiny("idefics2", tmp_path_factory.mktemp("idefics2-inputs"))))


def test_I03_an_image_that_is_not_a_PIL_image_is_refused_before_the_processor(vlm):
    with pytest.raises(taskvec.TaskvecError, match=r"images\[0\]='hello' is a str, not a PIL image"):
        taskvec.predict(vlm, [taskvec.Prompt(f"Q:{taskvec.IMAGE}\nA:", images=("hello",))])


def test_I07c_a_16_bit_greyscale_image_reaches_the_model_scaled_not_white(vlm):
    ramp = (np.arange(32 * 32, dtype=np.float64).reshape(32, 32) / (32 * 32 - 1) * 255).round()
    wide = Image.fromarray((ramp * 257).astype(np.uint16))
    assert wide.mode == "I;16"
    same = Image.fromarray(ramp.astype(np.uint8)).convert("RGB")
    got = vlm.encode([taskvec.icl_prompt([], wide)]).inputs["pixel_values"]
    want = vlm.encode([taskvec.icl_prompt([], same)]).inputs["pixel_values"]
    torch.testing.assert_close(got, want)
    clipped = vlm.encode([taskvec.icl_prompt([], wide.convert("RGB"))]).inputs["pixel_values"]
    assert not torch.allclose(clipped, want)  # what PIL alone would have given
    # other modes (palette, transparent, CMYK) run too
    for im in (same.convert("P"), same.convert("LA"), same.convert("CMYK")):
        assert len(taskvec.predict(vlm, [taskvec.icl_prompt([], im)], progress=False)) == 1


def test_rule_1_many_shot_methods_check_their_settings_before_any_work(tiny):
    pairs = PAIRS * 2
    _refused(tiny, lambda: taskvec.fit_mtv(tiny, pairs, steps=0, progress=False), "steps=0: pass a whole number >= 1")
    _refused(tiny, lambda: taskvec.fit_mtv(tiny, pairs, n_candidates=0, progress=False), "n_candidates=0")
    _refused(tiny, lambda: taskvec.fit_mtv(tiny, pairs, lr=float("nan"), progress=False), "lr=nan: pass a learning")
    _refused(tiny, lambda: taskvec.fit_mtv(tiny, pairs, init_p=1.5, progress=False), "init_p=1.5")
    _refused(tiny, lambda: taskvec.mtv_means(tiny, pairs, n_trials=-1, progress=False), "n_trials=-1")
    _refused(tiny, lambda: taskvec.activation_deltas(tiny, pairs, n_pairs=0, progress=False), "n_pairs=0")
    _refused(tiny, lambda: taskvec.activation_deltas(tiny, pairs, n_shots=2.5, progress=False), "n_shots=2.5")
    _refused(tiny, lambda: taskvec.extract_icl(tiny, pairs, n_shots=-1, progress=False), "n_shots=-1")
    with pytest.raises(taskvec.TaskvecError, match="max_new_tokens=0"):
        tiny.generate(tiny.encode(["Q:a\nA:"]), max_new_tokens=0)


def test_rule_1_a_lens_result_checks_layers_ids_and_counts(tiny, queries):
    r = taskvec.lens(tiny, queries[:2], layers=[0, 2], top_k=2, progress=False)
    with pytest.raises(taskvec.TaskvecError, match="layer 1 was not decoded"):
        r.figure_top1_distribution(layers=[1])
    with pytest.raises(taskvec.TaskvecError, match="layers='2' is a string"):
        r.figure_top1_distribution(layers="2")
    with pytest.raises(taskvec.TaskvecError, match="max_tokens=0"):
        r.figure_top1_distribution(max_tokens=0)
    with pytest.raises(taskvec.TaskvecError, match=rf"ids\[0\]={tiny.vocab_size} is out of range"):
        r.probabilities([tiny.vocab_size])
    with pytest.raises(taskvec.TaskvecError, match="prompt=1.0 is not a whole number"):
        r.figure_table(1.0)
    with pytest.raises(taskvec.TaskvecError, match="tokens='Paris': pass a list of words"):
        r.phases({"answer": "Paris"})
    assert r.probabilities([0, 1]).shape == (2, 2, 2)
