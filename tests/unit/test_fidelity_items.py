"""Fidelity fixes that need no model (issue: method fidelity, item 4)."""

from __future__ import annotations

import taskvec
from taskvec.experiments.cross_modal import Setting, pairs, with_demos


def test_a_query_image_is_never_its_own_demonstration_in_a_val_baseline():
    """baselines(split="val") with image demonstrations draws queries and demonstrations from two
    pairs() calls, which render new image objects: the query's item must still be excluded."""
    task = taskvec.get_task("food-color")
    queries, demos = pairs(task, "val", "image"), pairs(task, "val", "image")
    assert queries[0][0] is not demos[0][0]
    prompts = with_demos(demos, queries, Setting(n_shots=3, seed=0))
    for (image, _), prompt in zip(queries, prompts):
        shown = prompt.images[:-1]
        assert prompt.images[-1] is image
        assert all(d.tobytes() != image.tobytes() for d in shown), "the query image is one of its demonstrations"


def test_text_items_and_different_images_are_still_told_apart():
    from taskvec.inputs.prompts import _same_input

    a, b = pairs(taskvec.get_task("animal-latin"), "val", "image")[:2]
    again = pairs(taskvec.get_task("animal-latin"), "val", "image")[0]
    assert _same_input(a[0], again[0]) and not _same_input(a[0], b[0])
    assert _same_input("Peru", "Peru") and not _same_input("Peru", "peru") and not _same_input("Peru", a[0])
