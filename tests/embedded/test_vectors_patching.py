"""Task vectors on the real embedded Gemma-3-270m: extraction, patching, save/load, layer search."""

import warnings

import pandas as pd
import pytest
import torch

import taskvec
from tests.conftest import CAPITALS
from taskvec.experiments.store import Store
from taskvec.methods.patching import cached_patched_logits, patched_logits, prefix_cache

MORE = [("Chile", "Santiago"), ("Greece", "Athens"), ("Cuba", "Havana"), ("Poland", "Warsaw"),
        ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Austria", "Vienna"), ("Portugal", "Lisbon")]


@pytest.fixture(scope="module")
def vec(gemma):
    return taskvec.extract_icl(gemma, CAPITALS, task="country-capital", seeds=(0, 1), progress=False)


@pytest.fixture(scope="module")
def sweep(gemma, vec):
    qs = [taskvec.icl_prompt([], x, label=y) for x, y in MORE]
    return taskvec.layer_sweep(gemma, vec, qs, progress=False)


@pytest.fixture
def one_thread():
    """float32 kernels on several threads split a batch of 3 and a batch of 1 differently (about
    2e-3 apart on Gemma's residuals of magnitude ~100, with the code before and after the
    restructure alike); a test that compares the two runs on one thread, where they agree to 1e-4."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_vector_shape_and_metadata(gemma, vec):
    assert vec.vectors.shape == (gemma.n_layers, gemma.d_model)
    assert (vec.spec, vec.n_prompts, vec.model_name) == ("text-icl", 2 * len(CAPITALS), "gemma-3-270m")


def test_vector_is_read_at_the_last_demonstrations_delimiter(gemma, one_thread):
    """Compares a padded batch of 3 with the first prompt alone: on one thread (see ``one_thread``)."""
    prompts = taskvec.sample_icl_prompts(CAPITALS, CAPITALS[:3], n_shots=5, seed=0)
    mean, rows = taskvec.read_residuals(gemma, prompts, keep=True, progress=False)
    batch = gemma.encode(prompts[:1])
    pos = gemma.delimiters(batch)[0][-2]
    assert gemma.tokenizer.decode(batch.input_ids[0, pos - 1: pos + 1]) == "A:"
    assert pos < batch.input_ids.shape[1] - 1  # not the query's own delimiter
    with gemma.trace(batch):
        h = gemma.residual(gemma.layers()[7].output)[0, pos].save()
    assert torch.allclose(rows[0, 7], h.float(), atol=1e-4)
    assert torch.allclose(mean, rows.mean(0), atol=1e-5)


def test_patching_beats_no_context_at_the_best_layer(gemma, vec, sweep):
    acc = sweep.groupby("layer").correct.mean()
    layer = taskvec.best_layer(sweep)
    qs = [taskvec.icl_prompt([], x, label=y) for x, y in MORE]
    labels = [y for _, y in MORE]
    no_context = taskvec.accuracy(taskvec.patch_predict(gemma, None, qs, layer, progress=False), labels)
    patched = taskvec.accuracy(taskvec.patch_predict(gemma, vec, qs, layer, progress=False), labels)
    assert patched == pytest.approx(acc[layer])
    assert patched >= 0.5 and patched >= no_context + 0.4


def test_layer_search_picks_the_argmax(sweep):
    acc = sweep.groupby("layer").correct.mean()
    assert taskvec.best_layer(sweep) == int(acc.idxmax())
    two = pd.concat([sweep.assign(task="a"), sweep.assign(task="b", correct=sweep.layer == 3)])
    mean_over_tasks = two.groupby(["task", "layer"]).correct.mean().groupby("layer").mean()
    assert taskvec.best_layer(two) == int(mean_over_tasks.idxmax())
    assert taskvec.best_layer(pd.Series([0.2, 0.7, 0.7])) == 1


def test_sweep_is_batched_and_matches_single_layer_patching(gemma, vec, sweep):
    qs = [taskvec.icl_prompt([], x, label=y) for x, y in MORE]
    single = taskvec.patch_predict(gemma, vec, qs, 9, batch_size=1, progress=False)
    assert sweep[sweep.layer == 9].sort_values("query").prediction.tolist() == single


def test_cached_sweep_gives_the_full_patched_logits_at_every_layer(gemma, vec):
    """The sweep's shortcut (prefix once, then only the last token per layer) must not change a
    logit: compare with full patched forwards on a left-padded batch, in both modes."""
    qs = [taskvec.icl_prompt([], x, label=y) for x, y in MORE[:3]] + [taskvec.icl_prompt([], "Central African Republic")]
    batch = gemma.encode(qs)
    assert (batch.inputs["attention_mask"] == 0).any(), "the batch should be left-padded"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = prefix_cache(gemma, batch)
        cached_patched_logits(gemma, vec, batch, cache, [0])
    # the cache goes in under the installed transformers' own keyword (5.24 renamed it to `cache`)
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
    assert cache is not None
    for mode in ("replace", "add"):
        for layer in range(gemma.n_layers):
            full = patched_logits(gemma, vec, batch, [layer], mode=mode)
            torch.testing.assert_close(cached_patched_logits(gemma, vec, batch, cache, [layer], mode=mode), full,
                                       atol=2e-4, rtol=1e-4)
    clean = cached_patched_logits(gemma, None, batch, cache, [0])
    torch.testing.assert_close(clean, patched_logits(gemma, None, batch, [0]), atol=2e-4, rtol=1e-4)
    # a prompt whose delimiter is not the last token (an ICL prompt without a query) has no shortcut
    no_query = taskvec.icl_prompt([("France", "Paris")], None)
    assert prefix_cache(gemma, gemma.encode([no_query])) is None


def test_save_load_round_trip_is_bit_exact(vec, tmp_path):
    path = vec.save(tmp_path / "cc")
    back = taskvec.TaskVector.load(path)
    assert torch.equal(back.vectors, vec.vectors)
    assert (back.task, back.spec, back.model_name, back.meta) == (vec.task, vec.spec, vec.model_name, vec.meta)
    with pytest.raises(taskvec.TaskvecError, match="missing"):
        taskvec.TaskVector.load(tmp_path / "nothing")


def test_wrong_width_or_model_fails_clearly(gemma, vec):
    bad = taskvec.TaskVector(torch.zeros(18, 576), "smollm2-135m", "text-icl", "x", 1)
    qs = [taskvec.icl_prompt([], "Chile")]
    with pytest.raises(taskvec.TaskvecError, match="width 640"):
        taskvec.patch_predict(gemma, bad, qs, 5)
    other = taskvec.TaskVector(vec.vectors.clone(), "base-llm", "text-icl", "x", 1)
    with pytest.raises(taskvec.TaskvecError, match="allow_transfer=True"):
        taskvec.patch_predict(gemma, other, qs, 5)
    assert len(taskvec.patch_predict(gemma, other, qs, 5, allow_transfer=True, progress=False)) == 1
    with pytest.raises(taskvec.TaskvecError, match="out of range"):
        taskvec.patch_predict(gemma, vec, qs, 18)


def test_add_mode_and_multi_layer(gemma, vec):
    qs = [taskvec.icl_prompt([], x, label=y) for x, y in MORE[:3]]
    a = taskvec.patch_predict(gemma, vec, qs, [9, 10], mode="add", progress=False)
    assert len(a) == 3
    with pytest.raises(taskvec.TaskvecError, match="mode"):
        taskvec.patch_predict(gemma, vec, qs, 9, mode="swap")


def test_instruction_vector_and_ensemble(gemma, vec):
    inst = taskvec.extract_instruction(gemma, "The capital city of the country:", task="country-capital")
    assert inst.spec == "instruction" and inst.vectors.shape == vec.vectors.shape
    ens = taskvec.ensemble(vec, inst)
    assert torch.allclose(ens.vectors, (vec.vectors + inst.vectors) / 2, atol=1e-6)
    assert ens.task == "country-capital" and ens.spec == "ensemble"


def test_patched_generation_only_patches_the_prompt(gemma, vec):
    qs = [taskvec.icl_prompt([], "Kenya")]
    first = taskvec.patch_predict(gemma, vec, qs, 10, progress=False)[0]
    text = taskvec.patch_generate(gemma, vec, qs, 10, max_new_tokens=3)[0]
    assert text.startswith(first.strip())


def test_tsne_one_point_per_prompt(gemma):
    a = taskvec.extract_icl(gemma, CAPITALS, task="cc", keep=True, progress=False)
    b = taskvec.extract_icl(gemma, [(y, x) for x, y in CAPITALS], task="capital-country", keep=True, progress=False)
    r = taskvec.tsne([a, b], layer=9, seed=0)
    assert len(r.df) == 2 * len(CAPITALS) and set(r.df.task) == {"cc", "capital-country"}
    assert r.figure().data
    assert "points=20" in repr(r) and "plotly" in r._repr_html_()  # Jupyter shows the scatter itself


def test_a_layer_read_off_a_dataframe_is_one_layer(gemma, capitals):
    """A numpy integer (e.g. ``res["layers"].layer.iloc[0]``) or a 0-d tensor is one layer, not a list."""
    import numpy as np

    v = taskvec.extract_icl(gemma, capitals, n_shots=3, progress=False)
    queries = taskvec.zero_shot(capitals[:4])
    plain = taskvec.patch_predict(gemma, v, queries, 6, progress=False)
    assert taskvec.patch_predict(gemma, v, queries, np.int64(6), progress=False) == plain
    assert taskvec.patch_predict(gemma, v, queries, torch.tensor(6), progress=False) == plain


def test_transfer_experiment_resumes_from_its_store_and_keys_it_by_weights(gemma, tmp_path):
    """A second run reads every unit back from the store (a planted value comes back unchanged);
    a model with other weights under the same name gets its own folder and recomputes."""
    import dataclasses

    task = taskvec.get_task("country-capital")
    s = taskvec.Setting(n_val=8, n_test=4, batch_size=8)
    first = taskvec.transfer_experiment(gemma, [task], [("text", "text")], s, store=tmp_path, progress=False)
    folder = tmp_path / f"{gemma.key}-{s.key()}"
    assert gemma.key.startswith("gemma-3-270m-v") and folder.is_dir()
    test_csv = next(folder.glob("test-*.csv"))
    planted = pd.read_csv(test_csv).assign(accuracy=0.123)
    Store(folder).put(test_csv.stem, planted)  # a complete unit (an edited CSV alone would be recomputed)
    again = taskvec.transfer_experiment(gemma, [task], [("text", "text")], s, store=tmp_path, progress=False)
    assert again["summary"].query("method == 'Patch'").accuracy.item() == 0.123
    pd.testing.assert_frame_equal(again["sweep"], first["sweep"])
    other = dataclasses.replace(gemma, weights="gemma-3-270m-retrained")
    fresh = taskvec.transfer_experiment(other, [task], [("text", "text")], s, store=tmp_path, progress=False)
    assert (tmp_path / f"gemma-3-270m-retrained-{s.key()}").is_dir()
    assert fresh["summary"].query("method == 'Patch'").accuracy.item() == \
        first["summary"].query("method == 'Patch'").accuracy.item()
