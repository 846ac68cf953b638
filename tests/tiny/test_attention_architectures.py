"""MimIC's rebuilt attention logits on every supported architecture (tiny random instances).

For each architecture row: ``softmax(scores) @ V`` from :func:`taskvec.sites.attention.attention_logits`
equals the attention output that enters the output projection (left-padded batch, with and
without the cache), and a MimIC with random parameters generates the same tokens with the cache
as with full recomputation. Architectures whose logits cannot be rebuilt get a clear error.
"""

from __future__ import annotations

import nnsight
import pytest
import torch

import taskvec
from taskvec.models.architectures import resolve
from taskvec.sites.attention import attention_logits
from taskvec.sites.heads import split_heads
from taskvec.interventions.mimic import MimIC
from taskvec.models.model import Batch
from taskvec.models.tiny import build_tiny

SUPPORTED = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "llava", "llava_next",
             "idefics2", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "gemma3"]
UNSUPPORTED = {"fuyu": "fuses"}



def _load(arch: str, tmp_path_factory) -> taskvec.Model:
    return taskvec.load(str(build_tiny(arch, tmp_path_factory.mktemp(arch))))


PROMPTS = [taskvec.icl_prompt([("a ripe tomato", "red"), ("the sky", "blue")], "grass", label="green"),
           taskvec.icl_prompt([], "snow", label="white")]


@pytest.mark.parametrize("arch", SUPPORTED)
def test_attention_logits_and_mimic_on_every_architecture(arch, tmp_path_factory):
    m = _load(arch, tmp_path_factory)
    batch = m.encode(PROMPTS)
    valid = batch.inputs["attention_mask"].bool()
    layers = list(range(m.n_layers))
    for use_cache in (True, False):
        with torch.no_grad(), m.trace(batch, use_cache=use_cache):
            saved = nnsight.save([])
            for layer in layers:
                a = attention_logits(m, layer)
                saved.append((a.scores, a.heads, a.hidden))
        for layer, (scores, heads, hidden) in zip(layers, saved):
            attn = resolve(m.layer(layer, traced=False), m.arch.attention)
            v = attn.v_proj(hidden).view(*hidden.shape[:2], -1, m.d_head).transpose(1, 2)
            v = v.repeat_interleave(m.n_heads // v.shape[1], 1)
            out = (torch.softmax(scores.float(), -1).nan_to_num(0) @ v.float()).transpose(1, 2)
            assert torch.allclose(out[valid], split_heads(heads, m.n_heads).float()[valid], atol=1e-4), (arch, layer)

    gen = torch.Generator().manual_seed(0)
    mim = MimIC.for_model(m)
    with torch.no_grad():
        for p in (mim.shift, mim.gate_w):
            p.copy_(torch.randn(p.shape, generator=gen))
    prompt = PROMPTS[1]
    got = mim.generate(m, [prompt], max_new_tokens=3)
    ids = m.encode([prompt]).input_ids
    for _ in range(3):
        b = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, [prompt])
        ids = torch.cat([ids, mim.logits(m, b).argmax(-1, keepdim=True)], 1)
    assert got == m.tokenizer.batch_decode(ids[:, -3:], skip_special_tokens=True)


@pytest.mark.parametrize("arch", sorted(UNSUPPORTED))
def test_mimic_refuses_architectures_it_cannot_rebuild(arch, tmp_path_factory):
    m = _load(arch, tmp_path_factory)
    with pytest.raises(taskvec.TaskvecError, match=UNSUPPORTED[arch]):
        MimIC.for_model(m)
