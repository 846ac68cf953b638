"""Reliability audit (issue 24), files and values, without a model: every artefact file that is
corrupt, truncated, of another kind or inconsistent is refused with an error naming the file and
the fix (never a raw dependency error, never NaN, never an unpickle); saving writes exactly the
path asked and never replaces another kind of file; NaN or inf is refused at creation, at save,
at load and before patching, with the layer (and head) where it is."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch

import taskvec
from taskvec.interventions import files
from taskvec.interventions.files import load_artifact, paths, save_artifact
from taskvec.interventions.residual import ResidualPatch

NAN = float("nan")


def vector(fill: float = 1.0, *, model: str = "m", task: str = "country-capital", shape=(3, 4)) -> taskvec.TaskVector:
    return taskvec.TaskVector(torch.full(shape, fill), model, "text-icl", task, 5)


def heads(fill: float = 1.0) -> taskvec.HeadIntervention:
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 2] = True
    return taskvec.HeadIntervention(torch.full((2, 3, 4), fill), mask, "m", "mtv")


def saved(tmp_path, name: str = "v"):
    """A saved vector's (safetensors, json) paths."""
    st = vector(torch.pi).save(tmp_path / name)
    return paths(st)


def without_digest(js) -> None:
    """What an older file (before the sha256 was recorded) or a hand-edited JSON looks like."""
    info = json.loads(js.read_text())
    info.pop("sha256")
    js.write_text(json.dumps(info))


def refused(match: str):
    return pytest.raises(taskvec.TaskvecError, match=match)


# --- V: vector files ------------------------------------------------------------------------------

def test_V01_a_scribbled_header_is_refused_naming_the_file_and_the_fix(tmp_path):
    st, js = saved(tmp_path)
    data = bytearray(st.read_bytes())
    data[8:40] = os.urandom(32)
    st.write_bytes(bytes(data))
    with refused(r"v\.safetensors does not match the sha256.*save the task vector again"):
        taskvec.TaskVector.load(st)
    without_digest(js)  # no digest to compare: the safetensors parser's error, with the file and the fix
    with refused(r"v\.safetensors is not a readable safetensors file.*corrupt.*save the task vector again") as e:
        taskvec.TaskVector.load(st)
    assert not isinstance(e.value.__cause__, Exception)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_V02_a_truncated_or_empty_file_is_refused_naming_the_file(tmp_path, keep):
    st, js = saved(tmp_path)
    data = st.read_bytes()
    st.write_bytes(data[: int(len(data) * keep)])
    with refused(r"v\.safetensors does not match the sha256.*truncated"):
        taskvec.TaskVector.load(tmp_path / "v")
    without_digest(js)
    with refused(r"v\.safetensors is not a readable safetensors file.*truncated"):
        taskvec.TaskVector.load(tmp_path / "v")


def test_V04_flipped_bytes_are_refused_not_loaded_as_nan(tmp_path):
    st, js = saved(tmp_path)
    data = bytearray(st.read_bytes())
    data[-10:] = b"\xff" * 10  # the last floats' bytes: the header stays intact, the values become NaN
    st.write_bytes(bytes(data))
    with refused(r"v\.safetensors does not match the sha256"):
        taskvec.TaskVector.load(st)
    without_digest(js)  # still refused: the values are checked, naming the layer
    with refused(r"v\.safetensors's 'vectors' holds NaN or inf \(first at layer, d_model = \(2, 1\)\)"):
        taskvec.TaskVector.load(st)


def test_V06_the_format_tag_and_the_shapes_in_the_json_are_checked(tmp_path):
    st, js = saved(tmp_path)
    info = json.loads(js.read_text())
    js.write_text(json.dumps({**info, "format": "taskvec.MimIC/1", "n_layers": 99, "d_model": 7}))
    with refused(r"v\.json holds a taskvec\.MimIC, not a task vector.*taskvec\.MimIC\.load"):
        taskvec.TaskVector.load(st)
    js.write_text(json.dumps({**info, "n_layers": 99, "d_model": 7}))
    with refused(r"v\.safetensors holds 'vectors' of shape \(3, 4\) \(n_layers=3\), but v\.json says n_layers=99"):
        taskvec.TaskVector.load(st)
    js.write_text(json.dumps({**info, "format": "taskvec.TaskVector/7"}))
    with refused(r"v\.json is in format taskvec\.TaskVector/7.*upgrade taskvec"):
        taskvec.TaskVector.load(st)


def test_V07_a_json_without_model_name_spec_or_task_names_what_is_missing(tmp_path):
    st, js = saved(tmp_path)
    info = json.loads(js.read_text())
    for key in ("model_name", "spec", "task"):
        info.pop(key)
    js.write_text(json.dumps(info))
    with refused(r"v\.json lacks 'model_name', 'spec', 'task': save the task vector again, or add"):
        taskvec.TaskVector.load(st)


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe garbage", b"[1, 2]", b""])
def test_V08_a_json_that_is_not_json_names_the_file(tmp_path, text):
    st, js = saved(tmp_path)
    js.write_bytes(text)
    with refused(r"v\.json (is not valid JSON|holds a JSON list)"):
        taskvec.TaskVector.load(st)


def test_V11_each_class_refuses_the_others_files_and_a_file_without_its_tensors(tmp_path):
    heads().save(tmp_path / "iv")
    vector().save(tmp_path / "v")
    taskvec.MimIC(2, 3, 4).save(tmp_path / "mim")
    with refused(r"iv\.json holds a taskvec\.HeadIntervention, not a task vector.*HeadIntervention\.load"):
        taskvec.TaskVector.load(tmp_path / "iv")
    with refused(r"v\.json holds a taskvec\.TaskVector, not a head intervention.*TaskVector\.load"):
        taskvec.HeadIntervention.load(tmp_path / "v")
    with refused(r"v\.json holds a taskvec\.TaskVector, not a MimIC parameters.*TaskVector\.load"):
        taskvec.MimIC.load(tmp_path / "v")
    save_artifact(tmp_path / "odd", {"x": torch.zeros(3, 4)}, dict(model_name="m", spec="text-icl", task="t",
                                                                    n_prompts=1), "taskvec.TaskVector/1")
    with refused(r"odd\.safetensors holds the tensors \['x'\] but a task vector needs 'vectors'"):
        taskvec.TaskVector.load(tmp_path / "odd")


def test_V11_a_pickle_renamed_to_safetensors_is_refused_not_unpickled(tmp_path):
    st, js = saved(tmp_path)
    st.write_bytes(pickle.dumps({"vectors": torch.zeros(3, 4)}))
    without_digest(js)
    with refused(r"v\.safetensors is not a readable safetensors file"):
        taskvec.TaskVector.load(st)


def test_V16_dotted_names_are_kept_so_no_artefact_overwrites_another(tmp_path):
    text = vector(1.0).save(tmp_path / "vecs" / "cc.text")
    image = vector(2.0).save(tmp_path / "vecs" / "cc.image")
    assert (text.name, image.name) == ("cc.text.safetensors", "cc.image.safetensors")
    assert float(taskvec.TaskVector.load(tmp_path / "vecs" / "cc.text").vectors[0, 0]) == 1.0
    assert float(taskvec.TaskVector.load(tmp_path / "vecs" / "cc.image.json").vectors[0, 0]) == 2.0
    heads(1.0).save(tmp_path / "run.v1")
    heads(2.0).save(tmp_path / "run.v2")
    assert float(taskvec.HeadIntervention.load(tmp_path / "run.v1").values[0, 0, 0]) == 1.0
    assert float(taskvec.HeadIntervention.load(tmp_path / "run.v2.safetensors").values[0, 0, 0]) == 2.0
    taskvec.MimIC(2, 3, 4, model_name="a").save(tmp_path / "mim.a")
    taskvec.MimIC(2, 3, 4, model_name="b").save(tmp_path / "mim.b")
    assert taskvec.MimIC.load(tmp_path / "mim.a").model_name == "a"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        f"{n}.{ext}" for n in ("run.v1", "run.v2", "mim.a", "mim.b") for ext in ("safetensors", "json"))


def test_V17_a_parent_that_is_a_file_is_refused_naming_it_and_nothing_is_written(tmp_path):
    (tmp_path / "vecs").write_text("a note")
    with refused(r"cannot save the task vector to .*vecs/sub/cc\.safetensors: .*vecs is a file, not a folder"):
        vector().save(tmp_path / "vecs" / "sub" / "cc")
    with refused(r"vecs is a file, not a folder"):
        files.check_target(tmp_path / "vecs" / "cc", "taskvec.TaskVector/1", "task vector")
    assert (tmp_path / "vecs").read_text() == "a note"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vecs"]


def test_V18_a_read_only_folder_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with refused(r"cannot save the task vector to .*v\.safetensors: the folder .* is not writable.*choose a folder"):
        vector().save(tmp_path / "v")
    assert list(tmp_path.iterdir()) == []


def test_V18_a_write_that_fails_names_the_file_keeps_the_old_artefact_and_leaves_no_temporary(tmp_path, monkeypatch):
    st = vector(1.0).save(tmp_path / "v")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files, "open", read_only, raising=False)
    with refused(r"cannot write the task vector to .*v\.safetensors: Read-only file system: choose a folder"):
        vector(2.0).save(tmp_path / "v")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.safetensors"]
    assert float(taskvec.TaskVector.load(st).vectors[0, 0]) == 1.0


def test_V21_mimic_json_and_tensors_that_disagree_are_refused_naming_both(tmp_path):
    st = taskvec.MimIC(2, 4, 3).save(tmp_path / "mim")
    js = paths(st)[1]
    info = json.loads(js.read_text())
    js.write_text(json.dumps({**info, "n_heads": 8}))
    with refused(r"mim\.safetensors holds 'shift' of shape \(2, 4, 3\) \(n_heads=4\), but mim\.json says n_heads=8"):
        taskvec.MimIC.load(st)
    js.write_text(json.dumps({**info, "layers": [0]}))
    with refused(r"cannot load the MimIC parameters from .*mim\.json: the JSON lists layers \[0\] but the tensors "
                 r"hold 2 shifted layers"):
        taskvec.MimIC.load(st)
    js.write_text(json.dumps({**info, "layers": [0, 99]}))
    with refused(r"mim\.json: layers\[1\]=99 is out of range"):
        taskvec.MimIC.load(st)


# --- rule 3: save writes exactly the path asked, atomically, and replaces only its own kind -------

def test_save_never_replaces_another_kind_of_file(tmp_path):
    heads().save(tmp_path / "run")
    with refused(r"run\.json already holds a taskvec\.HeadIntervention, and saving would replace it"):
        vector().save(tmp_path / "run")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with refused(r"model\.safetensors already exists without a taskvec \.json beside it"):
        vector().save(tmp_path / "model")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with refused(r"config\.json already holds a file that is not a taskvec artefact"):
        vector().save(tmp_path / "config")
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
    assert taskvec.HeadIntervention.load(tmp_path / "run").method == "mtv"
    vector(1.0).save(tmp_path / "v")
    vector(2.0).save(tmp_path / "v")  # saving again replaces its own kind
    assert float(taskvec.TaskVector.load(tmp_path / "v").vectors[0, 0]) == 2.0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_of_missing_files_names_both_paths(tmp_path):
    with refused(r"nothing\.safetensors and .*nothing\.json are both missing: check the path"):
        taskvec.TaskVector.load(tmp_path / "nothing")
    st, js = saved(tmp_path)
    js.unlink()
    with refused(r"v\.json is missing"):
        taskvec.TaskVector.load(st)


def test_load_artifact_checks_one_size_per_dimension_name(tmp_path):
    save_artifact(tmp_path / "a", {"x": torch.zeros(2, 3), "y": torch.zeros(4)}, {}, "taskvec.Thing/1")
    with refused(r"a\.safetensors holds 'y' with n=4 but 'x' with n=2"):
        load_artifact(tmp_path / "a", "taskvec.Thing", "thing", tensors={"x": ("n", "d"), "y": ("n",)})
    with refused(r"a\.safetensors holds 'y' of shape \(4,\), not \[n, d\]"):
        load_artifact(tmp_path / "a", "taskvec.Thing", "thing", tensors={"y": ("n", "d")})


# --- rule 2 and X/M: no NaN or inf in a vector, weight, bank or intervention ------------------------

def test_X03_nan_or_inf_in_a_vector_is_refused_at_creation_save_and_patch_naming_the_layer():
    values = torch.zeros(4, 3)
    values[2, 1] = float("inf")
    with refused(r"task vector 'cc' .* holds NaN or inf \(first at layer, d_model = \(2, 1\)\)"):
        taskvec.TaskVector(values, "m", "text-icl", "cc", 5)
    with refused(r"patch values holds NaN or inf \(first at layer, d_model = \(2, 1\)\)"):
        ResidualPatch(values, [2])


def test_X03_a_vector_changed_in_place_is_refused_at_save_and_when_patched(tmp_path):
    v = vector(1.0, shape=(4, 3))
    v.vectors[1, 0] = NAN
    with refused(r"the task vector's 'vectors' holds NaN or inf \(first at layer, d_model = \(1, 0\)\): not saved"):
        v.save(tmp_path / "v")
    assert list(tmp_path.iterdir()) == []
    with refused(r"layer, d_model = \(1, 0\)"):
        v.patch(1)


def test_X03_a_residual_patch_takes_whole_layer_numbers_only():
    values = torch.zeros(4, 3)
    assert ResidualPatch(values, [3, -1, 0]).layers == [0, 3]
    for bad, match in [("12", "is a string"), ([2.5], r"layers\[0\]=2\.5 is not a whole number"),
                       ([True], "is not a whole number"), ([4], r"layers\[0\]=4 is out of range"), ([], "no layer")]:
        with refused(match):
            ResidualPatch(values, bad)


def test_X06_nan_or_inf_weights_are_refused():
    a, b = vector(1.0), vector(2.0)
    with refused(r"weights=\[nan, 1\.0\] holds NaN or inf \(first at vector = \(0,\)\): pass finite numbers"):
        taskvec.ensemble(a, b, weights=[NAN, 1])
    with refused("holds NaN or inf"):
        taskvec.ensemble(a, b, weights=[1, float("inf")])
    with refused("sum to 0"):
        taskvec.ensemble(a, b, weights=[1, -1])
    with refused("one number per vector"):
        taskvec.ensemble(a, b, weights=["x", 1])
    assert float(taskvec.ensemble(a, b, weights=[1, 3]).vectors[0, 0]) == pytest.approx(1.75)


def test_X07_an_ensemble_across_models_must_say_which_model_it_is_for():
    vlm, llm = vector(1.0, model="the-vlm"), vector(3.0, model="the-llm")
    with refused(r"ensemble\(\) of vectors from different models \['the-vlm', 'the-llm'\]: pass model_name="):
        taskvec.ensemble(vlm, llm)
    mix = taskvec.ensemble(vlm, llm, model_name="the-llm")
    assert mix.model_name == "the-llm" and mix.meta["models"] == ["the-vlm", "the-llm"]
    assert taskvec.ensemble(vlm, vector(3.0, model="the-vlm")).model_name == "the-vlm"


def test_X10c_tsne_of_vectors_of_different_widths_names_them():
    a = vector(1.0, task="a", shape=(3, 640), model="gemma")
    b = vector(2.0, task="b", shape=(3, 576), model="smollm")
    with refused(r"tsne\(\) needs vectors of one width \(d_model\), got 'a' \(text-icl, gemma\): 640, "
                 r"'b' \(text-icl, smollm\): 576"):
        taskvec.tsne([a, b], layer=1)
    with refused(r"layer=2\.5 is not a whole number"):
        taskvec.tsne([a, vector(task="c", shape=(3, 640))], layer=2.5)
    with refused(r"layer=3 is out of range"):
        taskvec.tsne([a, vector(task="c", shape=(3, 640))], layer=3)


def test_M14_a_head_intervention_with_nan_is_refused_at_creation_save_and_load_naming_layer_and_head(tmp_path):
    values = torch.zeros(2, 3, 4)
    values[1, 2, 3] = NAN
    with refused(r"this mtv head intervention holds NaN or inf \(first at layer, head, d_head = \(1, 2, 3\)\)"):
        taskvec.HeadIntervention(values, torch.ones(2, 3, dtype=torch.bool), "m", "mtv")
    iv = heads()
    iv.values[0, 1, 0] = float("inf")
    with refused(r"layer, head, d_head = \(0, 1, 0\)"):
        iv.save(tmp_path / "iv")
    iv.values[0, 1, 0] = 0.0
    st, js = paths(iv.save(tmp_path / "iv"))
    data = bytearray(st.read_bytes())
    data[-40:-36] = b"\xff" * 4  # a value of the last layer
    st.write_bytes(bytes(data))
    without_digest(js)
    with refused(r"iv\.safetensors's 'values' holds NaN or inf \(first at layer, head, d_head = \(1, "):
        taskvec.HeadIntervention.load(st)


def test_M14_mimic_parameters_with_nan_are_refused_naming_the_layer(tmp_path):
    mim = taskvec.MimIC(4, 2, 3, layers=[1, 3])
    with torch.no_grad():
        mim.shift[1, 0, 2] = NAN
    with refused(r"MimIC's shift at layer 3 holds NaN or inf \(first at head, d_head = \(0, 2\)\): .*train it again"):
        mim.save(tmp_path / "mim")
    assert list(tmp_path.iterdir()) == []


def test_rule2_an_stv_bank_is_not_built_from_nan_activations():
    from taskvec.methods.stv import cluster_bank

    context = torch.randn(6, 2, 3, 4)
    context[2, 1, 0, 1] = NAN
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 0] = True
    with refused(r"with-context activations of layer 1, head 0 holds NaN or inf \(first at pass, d_head = \(2, 1\)\)"):
        cluster_bank(context, mask, 2)


def test_LY12_mimic_layers_are_whole_numbers_in_range_never_wrapped():
    for bad, match in [([99], r"layers\[0\]=99 is out of range: pass a whole number in -10\.\.9 \(the model has 10"),
                       ([-100], r"layers\[0\]=-100 is out of range"),
                       ([2.5], r"layers\[0\]=2\.5 is not a whole number"),
                       ([True], "is not a whole number"), (["3"], "is not a whole number"),
                       ("12", "is a string"), ([], "at least one layer")]:
        with refused(match):
            taskvec.MimIC(10, 2, 3, layers=bad)
    assert taskvec.MimIC(10, 2, 3, layers=[-1, 2, 2]).layers == [2, 9]
    assert taskvec.MimIC(10, 2, 3, layers=4).layers == [4]
    with refused(r"n_heads=0: pass a whole number >= 1"):
        taskvec.MimIC(10, 0, 3)
