"""Built-in tasks (schema, sizes, fixed splits, images) and user task files (no model)."""

from __future__ import annotations

import json

import pytest

import taskvec
from taskvec.inputs.render import has_glyph, render_emoji
from taskvec.tasks import DATA_DIR, PAPER_TASKS, TEXT_TASKS, dumps_task, get_task, list_tasks, load_task, save_task

INSTRUCTIONS = {  # docs/design.md §2 (the paper's Table 1)
    "country-capital": "The capital city of the country:",
    "country-currency": "The last word of the official currency of the country:",
    "animal-latin": "The scientific name of the animal's species in latin:",
    "animal-young": "The term for the baby of the animal:",
    "food-color": "The color of the food:",
    "food-flavor": "The flavor descriptor of the food:",
}


def test_names_order_and_instructions():
    assert PAPER_TASKS == tuple(INSTRUCTIONS)
    assert len(TEXT_TASKS) >= 6 and list_tasks() == [*PAPER_TASKS, *TEXT_TASKS]
    assert sorted(p.stem for p in DATA_DIR.glob("*.json")) == sorted(list_tasks())
    for name, inst in INSTRUCTIONS.items():
        assert get_task(name).instruction == inst
    for name in TEXT_TASKS:
        assert get_task(name).instruction.endswith(":")
    assert taskvec.get_task is get_task and taskvec.PAPER_TASKS == PAPER_TASKS


@pytest.mark.parametrize("name", list_tasks())
def test_schema_and_sizes(name):
    t = get_task(name)
    s = t.sizes()
    assert t.name == name and t.task_words and t.input_words == (":",)
    assert s["val"] == 30 and s["all"] == s["val"] + s["test"]
    if name in PAPER_TASKS:
        assert s["test"] >= 100
        # image test sets of at least 40 queries, image demonstrations (val items with an emoji) for
        # a 5-shot prompt with room to draw from
        assert s["test_emoji"] >= 40, "every image test set needs at least 40 items"
        assert s["val_emoji"] >= 10
        assert s["val_emoji"] == 30 or s["test_emoji"] == 40, "val takes emoji items as long as 40 stay in test"
        assert s["with_emoji"] == (130 if name.startswith("country") else s["with_emoji"])
    else:
        assert s["all"] >= 100 and s["with_emoji"] == 0
    inputs = [it.input for it in t.items]
    assert len(set(inputs)) == len(inputs)
    for it in t.items:
        for text in (it.input, it.output):
            assert text == text.strip() and text and "\n" not in text and "A:" not in text
    # the file is in canonical form, with the split stored on every item
    raw = (DATA_DIR / f"{name}.json").read_text(encoding="utf-8")
    assert dumps_task(t) == raw
    assert all(it["split"] in ("val", "test") for it in json.loads(raw)["items"])


@pytest.mark.parametrize("name", list_tasks())
def test_splits_are_disjoint_and_pairs_deterministic(name):
    t = get_task(name)
    val, test = t.pairs("val"), t.pairs("test")
    assert not {x for x, _ in val} & {x for x, _ in test}
    assert t.pairs("all") == [(it.input, it.output) for it in t.items]
    assert sorted(t.pairs("all")) == sorted(val + test)
    fresh = load_task(DATA_DIR / f"{name}.json", check_emoji=False)  # not the cached instance
    assert fresh == t and fresh.pairs("val") == val and fresh.pairs("test") == test
    cats = t.phase_categories()
    assert cats["input"] == [":"] and cats["task"] == list(t.task_words)
    assert set(cats["answer"]) == {y for _, y in val + test}


def test_function_vector_tasks_never_reward_copying_the_input():
    for name in TEXT_TASKS:
        for it in get_task(name).items:
            assert not (it.input.startswith(it.output) or it.output.startswith(it.input)), (name, it)


KNOWN = {  # well-known facts; every one a task contains must match (the tasks hold a fixed sample of them)
    "country-capital": {"France": "Paris", "Japan": "Tokyo", "Australia": "Canberra", "Canada": "Ottawa",
                        "Turkey": "Ankara", "Brazil": "Brasília", "Egypt": "Cairo", "Peru": "Lima",
                        "Germany": "Berlin", "Kenya": "Nairobi", "Italy": "Rome", "Spain": "Madrid"},
    "country-currency": {"Japan": "Yen", "Italy": "Euro", "Mexico": "Peso", "India": "Rupee", "Russia": "Ruble",
                         "Thailand": "Baht", "Brazil": "Real", "Canada": "Dollar", "Poland": "Zloty"},
    "animal-latin": {"Lion": "Panthera leo", "Dog": "Canis lupus familiaris", "Cat": "Felis catus",
                     "Gray Wolf": "Canis lupus", "Tiger": "Panthera tigris"},
    "animal-young": {"Dog": "puppy", "Cat": "kitten", "Kangaroo": "joey", "Frog": "tadpole", "Duck": "duckling"},
    "food-color": {"Banana": "yellow", "Lemon": "yellow", "Strawberry": "red", "Carrot": "orange"},
    "food-flavor": {"Lemon": "sour", "Chili Pepper": "spicy", "Salt": "salty", "Coffee": "bitter"},
}


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_facts_spot_checks(name):
    got = dict(get_task(name).pairs("all"))
    shared = {k: v for k, v in KNOWN[name].items() if k in got}
    assert len(shared) >= 4
    assert {k: got[k] for k in shared} == shared
    if name.startswith("country"):
        flags = {it.input: it.emoji for it in get_task(name).items}
        for country, flag in (("France", "🇫🇷"), ("Japan", "🇯🇵"), ("Germany", "🇩🇪"), ("Brazil", "🇧🇷")):
            assert flags.get(country, flag) == flag


def test_every_emoji_renders_and_a_missing_glyph_is_caught():
    emojis = {it.emoji for name in PAPER_TASKS for it in get_task(name).items if it.emoji}
    assert len(emojis) > 250
    for e in emojis:
        assert has_glyph(e), e
        assert render_emoji(e, 64).size == (64, 64)
    for bad in ("x", "中", "🇫🇽"):  # a letter, a CJK character, an unassigned flag pair
        with pytest.raises(taskvec.TaskvecError, match="no glyph"):
            render_emoji(bad, 64)


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_image_pairs(name):
    t = get_task(name)
    imgs = t.pairs("val", modality="image", image_size=48)
    text = t.pairs("val", modality="text", emoji_only=True)
    assert len(imgs) == len(text) == t.sizes()["val_emoji"]
    assert [y for _, y in imgs] == [y for _, y in text]
    for x, _ in imgs:
        assert x.size == (48, 48) and x.mode == "RGB"
        assert x.convert("L").getextrema()[0] < 128  # something dark was drawn on the white background
    assert len(t.pairs("test", "image", image_size=32)) == t.sizes()["test_emoji"]
    assert t.pairs("val", "image")[0][0].size == (224, 224)


def test_unknown_task_split_and_modality():
    with pytest.raises(taskvec.TaskvecError, match="country-capital.*next-item"):
        get_task("country-capitals")
    with pytest.raises(taskvec.TaskvecError, match="load_task"):
        get_task("mine.json")
    t = get_task("food-color")
    with pytest.raises(taskvec.TaskvecError, match="'val', 'test' or 'all'"):
        t.pairs("train")
    with pytest.raises(taskvec.TaskvecError, match="'text' or 'image'"):
        t.pairs("val", modality="audio")


# --- user task files -------------------------------------------------------------------------


def test_round_trip_json_and_csv(tmp_path):
    t = get_task("animal-young")
    assert load_task(save_task(t, tmp_path / "young.json")) == t
    back = load_task(save_task(t, tmp_path / "young.csv"), name="animal-young")
    assert back.items == t.items and back.name == t.name


def test_csv_without_split_draws_a_deterministic_split(tmp_path):
    rows = [f"word{i},WORD{i}," + ("🐺" if i % 4 == 0 else "") for i in range(40)]
    p = tmp_path / "upper.csv"
    p.write_text("input,output,emoji\n" + "\n".join(rows) + "\n", encoding="utf-8")
    a, b = load_task(p, seed=3), load_task(p, seed=3)
    c = load_task(p, seed=4)
    assert a == b and a.items != c.items
    assert a.name == "upper" and a.sizes()["val"] == 13 and a.sizes()["test"] == 27  # a third, at most 30
    # 10 emoji items: half go to val first, half stay for image test queries
    assert a.sizes()["val_emoji"] == 5 and a.sizes()["test_emoji"] == 5
    assert load_task(p, n_val=5).sizes()["val"] == 5
    assert load_task(p, instruction="Upper case:").instruction == "Upper case:"


def test_minimal_json_list(tmp_path):
    p = tmp_path / "caps.json"
    p.write_text(json.dumps([{"input": "France", "output": "Paris"}, {"input": "Japan", "output": "Tokyo"},
                             {"input": "Peru", "output": "Lima"}]), encoding="utf-8")
    t = load_task(p, task_words=["capital"])
    assert t.name == "caps" and len(t) == 3 and t.phase_categories()["task"] == ["capital"]


CSV_CASES = [  # (file text, what the error must name)
    ("input,ouput\nFrance,Paris\n", ["line 1", "'ouput'"]),
    ("input\nFrance\n", ["line 1", "'output'"]),
    ("input,output\nFrance,Paris\nJapan,\n", ["line 3", "'output'", "empty"]),
    ("input,output,split\nFrance,Paris,val\nJapan,Tokyo,train\n", ["line 3", "'split'", "'train'"]),
    ("input,output,split\nFrance,Paris,val\nJapan,Tokyo,\n", ["line 3", "'split'"]),
    ("input,output,emoji\nFrance,Paris,🇫🇷\nJapan,Tokyo,flag\n", ["line 3", "'emoji'", "not an emoji"]),
    ("input,output,emoji\nFrance,Paris,🇫🇷\nJapan,Tokyo,中\n", ["line 3", "'emoji'", "OpenMoji"]),
    ("input,output\nFrance,Paris\nFrance,Lyon\n", ["line 3", "'input'", "line 2"]),
    ("input,output\nFrance,Paris\nQ,A: Tokyo\n", ["line 3", "'output'", "A:"]),
    ("input,output\nFrance,Paris\nJapan,Tokyo,extra\n", ["line 3", "cells"]),
    ('input,output\nFrance,Paris\n"Ja\npan",Tokyo\n', ["line 4", "'input'", "line break"]),
]


@pytest.mark.parametrize("text,names", CSV_CASES)
def test_malformed_csv_names_file_line_and_field(tmp_path, text, names):
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(taskvec.TaskvecError) as err:
        load_task(p)
    msg = str(err.value)
    assert str(p) in msg
    for n in names:
        assert n in msg, (n, msg)


JSON_CASES = [
    ({"items": [{"input": "France"}]}, ["item 0", "'output'", "missing"]),
    ({"items": [{"input": "France", "output": "Paris"}, {"input": "Japan", "output": " "}]}, ["item 1", "'output'"]),
    ({"items": [{"input": "France", "output": "Paris", "split": "dev"}]}, ["item 0", "'split'", "'dev'"]),
    ({"items": [{"input": "France", "output": "Paris", "emoji": "FR"}]}, ["item 0", "'emoji'"]),
    ({"items": [{"input": "France", "output": 3}]}, ["item 0", "'output'", "string"]),
    ({"items": [{"input": "France", "output": "Paris", "colour": "blue"}]}, ["item 0", "'colour'"]),
    ({"instruction": "x", "itemz": []}, ["'itemz'"]),
    ({"name": "t"}, ["'items'", "missing"]),
    ({"items": [], "task_words": "capital"}, ["'task_words'"]),
]


@pytest.mark.parametrize("data,names", JSON_CASES)
def test_malformed_json_names_file_item_and_field(tmp_path, data, names):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(taskvec.TaskvecError) as err:
        load_task(p)
    msg = str(err.value)
    assert str(p) in msg
    for n in names:
        assert n in msg, (n, msg)


def test_bad_paths_and_syntax(tmp_path):
    with pytest.raises(taskvec.TaskvecError, match="does not exist"):
        load_task(tmp_path / "nope.csv")
    (tmp_path / "t.txt").write_text("input,output\n")
    with pytest.raises(taskvec.TaskvecError, match=r"\.json or \.csv"):
        load_task(tmp_path / "t.txt")
    (tmp_path / "t.json").write_text('{"items": [\n  {"input": "a",}\n]}')
    with pytest.raises(taskvec.TaskvecError, match="line 2"):
        load_task(tmp_path / "t.json")


@pytest.mark.parametrize("n_emoji,val_emoji,test_emoji", [(130, 30, 100), (70, 30, 40), (57, 17, 40), (37, 10, 27),
                                                          (8, 4, 4), (0, 0, 0)])
def test_draw_splits_keeps_image_test_queries(n_emoji, val_emoji, test_emoji):
    # emoji items first into validation used to leave food-color 7 image test items out of 37: the
    # test split now keeps 40 of them (all but 10, or half, when there are fewer)
    from taskvec.tasks import Item, draw_splits

    items = [Item(f"x{i}", "y", "", "🍎" if i < n_emoji else None) for i in range(150)]
    out = draw_splits(items, seed=3, n_val=30)
    val = [it for it in out if it.split == "val"]
    test = [it for it in out if it.split == "test"]
    assert len(val) == 30 and len(test) == 120 and {it.input for it in out} == {it.input for it in items}
    assert (sum(it.has_emoji for it in val), sum(it.has_emoji for it in test)) == (val_emoji, test_emoji)
    assert out == draw_splits(items, seed=3, n_val=30) and out != draw_splits(items, seed=4, n_val=30)
