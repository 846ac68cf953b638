"""Layers spread by an accelerate ``device_map`` that mixes the CPU and disk offload give exactly
what the plain float32 load gives.

The tiny random Llama is loaded twice from one folder: plainly, and with ``device_map=MAP`` (the
embeddings, layers 0 and 2, the final norm and the rotary embedding on ``"cpu"``; layer 1 and
``lm_head`` on ``"disk"``) and ``offload_folder=`` (``taskvec.load`` forwards both to
``from_pretrained``). accelerate then keeps the disk modules' weights on the meta device and loads
them in a hook at each forward: from the checkpoint's own safetensors file, which it reads in
place, so the offload folder stays empty. Every operation runs through those hooks, the lens's
unembedding (a direct call of the offloaded ``lm_head``) and MimIC's training (gradients through
an offloaded layer) included, and gives the same numbers (float32 on the same kernels: equal to
1e-5) and the same predictions.
"""

from __future__ import annotations

import pytest
import torch

import taskvec

TASK = taskvec.get_task("country-capital")
VAL = TASK.pairs("val")
FIT_PAIRS = VAL[:12]
QUERIES = taskvec.zero_shot(TASK.pairs("test")[:30])
ICL = taskvec.sample_icl_prompts(VAL, TASK.pairs("test")[:30], n_shots=2)
LAYER = 1

MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
       "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
ON_DISK = [name for name, where in MAP.items() if where == "disk"]


@pytest.fixture(scope="module")
def offloaded(tiny_dir, tmp_path_factory) -> taskvec.Model:
    return taskvec.load(str(tiny_dir), device_map=MAP, offload_folder=str(tmp_path_factory.mktemp("offload")))


def _assert_offloaded(model: taskvec.Model) -> None:
    for name in ON_DISK:
        module = model.hf.get_submodule(name)
        assert {p.device.type for p in module.parameters()} == {"meta"}, name
        leaves = [m for m in module.modules() if list(m.parameters(recurse=False))]
        assert leaves and all(getattr(getattr(m, "_hf_hook", None), "offload", False) for m in leaves), name
    for name in (n for n, where in MAP.items() if where == "cpu"):
        module = model.hf.get_submodule(name)
        assert hasattr(module, "_hf_hook") and {p.device.type for p in module.parameters()} <= {"cpu"}, name


def test_accelerate_really_offloads_the_disk_modules(offloaded):
    assert offloaded.hf.hf_device_map == MAP
    assert offloaded.hf.dtype == torch.float32  # device_map loads the checkpoint's dtype ("auto")
    _assert_offloaded(offloaded)
    taskvec.predict(offloaded, QUERIES[:2], progress=False)
    _assert_offloaded(offloaded)  # the weights went back to the meta device after the forward


def test_lens_is_the_same(tiny, offloaded):
    want = taskvec.lens(tiny, ICL, top_k=3, progress=False)
    got = taskvec.lens(offloaded, ICL, top_k=3, progress=False)
    torch.testing.assert_close(got.hidden, want.hidden, atol=1e-5, rtol=0)
    assert got.df[["prompt", "layer", "rank", "token_id"]].equals(want.df[["prompt", "layer", "rank", "token_id"]])
    torch.testing.assert_close(torch.tensor(got.df.probability.values), torch.tensor(want.df.probability.values),
                               atol=1e-5, rtol=0)
    categories = {"input": [":"], "answer": [p.label for p in ICL]}
    torch.testing.assert_close(got.phases(categories).per_prompt, want.phases(categories).per_prompt, atol=1e-5, rtol=0)


def test_extraction_patching_and_the_layer_sweep_are_the_same(tiny, offloaded):
    want = taskvec.extract_icl(tiny, VAL, n_shots=2, progress=False)
    got = taskvec.extract_icl(offloaded, VAL, n_shots=2, progress=False)
    assert got.vectors.device.type == "cpu"
    torch.testing.assert_close(got.vectors, want.vectors, atol=1e-5, rtol=0)
    assert taskvec.patch_predict(offloaded, got, QUERIES, LAYER, progress=False) == \
        taskvec.patch_predict(tiny, want, QUERIES, LAYER, progress=False)
    sweep = taskvec.layer_sweep(offloaded, got, QUERIES, progress=False)
    assert sweep.equals(taskvec.layer_sweep(tiny, want, QUERIES, progress=False))
    assert taskvec.patch_generate(offloaded, got, QUERIES[:6], LAYER, max_new_tokens=3) == \
        taskvec.patch_generate(tiny, want, QUERIES[:6], LAYER, max_new_tokens=3)


def test_fit_mtv_and_its_inference_are_the_same(tiny, offloaded):
    settings = dict(n_trials=4, n_shots=2, steps=2, n_masks=4, n_candidates=2, progress=False)
    want = taskvec.fit_mtv(tiny, FIT_PAIRS, **settings)
    got = taskvec.fit_mtv(offloaded, FIT_PAIRS, **settings)
    assert torch.equal(got.intervention.mask, want.intervention.mask)
    torch.testing.assert_close(got.intervention.values, want.intervention.values, atol=1e-5, rtol=0)
    assert taskvec.predict(offloaded, QUERIES, intervention=got.intervention, progress=False) == \
        taskvec.predict(tiny, QUERIES, intervention=want.intervention, progress=False)


def test_fit_mimic_and_its_inference_are_the_same(tiny, offloaded):
    settings = dict(n_shots=2, steps=2, batch_size=4, progress=False)
    want = taskvec.fit_mimic(tiny, FIT_PAIRS, **settings)
    got = taskvec.fit_mimic(offloaded, FIT_PAIRS, **settings)
    for (name, p), (_, q) in zip(got.intervention.named_parameters(), want.intervention.named_parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(torch.tensor(got.history.loss.values), torch.tensor(want.history.loss.values),
                               atol=1e-5, rtol=0)
    assert taskvec.predict(offloaded, QUERIES, intervention=got.intervention, progress=False) == \
        taskvec.predict(tiny, QUERIES, intervention=want.intervention, progress=False)
    assert taskvec.generate(offloaded, QUERIES[:6], intervention=got.intervention, max_new_tokens=3) == \
        taskvec.generate(tiny, QUERIES[:6], intervention=want.intervention, max_new_tokens=3)
    _assert_offloaded(offloaded)  # training left the offloaded weights where accelerate keeps them


def test_bfloat16_with_the_same_map_is_the_plain_bfloat16_load(tiny_dir, tmp_path):
    """Half precision and offload together: the disk weights are cast as they are loaded in the
    hook, so every number is the plain bfloat16 load's, exactly."""
    half = taskvec.load(str(tiny_dir), dtype=torch.bfloat16)
    spread = taskvec.load(str(tiny_dir), dtype=torch.bfloat16, device_map=MAP, offload_folder=str(tmp_path))
    assert spread.hf.dtype == torch.bfloat16
    _assert_offloaded(spread)
    want, got = taskvec.lens(half, ICL, progress=False), taskvec.lens(spread, ICL, progress=False)
    assert torch.equal(got.hidden, want.hidden) and got.df.equals(want.df)
    want_vector = taskvec.extract_icl(half, VAL, n_shots=2, progress=False)
    vector = taskvec.extract_icl(spread, VAL, n_shots=2, progress=False)
    assert torch.equal(vector.vectors, want_vector.vectors)
    assert taskvec.patch_predict(spread, vector, QUERIES, LAYER, progress=False) == \
        taskvec.patch_predict(half, want_vector, QUERIES, LAYER, progress=False)
