"""Task vectors, MTV, STV, MimIC and generation on CUDA, against a CPU run of the same tiny model
(a text model and a VLM with image examples), with the tiny tier's smallest settings. Every fit's
intervention is then used through ``taskvec.predict`` on both devices; half precision runs the same
operations in bfloat16 and keeps what it returns float32 on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import taskvec

from .helpers import AGREEMENT, DEVICE, PAIRS, QUERIES, agreement, image, on_cpu

ARCHS = ["llama", "llava"]
COLORS = ["red", "blue", "green", "white", "black", "pink", "gray", "brown", "gold", "teal", "cyan", "lime"]

MTV = dict(n_trials=4, n_shots=2, steps=2, n_masks=4, n_candidates=2, batch_size=4, seed=0, progress=False)
STV = dict(n_pairs=4, n_shots=2, top_k=2, n_clusters=2, steps=2, n_samples=4, batch_size=4, seed=0, progress=False)
MIMIC = dict(n_shots=2, steps=2, batch_size=4, seed=0, progress=False)


@pytest.fixture(scope="module", params=ARCHS)
def models(request, tiny_dirs) -> SimpleNamespace:
    """The tiny model on the CPU and on the device under test, its pairs and its queries (images on a VLM)."""
    folder = str(tiny_dirs(request.param))
    cpu, gpu = taskvec.load(folder), taskvec.load(folder, device=DEVICE)
    if cpu.is_vlm:
        pairs = [(image(100 + i), c) for i, c in enumerate(COLORS)]
        queries = [taskvec.icl_prompt([], image(200 + i), label=c) for i, c in enumerate(COLORS[:6])]
    else:
        pairs, queries = list(PAIRS), taskvec.zero_shot(QUERIES)
    return SimpleNamespace(folder=folder, cpu=cpu, gpu=gpu, pairs=pairs, queries=queries)


@pytest.fixture(scope="module")
def vector(models) -> taskvec.TaskVector:
    """A task vector extracted on the CPU."""
    return taskvec.extract_icl(models.cpu, models.pairs, n_shots=2, batch_size=4, progress=False)


def _same_predictions(models, intervention) -> list[str]:
    """The intervention's predictions on the device, checked against the CPU's; returned."""
    got = taskvec.predict(models.gpu, models.queries, intervention=intervention, batch_size=4, progress=False)
    want = taskvec.predict(models.cpu, models.queries, intervention=intervention, batch_size=4, progress=False)
    assert agreement(got, want) >= AGREEMENT, list(zip(got, want))
    return got


def test_extract_sweep_and_patch(models, vector):
    m = models.gpu
    v = taskvec.extract_icl(m, models.pairs, n_shots=2, batch_size=4, progress=False)
    on_cpu(v.vectors)
    assert v.vectors.shape == (m.n_layers, m.d_model) and v.vectors.dtype == torch.float32
    assert v.n_prompts == vector.n_prompts == len(models.pairs)
    torch.testing.assert_close(v.vectors, vector.vectors, atol=1e-3, rtol=1e-3)

    sweep = taskvec.layer_sweep(m, v, models.queries, batch_size=4, progress=False)
    ref = taskvec.layer_sweep(models.cpu, v, models.queries, batch_size=4, progress=False)
    assert list(sweep.columns) == ["layer", "query", "prediction", "label", "correct"]
    assert len(sweep) == m.n_layers * len(models.queries)
    assert sweep[["layer", "query", "label"]].equals(ref[["layer", "query", "label"]])
    assert agreement(sweep.prediction.tolist(), ref.prediction.tolist()) >= AGREEMENT

    layer = taskvec.best_layer(sweep)
    got = taskvec.patch_predict(m, v, models.queries, layer, batch_size=4, progress=False)
    assert agreement(got, taskvec.patch_predict(models.cpu, v, models.queries, layer, batch_size=4,
                                                progress=False)) >= AGREEMENT
    # the sweep's cached shortcut gives the full patched forward's predictions on the device too
    assert agreement(got, sweep[sweep.layer == layer].sort_values("query").prediction.tolist()) >= AGREEMENT
    assert _same_predictions(models, v.patch(layer)) == got


def test_generation(models, vector):
    queries = models.queries[:5]
    got = taskvec.generate(models.gpu, queries, max_new_tokens=3)
    assert len(got) == len(queries) and all(isinstance(t, str) for t in got)
    assert agreement(got, taskvec.generate(models.cpu, queries, max_new_tokens=3)) >= AGREEMENT
    patched = taskvec.patch_generate(models.gpu, vector, queries, 1, max_new_tokens=3)
    assert agreement(patched, taskvec.patch_generate(models.cpu, vector, queries, 1, max_new_tokens=3)) >= AGREEMENT


def test_fit_mtv(models):
    m = models.gpu
    fit = taskvec.fit_mtv(m, models.pairs, **MTV)
    ref = taskvec.fit_mtv(models.cpu, models.pairs, **MTV)
    iv = fit.intervention
    on_cpu(iv.values, iv.mask)
    assert iv.values.shape == (m.n_layers, m.n_heads, m.d_head) and iv.values.dtype == torch.float32
    assert iv.mask.shape == (m.n_layers, m.n_heads) and iv.mask.dtype == torch.bool
    torch.testing.assert_close(iv.values, ref.intervention.values, atol=1e-3, rtol=1e-3)  # the mean head outputs
    assert len(fit.history) == MTV["steps"] and set(fit.timings) == {"means", "location_search", "selection"}
    _same_predictions(models, iv)


def test_fit_stv(models):
    m = models.gpu
    fit = taskvec.fit_stv(m, models.pairs, **STV)
    ref = taskvec.fit_stv(models.cpu, models.pairs, **STV)
    iv = fit.intervention
    on_cpu(iv.values, iv.mask, fit.details["deltas"].delta)
    assert iv.values.shape == (m.n_layers, m.n_heads, m.d_head) and iv.values.dtype == torch.float32
    assert iv.n_selected == STV["top_k"]
    torch.testing.assert_close(fit.details["deltas"].delta, ref.details["deltas"].delta, atol=1e-3, rtol=1e-3)
    assert len(fit.history) == STV["steps"]
    _same_predictions(models, iv)


def test_fit_mimic(models):
    fit = taskvec.fit_mimic(models.gpu, models.pairs, **MIMIC)
    ref = taskvec.fit_mimic(models.cpu, models.pairs, **MIMIC)
    mim = fit.intervention
    params = list(mim.parameters())
    assert params and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params), \
        [(p.device, p.dtype) for p in params]
    assert len(fit.history) == MIMIC["steps"] and fit.history.loss.notna().all()
    assert set(fit.timings) == {"teacher", "train"}
    # the first step's loss is computed before any update: the same model, the same loss
    assert fit.history.loss[0] == pytest.approx(ref.history.loss[0], rel=1e-3, abs=1e-5)
    _same_predictions(models, mim)
    got = taskvec.generate(models.gpu, models.queries[:3], intervention=mim, max_new_tokens=3)
    assert agreement(got, taskvec.generate(models.cpu, models.queries[:3], intervention=mim,
                                           max_new_tokens=3)) >= AGREEMENT


def test_half_precision_runs_every_method(models, vector):
    """bf16 weights: extraction, the sweep and every fit run; vectors and fitted tensors come back
    float32 on the CPU, and a bf16 vector points where the float32 one does."""
    half = taskvec.load(models.folder, device=DEVICE, dtype=torch.bfloat16)
    v = taskvec.extract_icl(half, models.pairs, n_shots=2, batch_size=4, progress=False)
    on_cpu(v.vectors)
    assert v.vectors.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(v.vectors, vector.vectors, dim=-1)
    assert (cos > 0.99).all(), cos
    sweep = taskvec.layer_sweep(half, vector, models.queries, batch_size=4, progress=False)
    assert len(sweep) == half.n_layers * len(models.queries)

    mtv = taskvec.fit_mtv(half, models.pairs, **MTV).intervention
    stv = taskvec.fit_stv(half, models.pairs, **STV).intervention
    for iv in (mtv, stv):
        on_cpu(iv.values)
        assert iv.values.dtype == torch.float32 and torch.isfinite(iv.values).all()
        assert len(taskvec.predict(half, models.queries, intervention=iv, progress=False)) == len(models.queries)
    fit = taskvec.fit_mimic(half, models.pairs, **MIMIC)
    assert fit.history.loss.map(lambda x: x == x and abs(x) != float("inf")).all(), fit.history  # finite
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in fit.intervention.parameters())
    assert len(taskvec.predict(half, models.queries, intervention=fit.intervention, progress=False)) == \
        len(models.queries)
