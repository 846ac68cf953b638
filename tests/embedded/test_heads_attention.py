"""Head-level access and the rebuilt attention logits, on the real embedded Gemma-3-270m."""

import nnsight
import pytest
import torch

import taskvec
from taskvec.sites.attention import attention_logits
from taskvec.interventions.heads import HeadIntervention, replaced_logits
from taskvec.sites.collect import head_activations
from taskvec.sites.heads import read_heads, split_heads, write_heads
from taskvec.sites.positions import resolve as positions
from taskvec.methods.answers import answer_ids, first_answer_ids

QUERIES = [taskvec.icl_prompt([], "France", label="Paris"), taskvec.icl_prompt([], "Japan is nice", label="Tokyo")]


def _o_proj(model, layer):
    return model.hf.model.layers[layer].self_attn.o_proj


def _plain_logits(model, batch, hook=None, layer=None):
    handle = _o_proj(model, layer).register_forward_pre_hook(hook) if hook else None
    try:
        with torch.no_grad():
            return model.hf(**batch.inputs, logits_to_keep=1).logits[:, -1].float()
    finally:
        if handle:
            handle.remove()


def _zero_last(head):
    def hook(mod, args):
        x = args[0].clone()
        x.view(*x.shape[:2], 4, -1)[:, -1, head] = 0
        return (x,)
    return hook


def test_read_heads_matches_a_plain_hook(gemma):
    batch = gemma.encode(QUERIES)
    seen = {}
    handle = _o_proj(gemma, 3).register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        gemma.hf(**batch.inputs, logits_to_keep=1)
    handle.remove()
    acts = head_activations(gemma, QUERIES, keep=True, progress=False)
    assert acts.mean.shape == (gemma.n_layers, gemma.n_heads, gemma.d_head)
    assert torch.allclose(acts.rows[:, 3], seen["x"][:, -1].view(2, gemma.n_heads, gemma.d_head), atol=1e-5)
    # a chosen position: the first real token of each prompt (left padding differs per row)
    pos = positions(gemma, batch, 0)
    assert pos.tolist() == [int((batch.inputs["attention_mask"][i] == 0).sum()) for i in range(2)]
    with torch.no_grad(), gemma.trace(batch):
        h = read_heads(gemma, 3, torch.arange(2), pos).save()
    assert torch.allclose(h, seen["x"][torch.arange(2), pos].view(2, 4, -1), atol=1e-5)


def test_write_heads_matches_a_plain_hook_and_respects_the_mask(gemma):
    batch = gemma.encode(QUERIES)
    values = torch.randn(gemma.n_heads, gemma.d_head)
    mask = torch.tensor([False, True, False, True])

    def hook(mod, args):
        x = args[0].clone()
        v = x.view(*x.shape[:2], gemma.n_heads, gemma.d_head)
        v[:, -1, mask] = values[mask]
        return (x,)

    ref = _plain_logits(gemma, batch, hook, layer=6)
    with torch.no_grad(), gemma.trace(batch, logits_to_keep=1):
        write_heads(gemma, 6, torch.arange(2), -1, values, mask)
        got = gemma.nn.output.logits[:, -1].save()
    assert torch.allclose(got.float(), ref, atol=1e-3)
    assert not torch.allclose(ref, _plain_logits(gemma, batch), atol=1e-3)
    # per-row masks: row 0 untouched, row 1 written
    masks = torch.zeros(2, gemma.n_layers, gemma.n_heads, dtype=torch.bool)
    masks[1, 6] = mask
    full = torch.zeros(gemma.n_layers, gemma.n_heads, gemma.d_head)
    full[6] = values
    per_row = replaced_logits(gemma, batch, full, masks)
    assert torch.allclose(per_row[0], _plain_logits(gemma, batch)[0], atol=1e-3)
    assert torch.allclose(per_row[1], ref[1], atol=1e-3)
    with pytest.raises(taskvec.TaskvecError, match="masks must be"):
        replaced_logits(gemma, batch, full, masks[:, :3])


def test_intervention_applies_at_every_generated_token_and_saves(gemma, tmp_path):
    values = torch.zeros(gemma.n_layers, gemma.n_heads, gemma.d_head)
    mask = torch.zeros(gemma.n_layers, gemma.n_heads, dtype=torch.bool)
    mask[4, 1] = mask[9, 2] = True
    iv = HeadIntervention(values, mask, gemma.name, "test")
    prompts = [taskvec.icl_prompt([], "Kenya")]
    got = iv.generate(gemma, prompts, max_new_tokens=4)

    # reference: greedy loop without cache, heads zeroed at the last position of every forward
    ids = gemma.encode(prompts).input_ids
    hooks = [_o_proj(gemma, layer).register_forward_pre_hook(_zero_last(head)) for layer, head in [(4, 1), (9, 2)]]
    try:
        with torch.no_grad():
            for _ in range(4):
                nxt = gemma.hf(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
    finally:
        for h in hooks:
            h.remove()
    ref = gemma.tokenizer.batch_decode(ids[:, -4:], skip_special_tokens=True)
    assert got == ref
    path = iv.save(tmp_path / "iv")
    back = HeadIntervention.load(path, gemma)
    assert torch.equal(back.mask, iv.mask) and back.method == "test"
    assert torch.equal(back.logits(gemma, gemma.encode(QUERIES)), iv.logits(gemma, gemma.encode(QUERIES)))
    bad = HeadIntervention(torch.zeros(18, 8, 64), torch.zeros(18, 8, dtype=torch.bool), "other")
    with pytest.raises(taskvec.TaskvecError, match="fit it on this model"):
        bad.predict(gemma, QUERIES)
    with pytest.raises(taskvec.TaskvecError, match="missing"):
        HeadIntervention.load(tmp_path / "nothing")


@pytest.mark.parametrize("use_cache", [True, False])
def test_attention_logits_reproduce_the_attention_output(gemma, use_cache):
    batch = gemma.encode([taskvec.icl_prompt([("France", "Paris")], "Japan"), QUERIES[1]])
    layers = [0, 5]  # a sliding-window layer and a full-attention layer
    with torch.no_grad(), gemma.trace(batch, use_cache=use_cache):
        saved = nnsight.save([])
        for layer in layers:
            a = attention_logits(gemma, layer)
            saved.append((a.scores, a.heads, a.hidden, a.query))
    valid = batch.inputs["attention_mask"].bool()
    for layer, (scores, heads, hidden, query) in zip(layers, saved):
        attn = gemma.hf.model.layers[layer].self_attn
        v = attn.v_proj(hidden).view(*hidden.shape[:2], -1, gemma.d_head).transpose(1, 2)
        v = v.repeat_interleave(gemma.n_heads // v.shape[1], 1)
        out = (torch.softmax(scores, -1).nan_to_num(0) @ v).transpose(1, 2)
        assert query.shape == (2, gemma.n_heads, batch.input_ids.shape[1], gemma.d_head)
        assert torch.allclose(out[valid], split_heads(heads, gemma.n_heads)[valid], atol=1e-4)
        assert torch.isinf(scores[1, 0, -1, 0])  # row 1 is left-padded: its padding is masked


def test_answer_ids_follow_the_marker(gemma):
    toks = gemma.tokenizer.convert_ids_to_tokens(answer_ids(gemma, "Canis lupus"))
    assert "".join(toks).replace("▁", " ") == "Canis lupus"
    assert first_answer_ids(gemma, ["Paris"]).tolist() == answer_ids(gemma, "Paris")[:1]
    with pytest.raises(taskvec.TaskvecError, match="no label"):
        first_answer_ids(gemma, [None])
