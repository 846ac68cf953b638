"""Every supported architecture on CUDA, against a CPU run of the same tiny random model: the lens,
the model's logits and a patch give the CPU's numbers, results come back to the CPU, and bfloat16
weights predict what float32 ones do (image inputs included: the processor's float32 pixels must
meet bf16 weights)."""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.models.architectures import ARCHITECTURES

from .helpers import AGREEMENT, DEVICE, PAIRS, QUERIES, agreement, devices, image, logit_agreement, on_cpu


def _prompts(m: taskvec.Model) -> list[taskvec.Prompt]:
    """Two ICL prompts of different lengths (left padding), with images on a VLM (as tests/tiny)."""
    if m.is_vlm and m.arch.max_images_per_prompt is None:
        return [taskvec.icl_prompt([(image(1), "red"), (image(2), "blue")], image(3), label="red"),
                taskvec.icl_prompt([(image(4), "green")], image(5), label="green")]
    if m.is_vlm:  # one image per prompt (Fuyu): text demonstrations, image query
        return [taskvec.icl_prompt([("a ripe tomato", "red"), ("the sky", "blue")], image(3), label="red"),
                taskvec.icl_prompt([("grass", "green")], image(5), label="green")]
    return [taskvec.icl_prompt(PAIRS[:2], "Italy", label="Rome"), taskvec.icl_prompt(PAIRS[2:3], "Spain")]


def _query_sets(m: taskvec.Model) -> list[list[taskvec.Prompt]]:
    """Ten text queries, and on a VLM four image queries (a batch takes images in every prompt or none)."""
    sets = [taskvec.zero_shot(QUERIES)]
    if m.is_vlm:
        sets.append([taskvec.icl_prompt([], image(10 + i), label="x") for i in range(4)])
    return sets


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def folder(request, tiny_dirs) -> str:
    return str(tiny_dirs(request.param))


@pytest.fixture(scope="module")
def pair(folder) -> tuple[taskvec.Model, taskvec.Model]:
    """(the tiny model on the CPU, the same folder loaded onto the device under test)."""
    return taskvec.load(folder), taskvec.load(folder, device=DEVICE)


def test_weights_go_to_the_device(pair):
    cpu, gpu = pair
    assert devices(gpu) == {DEVICE}
    assert gpu.device.type == DEVICE and cpu.device.type == "cpu"
    assert {p.dtype for p in gpu.hf.parameters()} == {torch.float32}  # device= alone keeps float32 for a folder
    assert gpu.name == cpu.name and gpu.n_layers == cpu.n_layers


def test_lens_logits_and_patch_match_the_cpu(pair):
    cpu, gpu = pair
    prompts = _prompts(gpu)
    got, want = (taskvec.lens(m, prompts, top_k=3, progress=False) for m in (gpu, cpu))
    on_cpu(got.hidden)
    assert got.hidden.shape == (2, gpu.n_layers, gpu.d_model) and got.hidden.dtype == torch.float32
    torch.testing.assert_close(got.hidden, want.hidden, atol=1e-3, rtol=1e-3)
    assert agreement(got.top1().token.tolist(), want.top1().token.tolist()) >= AGREEMENT

    vector = taskvec.TaskVector(got.hidden[0], gpu.name, "custom", "tiny", 1)  # float32, on the CPU
    for queries in _query_sets(gpu):
        logits = taskvec.first_token_logits(gpu, queries, progress=False)
        on_cpu(logits)
        assert logits.shape[0] == len(queries) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, taskvec.first_token_logits(cpu, queries, progress=False), atol=1e-3,
                                   rtol=1e-3)
        # the lens's last layer is the model's own logits, on the device as on the CPU
        last = taskvec.lens(gpu, queries[:2], progress=False).hidden[:, -1]
        with torch.no_grad():
            torch.testing.assert_close(gpu.unembed(last).float().cpu(), logits[:2], atol=1e-3, rtol=1e-3)

        patched = taskvec.patch_predict(gpu, vector, queries, [1], progress=False)
        assert len(patched) == len(queries)
        assert agreement(patched, taskvec.patch_predict(cpu, vector, queries, [1], progress=False)) >= AGREEMENT
        assert not torch.allclose(taskvec.first_token_logits(gpu, queries, intervention=vector.patch(1), progress=False),
                                  logits, atol=1e-4), "the patch changed nothing"


def test_bfloat16_predicts_what_float32_does(pair, folder):
    cpu, _ = pair
    half = taskvec.load(folder, device=DEVICE, dtype=torch.bfloat16)
    assert {p.dtype for p in half.hf.parameters() if p.is_floating_point()} == {torch.bfloat16}
    for queries in _query_sets(half):
        logits = taskvec.first_token_logits(half, queries, progress=False)
        on_cpu(logits)
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
        full = taskvec.first_token_logits(cpu, queries, progress=False)
        plain = (logits.argmax(-1) == full.argmax(-1)).float().mean()
        assert logit_agreement(logits, full) >= AGREEMENT, f"bf16 top-1 = fp32 top-1 on {plain:.0%} of the queries"
        assert len(taskvec.predict(half, queries, progress=False)) == len(queries)
        # a float32 vector from the CPU model is cast where it is written into the bf16 model
        vector = taskvec.TaskVector(taskvec.lens(cpu, queries[:1], progress=False).hidden[0], cpu.name, "custom",
                                    "tiny", 1)
        patch = vector.patch(1)
        assert logit_agreement(taskvec.first_token_logits(half, queries, intervention=patch, progress=False),
                               taskvec.first_token_logits(cpu, queries, intervention=patch, progress=False)) >= AGREEMENT
