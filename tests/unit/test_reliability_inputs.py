"""Reliability audit (issue 24), arguments, prompts, images and task files, without a model: every
bad argument is refused at the boundary with a message that names it, its value and the fix; task
files are read as written; every PIL mode becomes RGB by scaling, not clipping."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

import taskvec
from taskvec.inputs.prompts import prompt_list
from taskvec.inputs.render import to_rgb
from taskvec.models.model import Model

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")]


def _write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    p = tmp_path / name
    p.write_text(text, encoding=encoding)
    return p


# --- task files ---------------------------------------------------------------------------------


def test_T10_a_json_task_file_with_a_byte_order_mark_loads(tmp_path):
    p = _write(tmp_path, "bom.json", '{"items": [{"input": "France", "output": "Paris"}, '
                                     '{"input": "Japan", "output": "Tokyo"}]}', encoding="utf-8-sig")
    assert p.read_bytes().startswith(b"\xef\xbb\xbf")
    t = taskvec.load_task(p, check_emoji=False)
    assert {it.input for it in t.items} == {"France", "Japan"}
    assert {it.output for it in t.items} == {"Paris", "Tokyo"}


def test_T12_a_csv_cell_longer_than_the_csv_modules_limit_is_read(tmp_path):
    long = "x" * 200_000
    p = _write(tmp_path, "big.csv", f"input,output\nFrance,{long}\nJapan,Tokyo\nItaly,Rome\n")
    limit = csv.field_size_limit()
    t = taskvec.load_task(p, check_emoji=False)
    assert {it.output for it in t.items} == {long, "Tokyo", "Rome"}
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


def test_T17_an_unterminated_quote_names_its_own_line_and_the_quote(tmp_path):
    p = _write(tmp_path, "quote.csv", 'input,output\nFrance,"Paris\nJapan,Tokyo\nItaly,Rome\n')
    with pytest.raises(taskvec.TaskvecError, match=r"quote\.csv, line 2: a quoted cell .* not closed") as err:
        taskvec.load_task(p, check_emoji=False)
    assert "close the quote" in str(err.value) and "line 4" in str(err.value)
    # a quote that does close, but around a line break, is reported where its record starts
    p = _write(tmp_path, "multi.csv", 'input,output\nFrance,Paris\nJapan,"To\nkyo"\nItaly,Rome\n')
    with pytest.raises(taskvec.TaskvecError, match=r"line 3 \(a quoted cell runs to line 4\), field 'output': "
                                                   "contains a line break"):
        taskvec.load_task(p, check_emoji=False)


def test_T22_the_image_placeholder_as_a_text_input_is_refused_at_load_and_in_prompts(tmp_path):
    p = _write(tmp_path, "img.csv", f"input,output\n{taskvec.IMAGE},Paris\nJapan,Tokyo\nItaly,Rome\n")
    with pytest.raises(taskvec.TaskvecError, match=r"img\.csv, line 2, field 'input': contains '<taskvec:image>'"
                                                   r".*'emoji' field"):
        taskvec.load_task(p, check_emoji=False)
    with pytest.raises(taskvec.TaskvecError, match="query=.*image placeholder: pass the PIL image itself"):
        taskvec.icl_prompt([], f"a {taskvec.IMAGE}")
    with pytest.raises(taskvec.TaskvecError, match=r"demos\[0\] input=.*image placeholder"):
        taskvec.icl_prompt([(taskvec.IMAGE, "x")], "y")


def test_T29_n_shots_below_one_is_refused_naming_the_argument():
    for bad in (-1, 0, 2.5, True, "3"):
        with pytest.raises(taskvec.TaskvecError, match=f"n_shots={bad!r}: pass a whole number >= 1"):
            taskvec.sample_icl_prompts(PAIRS, PAIRS[:1], n_shots=bad)
    with pytest.raises(taskvec.TaskvecError, match="seed='1' is not a whole number"):
        taskvec.sample_icl_prompts(PAIRS, PAIRS[:1], n_shots=1, seed="1")
    assert [p.n_demos for p in taskvec.sample_icl_prompts(PAIRS, PAIRS[:2], n_shots=3)] == [3, 3]


def test_E06_a_setting_with_n_shots_below_one_is_refused_before_any_work():
    with pytest.raises(taskvec.TaskvecError, match="n_shots=-1: pass a whole number >= 1"):
        taskvec.Setting(n_shots=-1)
    with pytest.raises(taskvec.TaskvecError, match="n_shots=0"):
        taskvec.Setting(n_shots=0)
    assert taskvec.Setting(n_shots=2).n_shots == 2


def test_T35_a_json_key_given_twice_is_refused_not_silently_dropped(tmp_path):
    first = ", ".join(f'{{"input": "a{i}", "output": "b{i}"}}' for i in range(3))
    second = ", ".join(f'{{"input": "c{i}", "output": "d{i}"}}' for i in range(2))
    p = _write(tmp_path, "dup.json", f'{{"items": [{first}], "items": [{second}]}}')
    with pytest.raises(taskvec.TaskvecError, match=r"dup\.json, field 'items': appears twice.*keep only the last"):
        taskvec.load_task(p, check_emoji=False)
    p = _write(tmp_path, "dupitem.json", '{"items": [{"input": "a", "output": "b", "output": "c"}, '
                                         '{"input": "d", "output": "e"}]}')
    with pytest.raises(taskvec.TaskvecError, match="field 'output': appears twice"):
        taskvec.load_task(p, check_emoji=False)


def test_load_task_checks_its_arguments_first(tmp_path):
    p = _write(tmp_path, "ok.csv", "input,output\nFrance,Paris\nJapan,Tokyo\nItaly,Rome\n")
    with pytest.raises(taskvec.TaskvecError, match="n_val=0: pass a whole number >= 1"):
        taskvec.load_task(p, n_val=0, check_emoji=False)
    with pytest.raises(taskvec.TaskvecError, match="seed=1.5 is not a whole number"):
        taskvec.load_task(p, seed=1.5, check_emoji=False)
    with pytest.raises(taskvec.TaskvecError, match="task_words='capital'"):
        taskvec.load_task(p, task_words="capital", check_emoji=False)
    with pytest.raises(taskvec.TaskvecError, match="path=None"):
        taskvec.load_task(None)


# --- prompts ------------------------------------------------------------------------------------


def test_P13b_an_instruction_that_is_not_text_is_refused_naming_it():
    with pytest.raises(taskvec.TaskvecError, match="instruction=None is a NoneType: pass the task's instruction"):
        taskvec.instruction_prompt(None)
    with pytest.raises(taskvec.TaskvecError, match="instruction='' is empty"):
        taskvec.instruction_prompt("  ")


def test_P17_a_batch_mixing_templates_says_so():
    other = taskvec.Template(name="inout", demo="In:{x}\nOut:{y}\n", query="In:{x}\nOut:", marker="Out:")
    batch = [taskvec.icl_prompt([], "France"), taskvec.icl_prompt([], "Japan", template=other)]
    with pytest.raises(taskvec.TaskvecError, match=r"prompts 0 and 1 of one batch use different templates "
                                                   r"\('generic'.*'inout'.*same template="):
        Model._batch_template(batch)
    assert Model._batch_template([batch[1], batch[1]]) is other


def test_P06_free_text_prompts_read_at_the_query_name_icl_prompt():
    for text in ("Hello world", "Q:France\nA:"):
        with pytest.raises(taskvec.TaskvecError, match=r"free text .*taskvec\.icl_prompt\(\[\], x\)"):
            Model._batch_template([taskvec.Prompt(text)])


def test_I03_an_image_that_is_not_a_PIL_image_is_refused_when_the_prompt_is_built():
    with pytest.raises(taskvec.TaskvecError, match=r"images\[0\]='hello' is a str, not a PIL image: .*"
                                                   r"PIL\.Image\.open"):
        taskvec.Prompt(f"Q:{taskvec.IMAGE}\nA:", images=("hello",))
    with pytest.raises(taskvec.TaskvecError, match="query=3 is a int"):
        taskvec.icl_prompt([], 3)
    p = taskvec.Prompt(f"Q:{taskvec.IMAGE}\nA:", images=[Image.new("RGB", (4, 4))])
    assert isinstance(p.images, tuple) and p.n_images == 1


def test_prompt_lists_are_checked_once_at_the_boundary():
    with pytest.raises(taskvec.TaskvecError, match=r"prompts=\[\] is empty: pass at least one prompt"):
        prompt_list([])
    with pytest.raises(taskvec.TaskvecError, match="is one prompt: pass a list of prompts"):
        prompt_list("Q:France\nA:")
    with pytest.raises(taskvec.TaskvecError, match=r"queries\[1\]=None is a NoneType"):
        prompt_list(["a", None], "queries")
    with pytest.raises(taskvec.TaskvecError, match=r"demos=.*list of \(input, answer\) pairs"):
        taskvec.icl_prompt("France", "Japan")
    with pytest.raises(taskvec.TaskvecError, match=r"demos\[0\] answer=3 is a int"):
        taskvec.icl_prompt([("France", 3)], "Japan")
    with pytest.raises(taskvec.TaskvecError, match="template='generic': pass a taskvec.Template"):
        taskvec.zero_shot(PAIRS, template="generic")


def test_metric_arguments_are_strings_not_one_string_iterated():
    with pytest.raises(taskvec.TaskvecError, match="predictions='Paris': pass a list of strings"):
        taskvec.accuracy("Paris", "Paris")
    with pytest.raises(taskvec.TaskvecError, match="label=None is a NoneType"):
        taskvec.is_correct("Paris", None)
    with pytest.raises(taskvec.TaskvecError, match="labels='red' is one string"):
        taskvec.majority("red")


# --- images (rule 8) ----------------------------------------------------------------------------


def _grey_ramp() -> np.ndarray:
    return (np.arange(64, dtype=np.float64).reshape(8, 8) * 4.0).round()  # 0..252


def test_I07c_a_16_bit_greyscale_image_is_scaled_to_8_bits_not_clipped_white():
    ramp8 = _grey_ramp()
    for mode_data in ((ramp8 * 257).astype(np.uint16), (ramp8 * 257).astype(np.int32)):
        im = Image.fromarray(mode_data)
        assert im.mode in ("I;16", "I")
        clipped = np.asarray(im.convert("RGB"))[..., 0]
        assert (clipped == 255).mean() > 0.9  # what PIL does alone: almost everything white
        rgb = to_rgb(im)
        assert rgb.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(rgb)[..., 0], ramp8.astype(np.uint8))
    big = Image.fromarray((ramp8 * 257).astype(np.uint16).byteswap().view(">u2"))
    if big.mode == "I;16B":
        np.testing.assert_array_equal(np.asarray(to_rgb(big))[..., 0], ramp8.astype(np.uint8))


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                                  "HSV", "I", "I;16", "I;16B", "I;16L", "F"])
def test_rule_8_every_PIL_mode_becomes_RGB_by_scaling(mode):
    rgb = to_rgb(Image.new(mode, (3, 2)))
    assert rgb.mode == "RGB" and rgb.size == (3, 2)


def test_rule_8_float_and_transparent_images():
    unit = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32))
    assert to_rgb(unit).getpixel((0, 0)) == (128, 128, 128)  # F in 0..1 is scaled by 255
    wide = Image.fromarray(np.array([[-1.0, 1.0]], dtype=np.float32) * 1e6)
    assert [to_rgb(wide).getpixel((x, 0))[0] for x in (0, 1)] == [0, 255]  # any other range is stretched
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # laid on white, as processors do
    pal = Image.new("P", (2, 2), 0)
    pal.info["transparency"] = 0
    assert to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(taskvec.TaskvecError, match="image='x.png' is a str, not a PIL image"):
        to_rgb("x.png")


def test_rule_1_the_rest_of_the_model_free_api_checks_its_arguments():
    from taskvec.inputs.trials import icl_trials, split_pairs

    with pytest.raises(taskvec.TaskvecError, match="n_trials=0: pass a whole number >= 1"):
        icl_trials(PAIRS, 0)
    with pytest.raises(taskvec.TaskvecError, match="n_shots=-1"):
        icl_trials(PAIRS, 4, n_shots=-1)
    with pytest.raises(taskvec.TaskvecError, match="holdout=2: pass the fraction"):
        split_pairs(PAIRS, 2)
    with pytest.raises(taskvec.TaskvecError, match="name=3 is a int: pass a task name"):
        taskvec.get_task(3)
    task = taskvec.get_task("country-capital")
    with pytest.raises(taskvec.TaskvecError, match="image_size=4 is out of range"):
        task.pairs("val", "image", image_size=4)
    with pytest.raises(taskvec.TaskvecError, match="image_size='64' is not a whole number"):
        task.pairs("val", "image", image_size="64")
    with pytest.raises(taskvec.TaskvecError, match="split"):
        task.pairs(["val"])
    with pytest.raises(taskvec.TaskvecError, match="Template query=None is a NoneType"):
        taskvec.Template(name="t", demo="{x}{y}", query=None, marker="A:")
    with pytest.raises(taskvec.TaskvecError, match="marker='' is empty"):
        taskvec.Template(name="t", demo="{x}{y}", query="{x}", marker="")
    with pytest.raises(taskvec.TaskvecError, match="n_val=True"):
        taskvec.tasks.draw_splits(task.items, n_val=True)


def test_best_layer_refuses_what_is_not_a_sweep():
    import pandas as pd

    with pytest.raises(taskvec.TaskvecError, match=r"accuracy_by_layer=\[0\.1, 0\.5\] is a list"):
        taskvec.best_layer([0.1, 0.5])
    with pytest.raises(taskvec.TaskvecError, match="has no column 'correct'"):
        taskvec.best_layer(pd.DataFrame({"layer": [0, 1], "accuracy": [0.1, 0.5]}))
    assert taskvec.best_layer(pd.Series([0.1, 0.5, 0.5])) == 1


@pytest.mark.parametrize("call, message", [
    (lambda: taskvec.fit_mimic(None, PAIRS_FOR_FITS, steps=0), "steps=0"),
    (lambda: taskvec.fit_mimic(None, PAIRS_FOR_FITS, batch_size=2.5), "batch_size=2.5"),
    (lambda: taskvec.fit_mimic(None, PAIRS_FOR_FITS, n_shots=True), "n_shots=True"),
    (lambda: taskvec.fit_stv(None, PAIRS_FOR_FITS, n_clusters=0), "n_clusters=0"),
    (lambda: taskvec.fit_stv(None, PAIRS_FOR_FITS, n_pairs=4, n_clusters=8), "n_clusters=8 but n_pairs=4"),
    (lambda: taskvec.fit_stv(None, PAIRS_FOR_FITS, top_k=-1), "top_k=-1"),
    (lambda: taskvec.extract_icl(None, [], n_shots=2), "pairs=\\[\\] is empty"),
    (lambda: taskvec.extract_icl(None, PAIRS_FOR_FITS, seeds=0), "seeds=0"),
    (lambda: taskvec.extract_icl(None, PAIRS_FOR_FITS, seeds=[1.5]), "seeds\\[0\\]=1.5"),
])
def test_rule_1_fits_and_extraction_check_their_counts_before_touching_the_model(call, message):
    """model=None: the argument must be refused before the model is ever used."""
    with pytest.raises(taskvec.TaskvecError, match=message):
        call()


PAIRS_FOR_FITS = [(f"x{i}", f"y{i}") for i in range(10)]
