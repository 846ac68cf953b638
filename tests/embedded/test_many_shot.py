"""MTV, STV and MimIC on the real embedded Gemma-3-270m: the pieces (means, deltas, heatmap, bank,
MimIC's shift and its persistence). Fitting each method against zero-shot is tests/slow/test_many_shot.py."""

import pandas as pd
import pytest
import torch

import taskvec
from taskvec.sites.attention import attention_logits
from taskvec.sites.collect import head_activations
from taskvec.sites.heads import merge_heads, split_heads
from taskvec.interventions.mimic import MimIC
from taskvec.models.model import Batch
from taskvec.methods.mtv import mtv_means
from taskvec.methods.deltas import activation_deltas, delta_heatmap, top_heads
from taskvec.methods.stv import cluster_bank
from taskvec.inputs.trials import icl_trials


def _random_mimic(model, layers=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mim = MimIC.for_model(model, layers)
    with torch.no_grad():
        mim.shift.copy_(torch.randn(mim.shift.shape, generator=gen) * 2)
        mim.gate_w.copy_(torch.randn(mim.gate_w.shape, generator=gen) * 0.05)
        mim.gate_b.fill_(3.0)
    return mim


def test_mtv_means_are_the_mean_of_last_token_head_outputs(gemma, capitals):
    acts = mtv_means(gemma, capitals, n_trials=6, n_shots=3, progress=False)
    ctx, _ = icl_trials(capitals, 6, n_shots=3)
    rows = head_activations(gemma, ctx, keep=True, progress=False, batch_size=4).rows
    assert acts.mean.shape == (gemma.n_layers, gemma.n_heads, gemma.d_head) and acts.n_prompts == 6
    assert torch.allclose(acts.mean, rows.mean(0), atol=1e-4)


def test_deltas_heatmap_top_heads_and_bank(gemma, capitals):
    d = activation_deltas(gemma, capitals, n_pairs=8, n_shots=3, progress=False)
    assert d.delta.shape == (gemma.n_layers, gemma.n_heads) and (d.delta > 0).all()
    top_layer, top_head = (int(i) for i in divmod(int(d.delta.argmax()), gemma.n_heads))
    assert repr(d).startswith("Deltas(") and f"<td>{top_layer}</td><td>{top_head}</td>" in d._repr_html_()
    assert d.context.shape == (8, gemma.n_layers, gemma.n_heads, gemma.d_head)
    # the delta is the mean distance between with-context and query-only head outputs
    ctx, alone = icl_trials(capitals, 8, n_shots=3)
    a = head_activations(gemma, alone, keep=True, progress=False).rows
    assert torch.allclose(d.delta, (d.context - a).norm(dim=-1).mean(0), atol=1e-3)
    consistent = activation_deltas(gemma, capitals, n_pairs=8, n_shots=3, reduce="norm_mean", progress=False)
    assert torch.allclose(consistent.delta, (d.context - a).mean(0).norm(dim=-1), atol=1e-3)
    assert (consistent.delta <= d.delta + 1e-3).all()  # the norm of a mean never exceeds the mean norm
    frame, fig = delta_heatmap(d, top_k=5, title="capitals")
    assert isinstance(frame, pd.DataFrame) and frame.shape == (gemma.n_layers, gemma.n_heads)
    assert frame.index.name == "layer" and frame.columns.name == "head"
    assert fig.data[0].type == "heatmap" and len(fig.layout.shapes) == 5
    mask = top_heads(d.delta, 5)
    assert int(mask.sum()) == 5 and d.delta[mask].min() >= d.delta[~mask].max()
    bank = cluster_bank(d.context, mask, 3)
    assert bank.shape == (5, 3, gemma.d_head)
    with pytest.raises(taskvec.TaskvecError, match="fewer clusters"):
        cluster_bank(d.context, mask, 9)
    with pytest.raises(taskvec.TaskvecError, match="top_k"):
        top_heads(d.delta, 0)
    with pytest.raises(taskvec.TaskvecError, match="reduce"):
        activation_deltas(gemma, capitals, reduce="max")
    with pytest.raises(taskvec.TaskvecError, match="needs pairs"):
        delta_heatmap(gemma)


def test_mimic_starts_as_the_identity(gemma):
    mim = MimIC.for_model(gemma)
    assert mim.n_parameters == gemma.n_layers * gemma.n_heads * (2 * gemma.d_head + 1)
    batch = gemma.encode([taskvec.icl_prompt([], "France"), taskvec.icl_prompt([], "Japan is nice")])
    with torch.no_grad():
        ref = gemma.hf(**batch.inputs, logits_to_keep=1).logits[:, -1]
    assert torch.allclose(mim.logits(gemma, batch), ref.float(), atol=1e-4)


def test_mimic_shift_is_mu_times_v_with_mu_from_the_real_keys(gemma):
    mim = _random_mimic(gemma, layers=[2])
    assert f"{mim.n_parameters:,} parameters" in mim._repr_html_()
    batch = gemma.encode([taskvec.icl_prompt([], "France"), taskvec.icl_prompt([], "Japan is nice")])
    with torch.no_grad(), gemma.trace(batch):
        a = attention_logits(gemma, 2)
        q, scores, heads = a.query.save(), a.scores.save(), a.heads.save()
    o_proj = gemma.hf.model.layers[2].self_attn.o_proj
    seen = {}  # a torch forward hook sees the projection's output, computed from the shifted input
    hook = o_proj.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out.detach().clone()))
    try:
        mim.logits(gemma, batch)
    finally:
        hook.remove()
    z1 = torch.exp(torch.einsum("bhqd,hd->bhq", q, mim.gate_w[0].detach()) + mim.gate_b[0, :, None].detach())
    z2 = torch.exp(scores).sum(-1)
    mu = z1 / (z1 + z2)  # [b, H, q]
    want = split_heads(heads, gemma.n_heads) + mu.transpose(1, 2)[..., None] * mim.shift[0].detach()
    valid = batch.inputs["attention_mask"].bool()
    with torch.no_grad():
        want_out = o_proj(merge_heads(want))
    assert torch.allclose(seen["out"][valid], want_out[valid], atol=1e-3)
    assert not torch.allclose(seen["out"][valid], o_proj(heads)[valid].detach(), atol=1e-2)
    assert ((mu > 0) & (mu < 1))[valid[:, None].expand_as(mu)].all()


def test_mimic_generation_with_cache_matches_full_recomputation(gemma):
    mim = _random_mimic(gemma, layers=[1, 4, 9])
    prompt = taskvec.icl_prompt([], "Kenya")
    got = mim.generate(gemma, [prompt], max_new_tokens=3)
    ids = gemma.encode([prompt]).input_ids
    for _ in range(3):  # no cache: every forward recomputes all keys and shifts
        batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, [prompt])
        ids = torch.cat([ids, mim.logits(gemma, batch).argmax(-1, keepdim=True)], 1)
    assert got == gemma.tokenizer.batch_decode(ids[:, -3:], skip_special_tokens=True)


def test_mimic_saves_loads_and_refuses_another_shape(gemma, tmp_path):
    mim = _random_mimic(gemma, layers=[0, 5, 11])
    mim.meta = {"task": "x"}
    path = mim.save(tmp_path / "mim")
    back = MimIC.load(path, gemma)
    assert back.layers == [0, 5, 11] and back.meta == {"task": "x"} and back.n_parameters == mim.n_parameters
    batch = gemma.encode([taskvec.icl_prompt([], "France"), taskvec.icl_prompt([], "Peru")])
    assert torch.equal(back.logits(gemma, batch), mim.logits(gemma, batch))
    other = MimIC(30, 9, 64)
    other.save(tmp_path / "other")
    with pytest.raises(taskvec.TaskvecError, match="train one on this model"):
        MimIC.load(tmp_path / "other", gemma)
    with pytest.raises(taskvec.TaskvecError, match="missing"):
        MimIC.load(tmp_path / "nope")
