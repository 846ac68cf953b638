"""MTV, STV and MimIC on the real embedded Gemma-3-270m.

Fast tests check the pieces (means, deltas, heatmap, bank, MimIC's shift and its persistence);
the three ``slow`` tests fit each method on country-capital at a fixed seed and check that it
beats zero-shot by a clear margin and that training converges.
"""

import nnsight
import pandas as pd
import pytest
import torch

import taskvec
from taskvec.sites.attention import attention_logits
from taskvec.sites.heads import head_activations, merge_heads, split_heads
from taskvec.interventions.mimic import MimIC, fit_mimic
from taskvec.models.model import Batch
from taskvec.methods.mtv import fit_mtv, mtv_means
from taskvec.methods.stv import activation_deltas, cluster_bank, delta_heatmap, fit_stv, top_heads
from taskvec.tasks import get_task
from taskvec.inputs.trials import icl_trials


@pytest.fixture(scope="module")
def capital():
    task = get_task("country-capital")
    test = task.pairs("test")[:30]
    return task.pairs("val"), [taskvec.icl_prompt([], x, label=y) for x, y in test], [y for _, y in test]


@pytest.fixture(scope="module")
def zero_shot(gemma, capital):
    _, queries, labels = capital
    return taskvec.accuracy(taskvec.predict(gemma, queries, progress=False), labels)


def _random_mimic(model, layers=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mim = MimIC.for_model(model, layers)
    with torch.no_grad():
        mim.shift.copy_(torch.randn(mim.shift.shape, generator=gen) * 2)
        mim.gate_w.copy_(torch.randn(mim.gate_w.shape, generator=gen) * 0.05)
        mim.gate_b.fill_(3.0)
    return mim


# --- fast: the pieces ------------------------------------------------------------------------------
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


# --- slow: each method against zero-shot -------------------------------------------------------------
@pytest.mark.slow
def test_mtv_beats_zero_shot_and_its_policy_converges(gemma, capital, zero_shot, tmp_path):
    val, queries, labels = capital
    fit = fit_mtv(gemma, val, n_trials=40, steps=40, n_masks=16, n_candidates=4, seed=0, progress=False)
    acc = taskvec.accuracy(fit.intervention.predict(gemma, queries, progress=False), labels)
    assert acc >= zero_shot + 0.3, (acc, zero_shot)
    h = fit.history
    assert h.task_loss.iloc[-10:].mean() < h.task_loss.iloc[:10].mean()
    assert h.entropy.iloc[-1] < h.entropy.iloc[0]
    assert fit.details["candidates"].chosen.sum() == 1
    assert f"{fit.intervention.n_selected} heads" in fit._repr_html_() and repr(fit).startswith("HeadFit(")
    back = taskvec.HeadIntervention.load(fit.intervention.save(tmp_path / "mtv"), gemma)
    assert back.predict(gemma, queries[:8], progress=False) == fit.intervention.predict(gemma, queries[:8], progress=False)


@pytest.mark.slow
def test_stv_beats_zero_shot_and_its_policy_converges(gemma, capital, zero_shot):
    val, queries, labels = capital
    fit = fit_stv(gemma, val, n_pairs=40, top_k=20, n_clusters=8, steps=40, n_samples=16, reduce="norm_mean",
                  seed=0, progress=False)
    acc = taskvec.accuracy(fit.intervention.predict(gemma, queries, progress=False), labels)
    assert acc >= zero_shot + 0.3, (acc, zero_shot)
    h = fit.history
    assert h.task_loss.iloc[-10:].mean() < h.task_loss.iloc[:10].mean()
    assert h.concentration.iloc[-1] > h.concentration.iloc[0] + 0.1  # mass moves onto few clusters
    assert fit.timings["location_search"] < fit.timings["policy"]


@pytest.mark.slow
def test_mimic_beats_zero_shot_and_reloads_identically(gemma, capital, zero_shot, tmp_path):
    val, queries, labels = capital
    flags = [p.requires_grad for p in gemma.hf.parameters()]
    mim, hist = fit_mimic(gemma, val, steps=30, batch_size=8, seed=0, progress=False)
    preds = mim.predict(gemma, queries, progress=False)
    acc = taskvec.accuracy(preds, labels)
    assert acc >= zero_shot + 0.3, (acc, zero_shot)
    assert hist.loss.iloc[-5:].mean() < hist.loss.iloc[:5].mean() and hist.ce.iloc[-5:].mean() < hist.ce.iloc[:5].mean()
    back = MimIC.load(mim.save(tmp_path / "mimic"), gemma)
    assert back.predict(gemma, queries, progress=False) == preds
    assert [p.requires_grad for p in gemma.hf.parameters()] == flags  # the model's weights are left as found
