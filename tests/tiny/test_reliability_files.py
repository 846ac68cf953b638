"""Reliability audit (issue 24), files and values, on a tiny random Llama: NaN or inf in a vector or
an intervention is refused before patching (before any forward), naming the layer and head;
decoding a NaN vector is refused; MimIC layers are never wrapped; a file of another model is
refused at load, naming the file."""

from __future__ import annotations

import pytest
import torch

import taskvec

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
         ("Egypt", "Cairo")]
NAN = float("nan")



@pytest.fixture(scope="module")
def queries() -> list[taskvec.Prompt]:
    return taskvec.zero_shot(PAIRS)


@pytest.fixture
def no_forward(tiny, monkeypatch):
    """Fail the test if a prompt is encoded (the first step of any forward)."""
    def encode(*args, **kwargs):
        raise AssertionError("a prompt was encoded: the check came after work had started")

    monkeypatch.setattr(tiny, "encode", encode)


def refused(match: str):
    return pytest.raises(taskvec.TaskvecError, match=match)


def finite_vector(tiny) -> taskvec.TaskVector:
    values = torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(0))
    return taskvec.TaskVector(values, tiny.name, "text-icl", "cc", 4)


@pytest.mark.parametrize("bad", [NAN, float("inf")])
def test_X03_a_vector_with_nan_or_inf_is_refused_before_patching_naming_the_layer(tiny, queries, no_forward, bad):
    v = finite_vector(tiny)
    v.vectors[1, 3] = bad  # changed in place after it was made (creation refuses it: see the unit tier)
    where = r"holds NaN or inf \(first at layer, d_model = \(1, 3\)\)"
    with refused(where):
        taskvec.patch_predict(tiny, v, queries, 1, progress=False)
    with refused(where):
        taskvec.layer_sweep(tiny, v, queries, progress=False)
    with refused(where):
        taskvec.predict(tiny, queries, intervention=v.patch(0), progress=False)


def test_X03_a_patch_changed_in_place_is_refused_by_the_runner(tiny, queries, no_forward):
    patch = finite_vector(tiny).patch(1)
    patch.values[1, 0] = NAN
    with refused(r"patch values holds NaN or inf \(first at layer, d_model = \(1, 0\)\)"):
        taskvec.predict(tiny, queries, intervention=patch, progress=False)


def test_M14_a_head_intervention_with_nan_is_refused_before_patching_naming_layer_and_head(tiny, queries, no_forward):
    shape = (tiny.n_layers, tiny.n_heads, tiny.d_head)
    mask = torch.zeros(shape[:2], dtype=torch.bool)
    mask[1, 1] = True
    iv = taskvec.HeadIntervention(torch.randn(shape), mask, tiny.name, "mtv")
    iv.values[1, 1, 2] = NAN
    where = r"holds NaN or inf \(first at layer, head, d_head = \(1, 1, 2\)\)"
    with refused(where):
        iv.predict(tiny, queries, progress=False)
    with refused(where):
        taskvec.generate(tiny, queries[:1], intervention=iv, max_new_tokens=2)


def test_M14_mimic_with_nan_is_refused_before_patching_naming_the_layer(tiny, queries, no_forward):
    mim = taskvec.MimIC.for_model(tiny)
    with torch.no_grad():
        mim.gate_b[1, 0] = float("inf")
    with refused(r"this MimIC's gate_b at layer 1 holds NaN or inf"):
        mim.predict(tiny, queries, progress=False)


def test_X08_decoding_a_nan_vector_is_refused(tiny):
    v = finite_vector(tiny).vectors.clone()
    assert len(taskvec.decode(tiny, v, layer=1, top_k=3)) == 3
    v[1, 5] = NAN
    with refused(r"vector at layer 1 holds NaN or inf \(first at d_model = \(5,\)\): its top tokens"):
        taskvec.decode(tiny, v, layer=1)
    with refused(r"vector holds NaN or inf"):
        taskvec.decode(tiny, v[1])


def test_LY12_mimic_layers_out_of_range_or_not_whole_are_refused_not_wrapped(tiny):
    n = tiny.n_layers
    for bad in ([n + 7], [-n - 1], [1.5]):
        with refused(r"layers\[0\]="):
            taskvec.MimIC.for_model(tiny, layers=bad)
    assert taskvec.MimIC.for_model(tiny, layers=[-1]).layers == [n - 1]
    with refused(rf"layers\[0\]={n + 7} is out of range"):
        taskvec.fit_mimic(tiny, PAIRS, n_shots=2, steps=1, layers=[n + 7], progress=False)


def test_rule3_a_file_for_another_model_is_refused_at_load_naming_the_file(tiny, tmp_path):
    v = finite_vector(tiny)
    v.save(tmp_path / "v")
    assert taskvec.TaskVector.load(tmp_path / "v", tiny).model_name == tiny.name
    taskvec.TaskVector(torch.zeros(tiny.n_layers + 1, tiny.d_model), "other", "text-icl", "cc", 1).save(tmp_path / "o")
    with refused(r"cannot load the task vector from .*o\.json: task vector from other is \[.*extract the vector"):
        taskvec.TaskVector.load(tmp_path / "o", tiny)
    taskvec.TaskVector(v.vectors, "other", "text-icl", "cc", 1).save(tmp_path / "same-shape")
    with refused(r"same-shape\.json: .*allow_transfer=True"):
        taskvec.TaskVector.load(tmp_path / "same-shape", tiny)
    assert taskvec.TaskVector.load(tmp_path / "same-shape", tiny, allow_transfer=True).model_name == "other"
    taskvec.MimIC(tiny.n_layers, tiny.n_heads + 1, tiny.d_head, model_name="other").save(tmp_path / "mim")
    with refused(r"cannot load the MimIC parameters from .*mim\.json: this MimIC was built for"):
        taskvec.MimIC.load(tmp_path / "mim", tiny)
    shape = (tiny.n_layers, tiny.n_heads, tiny.d_head + 1)
    taskvec.HeadIntervention(torch.zeros(shape), torch.ones(shape[:2]), "other", "mtv").save(tmp_path / "iv")
    with refused(r"cannot load the head intervention from .*iv\.json: this mtv intervention is for heads of shape"):
        taskvec.HeadIntervention.load(tmp_path / "iv", tiny)
