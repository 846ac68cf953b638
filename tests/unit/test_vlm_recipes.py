"""The recorded recipes of the embedded VLM (vlm_recipe/recipes/v0.json ... v7.json) are what the
``--v0`` ... ``--v6`` flags of the training script they replaced gave, and v7 is the shipped run.

The reference is data/vlm_recipe_flags_3b9610a.json, written by running the old script's own
main() (data/record_vlm_recipe_flags.py, on a checkout of 3b9610a) with each flag, with and without
``--quick``: for each, the ``repr`` of the TrainConfig it built (every knob with its type), its
``to_json()`` (the manifest's form) and its ``key()`` (the checkpoint's fingerprint).
"""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
from dataclasses import replace
from pathlib import Path

import pytest

import vlm_recipe
from taskvec.embedded.assemble import read_manifest, weights_dir
from vlm_recipe import TrainConfig, load_recipe, recipe_names
from vlm_recipe.cli import config_from_args, parser
from vlm_recipe.concepts import Concept
from vlm_recipe.config import RECIPES, write_recipe

OLD = json.loads((Path(__file__).parent / "data" / "vlm_recipe_flags_3b9610a.json").read_text())
CONCEPTS = [Concept.from_json(c) for c in OLD["key_concepts"]]


def _same(config: TrainConfig, old: dict) -> None:
    assert repr(config) == old["repr"]
    assert json.loads(json.dumps(config.to_json())) == old["to_json"]
    assert config.key(CONCEPTS) == old["key"]


def test_every_old_flag_has_its_recipe_file():
    assert recipe_names() == sorted({v["recipe"] for v in OLD["flags"].values()}) == [f"v{i}" for i in range(8)]


@pytest.mark.parametrize("flags", sorted(OLD["flags"]))
def test_a_recipe_file_gives_the_config_of_its_old_flag(flags):
    """``load_recipe("v3")`` is the TrainConfig ``--v3`` built, knob for knob, and so is what
    ``python -m vlm_recipe --recipe v3`` builds, with ``--quick`` too."""
    old = OLD["flags"][flags]
    argv = ["--recipe", old["recipe"]] + (["--quick"] if old["quick"] else [])
    _same(config_from_args(parser().parse_args(argv)), old)
    if not old["quick"]:
        _same(load_recipe(old["recipe"]), old)
        _same(load_recipe(RECIPES / f"{old['recipe']}.json"), old)


def test_the_default_is_the_newest_recipe_and_the_shipped_one():
    assert TrainConfig() == load_recipe("v7") == load_recipe(recipe_names()[-1])
    assert config_from_args(parser().parse_args([])) == load_recipe("v7")
    # the shipped manifest's train_config replays as the default (a manifest is a recipe file too)
    shipped = load_recipe(weights_dir() / "manifest.json")
    assert shipped == TrainConfig.from_json(read_manifest()["train_config"])
    assert replace(shipped, checkpoint_seconds=TrainConfig().checkpoint_seconds) == TrainConfig()


def test_a_recipe_round_trips_and_a_hand_written_one_gives_the_same_run(tmp_path):
    v3 = load_recipe("v3")
    assert load_recipe(write_recipe(v3, tmp_path / "mine.json", name="mine", about="v3 again")) == v3
    # a manifest's form (later knobs at their earlier value left out) reads back to the same config
    assert TrainConfig.from_json(v3.to_json()) == v3
    # a float knob written as an int is the same knob, with the same fingerprint
    hand = dict(v3.as_recipe(), code_pull=30, warmup=0.05)
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    assert load_recipe(tmp_path / "hand.json").key(CONCEPTS) == v3.key(CONCEPTS)


def test_a_bad_recipe_is_refused(tmp_path):
    import taskvec

    with pytest.raises(taskvec.TaskvecError, match="no recipe"):
        load_recipe("v99")
    (tmp_path / "typo.json").write_text(json.dumps(dict(TrainConfig().as_recipe(), vision_stepz=3)))
    with pytest.raises(taskvec.TaskvecError, match="vision_stepz"):
        load_recipe(tmp_path / "typo.json")
    partial = TrainConfig().as_recipe()
    partial.pop("vision_steps")
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(taskvec.TaskvecError, match="vision_steps"):
        load_recipe(tmp_path / "partial.json")


@pytest.mark.parametrize("name", sorted(m.name for m in pkgutil.walk_packages(vlm_recipe.__path__, "vlm_recipe.")
                                        if m.name != "vlm_recipe.__main__"))
def test_the_recipe_docstring_examples_run(name):
    """The recipe is not part of the package, so the package's doctest walk misses it: its examples run here
    (those that need a model are skipped, as in the package)."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(importlib.import_module(name), name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
