"""Every supported architecture, end to end through its adapter row, on tiny random instances.

Each model is a real transformers class with its real processor class, built offline by
:func:`taskvec.models.tiny.build_tiny`, saved with ``save_pretrained`` and loaded with ``taskvec.load``
exactly as a hub id would be. Checks: (a) layer outputs equal transformers' own hidden states,
(b) head inputs have the per-head width, (c) delimiters are found after image-token expansion
and left padding, (d) the lens and patching run and agree with the model's own logits; plus the
error for too many images, and what ``load()`` passes on (the error for an unknown
architecture needs no model: tests/unit/test_architectures.py).
"""

from __future__ import annotations

import nnsight
import numpy as np
import pytest
import torch
from PIL import Image

import taskvec
from taskvec.models.architectures import ARCHITECTURES, resolve
from taskvec.methods.patching import cached_patched_logits, patched_logits, prefix_cache
from taskvec.inputs.positions import marker_ids
from taskvec.models.tiny import RECIPES, build_tiny

TEXT = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"]
VLM = ["llava", "llava_next", "idefics2", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "gemma3", "fuyu"]


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))



@pytest.fixture(scope="module", params=TEXT + VLM)
def tiny(request, tmp_path_factory) -> taskvec.Model:
    return taskvec.load(str(build_tiny(request.param, tmp_path_factory.mktemp(request.param))))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    return str(build_tiny("llama", tmp_path_factory.mktemp("llama-kwargs")))


def _prompts(m: taskvec.Model) -> list[taskvec.Prompt]:
    """Two ICL prompts of different lengths (3 and 2 answer markers), so the second is left-padded."""
    if m.is_vlm and m.arch.max_images_per_prompt is None:
        long = taskvec.icl_prompt([(_image(1), "red"), (_image(2), "blue")], _image(3), label="red")
        short = taskvec.icl_prompt([(_image(4), "green")], _image(5), label="green")
    elif m.is_vlm:  # one image per prompt (Fuyu): text demonstrations, image query
        long = taskvec.icl_prompt([("a ripe tomato", "red"), ("the sky", "blue")], _image(3), label="red")
        short = taskvec.icl_prompt([("grass", "green")], _image(5), label="green")
    else:
        long = taskvec.icl_prompt([("France", "Paris"), ("Japan", "Tokyo")], "Italy", label="Rome")
        short = taskvec.icl_prompt([("Peru", "Lima")], "Spain", label="Madrid")
    return [long, short]


def test_every_table_row_has_a_tiny_recipe():
    assert set(ARCHITECTURES) == set(RECIPES) == set(TEXT + VLM)
    assert {a for a, row in ARCHITECTURES.items() if row.is_vlm} == set(VLM)


def test_layers_and_heads_match_transformers(tiny):
    """(a) layer i's output == transformers' hidden_states[i + 1]; (b) head inputs are [b, s, H*Dh]."""
    batch = tiny.encode(_prompts(tiny))
    n, width = tiny.n_layers, tiny.n_heads * tiny.d_head
    with torch.no_grad():
        with tiny.trace(batch):
            heads, layers = nnsight.save([]), nnsight.save([])
            for i in range(n):
                heads.append(tiny.head_input(i).input.save())
                layers.append(tiny.residual(tiny.layers()[i].output).save())
        reference = tiny.hf(**batch.inputs, output_hidden_states=True).hidden_states
        b, s = batch.input_ids.shape
        assert len(reference) == n + 1
        for i in range(n):
            assert heads[i].shape == (b, s, width), f"head input of layer {i}"
            assert layers[i].shape == (b, s, tiny.d_model), f"output of layer {i}"
            out = layers[i]
            if i == n - 1:  # transformers reports the last hidden state after the final norm
                out = resolve(tiny.hf, tiny.arch.norm)(out)
            torch.testing.assert_close(out, reference[i + 1], atol=1e-5, rtol=1e-4, msg=f"layer {i}")


def test_delimiters_after_image_expansion_and_left_padding(tiny):
    """(c) the delimiters are the ':' of each 'A:' although every image expands into several
    tokens; in a left-padded batch they are the single-prompt positions shifted by the padding,
    and the residual there is the single-prompt one."""
    prompts = _prompts(tiny)
    batch = tiny.encode(prompts)
    ids, mask = batch.input_ids, batch.inputs["attention_mask"]
    marker = marker_ids(tiny.tokenizer, taskvec.GENERIC)
    assert tiny.tokenizer.decode(marker[-1:]) == ":"
    pad = int((mask[1] == 0).sum())
    assert pad > 0 and mask[1, :pad].eq(0).all() and mask[0].eq(1).all(), "the shorter prompt is padded on the left"
    found = tiny.delimiters(batch)
    assert [len(d) for d in found] == [3, 2]
    for row, positions in enumerate(found):
        for p in positions:
            assert ids[row, p - len(marker) + 1 : p + 1].tolist() == marker
        if tiny.is_vlm:
            n_images = prompts[row].n_images
            n_image_tokens = int((ids[row] == tiny.hf.config.image_token_id).sum())
            assert n_image_tokens % n_images == 0 and n_image_tokens // n_images > 1, n_image_tokens
    alone = tiny.encode(prompts[1:])
    assert found[1] == [p + pad for p in tiny.delimiters(alone)[0]]
    _, batched = taskvec.read_residuals(tiny, prompts, at="query", progress=False, keep=True)
    single, _ = taskvec.read_residuals(tiny, prompts[1:], at="query", progress=False)
    torch.testing.assert_close(batched[1], single, atol=1e-4, rtol=1e-4)


def test_lens_and_patching_agree_with_logits(tiny):
    """(d) the lens's last layer is the model's logits; patching a query with its own residuals
    leaves its logits unchanged, another vector changes them, and patch_predict runs."""
    prompts = _prompts(tiny)
    result = taskvec.lens(tiny, prompts, top_k=3, progress=False)
    assert result.hidden.shape == (2, tiny.n_layers, tiny.d_model)
    logits = taskvec.first_token_logits(tiny, prompts, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(tiny.unembed(result.hidden[:, -1]), logits, atol=1e-4, rtol=1e-4)
    last = result.top1().query(f"layer == {tiny.n_layers - 1}").sort_values("prompt")
    assert last.token_id.tolist() == logits.argmax(-1).tolist()

    query = taskvec.icl_prompt([], _image(9) if tiny.is_vlm else "Chile")
    batch = tiny.encode([query])
    own, _ = taskvec.read_residuals(tiny, [query], at="query", progress=False)
    own = taskvec.TaskVector(own, tiny.name, "custom", "tiny", 1)
    other = taskvec.TaskVector(result.hidden[0], tiny.name, "custom", "tiny", 1)
    base = patched_logits(tiny, None, batch, [1])
    torch.testing.assert_close(patched_logits(tiny, own, batch, [1]), base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(patched_logits(tiny, other, batch, [1]), base, atol=1e-3)
    preds = taskvec.patch_predict(tiny, other, [query, query], layers=[0, 1], progress=False)
    assert len(preds) == 2 and preds[0] == preds[1]


def test_cached_sweep_matches_full_patched_forwards(tiny):
    """The layer sweep's shortcut (keys/values of all but the query's last token, then that token
    alone per layer) gives the full patched forward's logits on every architecture where it is
    used, for text and image queries on a left-padded batch; where it cannot apply (Qwen2-VL, whose
    rotary positions are state kept between calls; Fuyu's image-first prompts), prefix_cache says so
    and the sweep runs full forwards. Run after other tests on the same model on purpose: state
    left by earlier calls (Qwen2-VL's rope_deltas) is what broke the shortcut there."""
    sets = [[taskvec.icl_prompt([], "a longer query here"), taskvec.icl_prompt([], "b")]]
    if tiny.is_vlm:
        sets.append([taskvec.icl_prompt([], _image(1)), taskvec.icl_prompt([], _image(2))])
    vector = taskvec.TaskVector(torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(0)),
                                tiny.name, "custom", "tiny", 1)
    for queries in sets:
        batch = tiny.encode(queries)
        cache = prefix_cache(tiny, batch)
        image = bool(queries[0].images)
        delimiter_last = all(d[-1] == batch.input_ids.shape[1] - 1 for d in tiny.delimiters(batch))
        expect_none = not tiny.arch.cached_sweep or not delimiter_last
        if expect_none:
            assert cache is None
            continue
        assert cache is not None, f"{tiny.hf.config.model_type}: no cache for {'image' if image else 'text'} queries"
        for layer in range(tiny.n_layers):
            torch.testing.assert_close(cached_patched_logits(tiny, vector, batch, cache, [layer]),
                                       patched_logits(tiny, vector, batch, [layer]), atol=1e-5, rtol=1e-5)
        sweep = taskvec.layer_sweep(tiny, vector, queries, progress=False)
        full = [patched_logits(tiny, vector, batch, [layer]).argmax(-1).tolist() for layer in range(tiny.n_layers)]
        got = sweep.sort_values(["layer", "query"]).prediction.tolist()
        assert got == [tiny.tokenizer.decode([i]) for row in full for i in row]


def test_fuyu_takes_one_image_per_prompt(tmp_path):
    """Fuyu's processor puts one image before the text: taskvec refuses several instead of mis-placing them."""
    m = taskvec.load(str(build_tiny("fuyu", tmp_path)))
    with pytest.raises(taskvec.TaskvecError, match="prompt 0 has 2 images but FuyuProcessor takes at most 1"):
        m.encode([taskvec.icl_prompt([(_image(1), "red")], _image(2))])


# --- what load() passes on to transformers and nnsight ---------------------------------------


def test_load_dtype_reaches_transformers(llama_dir):
    assert {p.dtype for p in taskvec.load(llama_dir).hf.parameters()} == {torch.float32}
    assert {p.dtype for p in taskvec.load(llama_dir, dtype=torch.bfloat16).hf.parameters()} == {torch.bfloat16}


def test_load_device_map_and_extra_kwargs_reach_transformers(llama_dir, tmp_path):
    plain = taskvec.load(llama_dir)
    device_map = {"model": "cpu", "lm_head": "disk"}
    m = taskvec.load(llama_dir, device_map=device_map, offload_folder=str(tmp_path), attn_implementation="eager")
    assert m.hf.hf_device_map == device_map
    assert m.hf.lm_head.weight.device.type == "meta"  # offloaded: accelerate loads it per forward
    assert m.hf.config._attn_implementation == "eager"
    prompt = ["Q:France\nA:"]
    torch.testing.assert_close(taskvec.first_token_logits(m, prompt, progress=False),
                               taskvec.first_token_logits(plain, prompt, progress=False), atol=1e-4, rtol=1e-4)


def test_load_quantization_config_reaches_transformers(llama_dir):
    from transformers import FineGrainedFP8Config

    m = taskvec.load(llama_dir, quantization_config=FineGrainedFP8Config(dequantize=True))
    assert m.hf.is_quantized and m.hf.config.quantization_config.quant_method == "fp8"
    with pytest.raises(RuntimeError, match="GPU"):  # transformers' FP8 quantizer refuses a CPU-only machine
        taskvec.load(llama_dir, quantization_config=FineGrainedFP8Config())


def test_load_remote_builds_an_empty_model_and_traces_remotely(llama_dir, tmp_path, monkeypatch):
    """remote=True: no weights are loaded locally and traces go to nnsight's remote path, which
    needs a hub id (here served from a local hub cache, offline) and fails without a connection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0" * 40
    repo = tmp_path / "models--tiny-org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in __import__("pathlib").Path(llama_dir).iterdir():
        (snapshot / f.name).symlink_to(f)
    m = taskvec.load("tiny-org/tiny-llama", remote=True, cache_dir=str(tmp_path), local_files_only=True)
    assert m.remote and m.trace_kwargs() == {"remote": True}
    assert {p.device.type for p in m.hf.parameters()} == {"meta"}
    batch = m.encode(["Q:France\nA:"])
    with pytest.raises(Exception, match="(?i)offline|resolve|connect|huggingface|api|name or service|errno"):
        with m.trace(batch):
            m.nn.output.logits.save()
