"""The intervention layer without a model: one file format, one result type, one protocol."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import taskvec
from taskvec.interventions.files import load_artifact, paths, save_artifact
from taskvec.sites.collect import StreamingMean
from taskvec.sites.positions import check_at


def vector(fill: float, task: str = "country-capital") -> taskvec.TaskVector:
    return taskvec.TaskVector(torch.full((3, 4), fill), "m", "text-icl", task, 5)


def test_dotted_names_are_kept_so_two_vectors_never_overwrite_each_other(tmp_path):
    text = vector(1.0).save(tmp_path / "vecs" / "cc.text")
    image = vector(2.0).save(tmp_path / "vecs" / "cc.image")
    assert text.name == "cc.text.safetensors" and image.name == "cc.image.safetensors"
    assert float(taskvec.TaskVector.load(tmp_path / "vecs" / "cc.text").vectors[0, 0]) == 1.0
    assert float(taskvec.TaskVector.load(tmp_path / "vecs" / "cc.image.json").vectors[0, 0]) == 2.0


def test_save_leaves_no_temporary_file_and_writes_the_format_tag(tmp_path):
    st = vector(1.0).save(tmp_path / "v")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.safetensors"]
    assert json.loads(paths(st)[1].read_text())["format"] == "taskvec.TaskVector/1"


def test_loading_another_kind_of_artefact_names_both_kinds(tmp_path):
    iv = taskvec.HeadIntervention(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool), "m", "mtv")
    iv.save(tmp_path / "iv")
    with pytest.raises(taskvec.TaskvecError, match="HeadIntervention.*not a task vector"):
        taskvec.TaskVector.load(tmp_path / "iv")
    with pytest.raises(taskvec.TaskvecError, match="missing"):
        load_artifact(tmp_path / "nothing", "taskvec.TaskVector", "task vector")


def test_artifact_round_trip_keeps_every_tensor_and_fact(tmp_path):
    save_artifact(tmp_path / "a", {"x": torch.arange(6.0).view(2, 3)}, {"note": "hi"}, "taskvec.Thing/1")
    tensors, info = load_artifact(tmp_path / "a.safetensors", "taskvec.Thing", "thing")
    assert torch.equal(tensors["x"], torch.arange(6.0).view(2, 3)) and info["note"] == "hi"


def test_every_intervention_implements_the_protocol():
    interventions = [
        vector(1.0).patch(2),
        taskvec.HeadIntervention(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), "m", "mtv"),
        taskvec.MimIC(2, 3, 4),
    ]
    for iv in interventions:
        assert isinstance(iv, taskvec.Intervention), type(iv).__name__
    assert [(iv.at, iv.every_step) for iv in interventions] == [("query", False), ("last", True), ("every", True)]


def test_a_residual_patch_writes_layers_in_forward_order_once_and_checks_its_mode():
    assert taskvec.ResidualPatch(torch.zeros(4, 2), [3, 1, 3]).layers == [1, 3]
    with pytest.raises(taskvec.TaskvecError, match="mode='swap'"):
        taskvec.ResidualPatch(torch.zeros(4, 2), [1], mode="swap")
    with pytest.raises(taskvec.TaskvecError, match=r"\[n_layers, d_model\]"):
        taskvec.ResidualPatch(torch.zeros(4), [1])


def test_a_head_intervention_takes_one_set_per_row_for_reinforce_but_saves_only_a_fitted_one(tmp_path):
    rowwise = taskvec.HeadIntervention(torch.zeros(5, 2, 3, 4), torch.ones(5, 2, 3), "m", "reinforce")
    assert rowwise.shape == (2, 3, 4) and rowwise.n_selected == 30
    with pytest.raises(taskvec.TaskvecError, match="cannot be saved"):
        rowwise.save(tmp_path / "x")
    with pytest.raises(taskvec.TaskvecError, match="values must be"):
        taskvec.HeadIntervention(torch.zeros(2, 3, 4), torch.ones(3, 2), "m")


def test_a_fit_unpacks_like_the_old_mimic_tuple_and_says_what_it_holds():
    mim = taskvec.MimIC(2, 3, 4)
    fit = taskvec.Fit(mim, pd.DataFrame({"step": [0, 1]}), {"train": 1.5})
    intervention, history = fit
    assert intervention is mim and len(history) == 2
    assert repr(fit).startswith("Fit(MimIC(") and "train 1.5s" in repr(fit)
    assert taskvec.HeadFit is taskvec.Fit


def test_the_position_vocabulary_refuses_what_it_does_not_know():
    assert check_at(-1) == -1 and check_at("last_demo") == "last_demo"
    for bad in ("first", True, 1.5, None):
        with pytest.raises(taskvec.TaskvecError, match="use one of"):
            check_at(bad)


def test_the_streaming_mean_is_the_mean_of_all_rows_added():
    rows = torch.randn(7, 3, 2)
    s = StreamingMean()
    s.add(rows[:3])
    s.add(rows[3:])
    torch.testing.assert_close(s.mean().float(), rows.mean(0))
    with pytest.raises(taskvec.TaskvecError, match="no rows"):
        StreamingMean().mean()
