"""One intervention protocol, one runner, on a tiny random Llama: every intervention gives through
``taskvec.predict`` / ``run`` / ``generate`` what its own entry point gives, writes only where it
says, and the layer and position checks refuse what they should."""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.interventions.run import batch_logits
from taskvec.sites.positions import resolve

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
         ("Egypt", "Cairo")]



@pytest.fixture(scope="module")
def queries() -> list[taskvec.Prompt]:
    return taskvec.zero_shot(PAIRS)


@pytest.fixture(scope="module")
def vector(tiny) -> taskvec.TaskVector:
    return taskvec.extract_icl(tiny, PAIRS, n_shots=2, progress=False)


def test_a_task_vector_patch_through_the_runner_is_patch_predict(tiny, vector, queries):
    layer = tiny.n_layers // 2
    assert taskvec.predict(tiny, queries, intervention=vector.patch(layer), progress=False) == \
        taskvec.patch_predict(tiny, vector, queries, layer, progress=False)
    assert taskvec.run(tiny, queries, vector.patch(layer), out="predict", progress=False) == \
        taskvec.patch_predict(tiny, vector, queries, layer, progress=False)


def test_a_patch_changes_only_what_it_patches(tiny, vector, queries):
    batch = tiny.encode(queries)
    clean = batch_logits(tiny, batch)
    torch.testing.assert_close(batch_logits(tiny, batch, taskvec.ResidualPatch(torch.zeros_like(vector.vectors),
                                                                               [0], mode="add")), clean)
    assert not torch.allclose(batch_logits(tiny, batch, vector.patch(0)), clean, atol=1e-4)


def test_head_intervention_and_mimic_run_through_the_one_runner(tiny, queries):
    shape = (tiny.n_layers, tiny.n_heads, tiny.d_head)
    mask = torch.zeros(shape[:2], dtype=torch.bool)
    mask[0, 0] = True
    iv = taskvec.HeadIntervention(torch.randn(shape), mask, tiny.name, "mtv")
    assert iv.predict(tiny, queries, progress=False) == taskvec.predict(tiny, queries, intervention=iv, progress=False)
    logits = taskvec.run(tiny, queries, iv, out="logits", progress=False)
    assert logits.shape == (len(queries), tiny.hf.config.vocab_size)
    assert not torch.allclose(logits, taskvec.first_token_logits(tiny, queries, progress=False), atol=1e-4)
    # a zero MimIC leaves the model unchanged, through the runner as through its own methods
    mim = taskvec.MimIC.for_model(tiny)
    torch.testing.assert_close(mim.logits(tiny, tiny.encode(queries)),
                               taskvec.first_token_logits(tiny, queries, progress=False), atol=1e-5, rtol=1e-5)
    out = taskvec.generate(tiny, queries[:2], intervention=iv, max_new_tokens=2)
    assert out == iv.generate(tiny, queries[:2], max_new_tokens=2) and len(out) == 2


def test_an_intervention_for_another_shape_is_refused_before_any_work(tiny, queries):
    wrong = taskvec.ResidualPatch(torch.zeros(tiny.n_layers + 1, tiny.d_model), [0])
    with pytest.raises(taskvec.TaskvecError, match="extract the vector from this model"):
        taskvec.predict(tiny, queries, intervention=wrong, progress=False)
    with pytest.raises(taskvec.TaskvecError, match="out="):
        taskvec.run(tiny, queries, out="text")


def test_positions_are_resolved_once_per_batch(tiny):
    prompts = [taskvec.icl_prompt(PAIRS[:2], "Kenya"), taskvec.icl_prompt(PAIRS[:1], "Chile")]
    batch = tiny.encode(prompts)
    first = resolve(tiny, batch, "last_demo")
    assert resolve(tiny, batch, "last_demo") is first and set(batch.positions) == {"last_demo"}
    delims = tiny.delimiters(batch)
    assert first.tolist() == [d[-2] for d in delims]
    assert resolve(tiny, batch, "query").tolist() == [d[-1] for d in delims]


def test_one_layer_check_for_every_operation(tiny):
    n = tiny.n_layers
    assert tiny.check_layers(None) == list(range(n))
    assert tiny.check_layers([n - 1, 0, -1]) == [0, n - 1]
    assert tiny.check_layers(torch.tensor(1)) == [1]
    for bad, message in [("12", "string"), ([2.5], "not an integer"), ([True], "not an integer"), ([n], "out of range"),
                         ([], "no layer")]:
        with pytest.raises(taskvec.TaskvecError, match=message):
            tiny.check_layers(bad)
