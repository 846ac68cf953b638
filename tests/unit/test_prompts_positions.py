"""Prompts, sampling and delimiter search without a model."""

import pytest
import torch

import taskvec
from taskvec.inputs.positions import delimiter_positions, find_subsequence_ends


def test_generic_template_text():
    p = taskvec.icl_prompt([("France", "Paris"), ("Japan", "Tokyo")], "Italy", label="Rome")
    assert p.text == "Q:France\nA:Paris\n\nQ:Japan\nA:Tokyo\n\nQ:Italy\nA:"
    assert (p.n_demos, p.n_markers, p.label, p.demo_labels) == (2, 3, "Rome", ("Paris", "Tokyo"))


def test_sampling_is_seeded_and_excludes_the_query(capitals):
    a = taskvec.sample_icl_prompts(capitals, capitals, n_shots=5, seed=3)
    b = taskvec.sample_icl_prompts(capitals, capitals, n_shots=5, seed=3)
    c = taskvec.sample_icl_prompts(capitals, capitals, n_shots=5, seed=4)
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.text for p in a] != [p.text for p in c]
    for (x, _), p in zip(capitals, a):
        assert f"Q:{x}\nA:" not in p.text[: -len(f"Q:{x}\nA:")]


def test_too_few_items_for_shots(capitals):
    with pytest.raises(taskvec.TaskvecError, match="lower n_shots"):
        taskvec.sample_icl_prompts(capitals[:3], capitals[:1], n_shots=5)


def test_image_count_must_match_placeholders():
    with pytest.raises(taskvec.TaskvecError, match="one image per"):
        taskvec.Prompt(text=f"Q:{taskvec.IMAGE}\nA:", images=())


def test_subsequence_search():
    assert find_subsequence_ends(torch.tensor([1, 2, 1, 2, 1]), [1, 2]) == [1, 3]
    assert find_subsequence_ends(torch.tensor([1]), [1, 2]) == []
    with pytest.raises(taskvec.TaskvecError):
        delimiter_positions(torch.tensor([[1, 2]]), [1, 2], [2])
