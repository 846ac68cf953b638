"""The embedded Gemma-3-270m in bfloat16 against float32, and why it cannot run in float16.

bfloat16 (``taskvec.load("gemma-3-270m", dtype=torch.bfloat16)``) is compared with the session's
float32 model on 30 country-capital test queries: zero-shot and 5-shot ICL predictions, patching
a task vector at the layer the float32 vector's layer sweep picks, and the lens's top-1 at the
last layer.

Where the two differ, float32's own top two logits were nearly tied: bfloat16 keeps 8 significant
bits, so logits of magnitude ~20 come out in steps of 0.125, and a float32 lead of less than
``NEAR_TIE`` (0.25 logit, two such steps) can flip. Every comparison asserts that only such
near-ties differ. The ICL, patching and lens comparisons also agree on >= 90% of the queries
(measured: 97%, 93%, 97%). Zero-shot does not reach 90% for that reason alone and is held to 80%:
the 270M model has no idea of most capitals without demonstrations (7% correct), half its
zero-shot top-two leads are under 0.25 logit, and it agreed on 87-90% (with batches of 32 or 16).

float16 is an expected limitation, asserted as observed: Gemma-3's residual stream grows to
~3e4 in float32 at the query's delimiter and further at the first positions, past float16's
largest value (65504): some residuals are inf by layer 7 and every position is NaN from layer 8
on. Every operation refuses with an error that names the overflow and the fix (load Gemma in
bfloat16 or float32); before, ``predict`` and ``lens`` decoded the NaN logits into ``'<pad>'`` and
``'<unk>'`` without a word.

``taskvec.load`` gives every model's unembedding a contiguous input: with ``logits_to_keep=1``
transformers passes it the strided slice ``hidden[:, -1:]``, on which torch's CPU
bfloat16/float16 matmul takes ~40 s for 8 rows of Gemma's 262k-token unembedding (~0.1 s
contiguous); without it this file would take ~15 minutes.
"""

from __future__ import annotations

import pytest
import torch

import taskvec

TASK = taskvec.get_task("country-capital")
VAL = TASK.pairs("val")
TEST = TASK.pairs("test")[:30]
QUERIES = taskvec.zero_shot(TEST)
ICL = taskvec.sample_icl_prompts(VAL, TEST, n_shots=5)
VECTOR_PAIRS, SWEEP_PAIRS = VAL[:12], VAL[12:24]
NEAR_TIE = 0.25


@pytest.fixture(scope="module")
def bf16() -> taskvec.Model:
    return taskvec.load("gemma-3-270m", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def fp32_vector(gemma) -> tuple[taskvec.TaskVector, int]:
    """The float32 task vector and the layer its validation sweep picks."""
    vector = taskvec.extract_icl(gemma, VECTOR_PAIRS, n_shots=3, progress=False)
    sweep = taskvec.layer_sweep(gemma, vector, taskvec.zero_shot(SWEEP_PAIRS), progress=False)
    return vector, taskvec.best_layer(sweep)


def _greedy(model: taskvec.Model, logits: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """float32's greedy tokens (as ``predict`` decodes them) and the lead of each over the runner-up."""
    top = logits.topk(2, dim=-1).values
    return [model.tokenizer.decode([int(i)]) for i in logits.argmax(dim=-1)], top[:, 0] - top[:, 1]


def assert_agree(what: str, got: list[str], want: list[str], lead: torch.Tensor, floor: float = 0.9) -> None:
    assert len(got) == len(want) == len(lead) == len(TEST)
    same = [a == b for a, b in zip(got, want)]
    share = sum(same) / len(same)
    print(f"{what}: bfloat16 agrees with float32 on {share:.1%} of {len(same)}; float32 leads where they differ: "
          f"{[round(float(x), 3) for x, s in zip(lead, same) if not s]}")
    decisive = [(i, got[i], want[i], round(float(lead[i]), 3)) for i, s in enumerate(same) if not s and lead[i] >= NEAR_TIE]
    assert not decisive, f"{what}: bfloat16 differs where float32 led by >= {NEAR_TIE} logit: {decisive}"
    assert share >= floor, f"{what}: bfloat16 agrees with float32 on only {share:.0%} (floor {floor:.0%})"


def test_bf16_zero_shot_and_icl_predictions_agree(gemma, bf16):
    assert bf16.hf.dtype == torch.bfloat16
    want, lead = _greedy(gemma, taskvec.first_token_logits(gemma, QUERIES, progress=False))
    assert_agree("zero-shot predict", taskvec.predict(bf16, QUERIES, progress=False), want, lead, floor=0.8)
    want, lead = _greedy(gemma, taskvec.first_token_logits(gemma, ICL, progress=False))
    assert_agree("5-shot ICL predict", taskvec.predict(bf16, ICL, progress=False), want, lead)


def test_bf16_patching_agrees_at_the_fp32_sweeps_layer(gemma, bf16, fp32_vector):
    vector, layer = fp32_vector
    got = taskvec.extract_icl(bf16, VECTOR_PAIRS, n_shots=3, progress=False)
    assert (got.vectors.dtype, got.vectors.device.type) == (torch.float32, "cpu")
    err = (got.vectors - vector.vectors).norm(dim=-1) / vector.vectors.norm(dim=-1)
    assert (err < 0.02).all(), err  # bfloat16 keeps ~3 significant digits
    want, lead = _greedy(gemma, taskvec.run(gemma, QUERIES, vector.patch(layer), out="logits", progress=False))
    assert want == taskvec.patch_predict(gemma, vector, QUERIES, layer, progress=False)
    assert_agree(f"patch_predict at layer {layer}", taskvec.patch_predict(bf16, got, QUERIES, layer, progress=False),
                 want, lead)


def test_bf16_lens_top1_at_the_last_layer_agrees(gemma, bf16):
    last = [gemma.n_layers - 1]
    got = taskvec.lens(bf16, ICL, layers=last, top_k=1, progress=False)
    want = taskvec.lens(gemma, ICL, layers=last, top_k=2, progress=False).df
    assert (got.hidden.dtype, got.hidden.device.type) == (torch.float32, "cpu") and torch.isfinite(got.hidden).all()
    top = want.pivot(index="prompt", columns="rank", values="logit")
    assert_agree("lens top-1 at the last layer", got.top1().token.tolist(), want[want["rank"] == 0].token.tolist(),
                 torch.tensor((top[0] - top[1]).values))


def test_fp16_overflows_gemma_and_every_operation_says_so():
    """Expected limitation (see the module docstring): the float16 residuals are NaN from layer 8
    on; predict, the logits, the lens and the extraction each refuse, naming float16 and the fix."""
    fp16 = taskvec.load("gemma-3-270m", dtype=torch.float16)
    prompts = ICL[:2]
    _, rows = taskvec.read_residuals(fp16, prompts, at="last", keep=True, progress=False)
    finite = torch.isfinite(rows).all(dim=-1)  # [prompt, layer]
    assert finite[:, :8].all() and not finite[:, 8:].any()  # fine up to layer 7, NaN from layer 8 on
    fix = "overflow float16.*dtype=torch.bfloat16"
    with pytest.raises(taskvec.TaskvecError, match=fix):
        taskvec.predict(fp16, prompts, progress=False)
    with pytest.raises(taskvec.TaskvecError, match=fix):
        taskvec.first_token_logits(fp16, prompts, progress=False)
    with pytest.raises(taskvec.TaskvecError, match=fix):
        taskvec.lens(fp16, prompts, layers=[fp16.n_layers - 1], top_k=1, progress=False)
    with pytest.raises(taskvec.TaskvecError, match="holds NaN or inf"):
        taskvec.extract_icl(fp16, VAL[:3], n_shots=2, progress=False)
