"""Delimiters, chat templates and positions on the real embedded Gemma-3-270m's tokenizer and encoder."""

import pytest

import taskvec
from taskvec.inputs.positions import marker_ids
from taskvec.inputs.prompts import GEMMA_CHAT_TEMPLATE


def test_delimiters_found_by_token_id_under_left_padding(gemma, capitals):
    long = taskvec.icl_prompt(capitals[:5], "Chile")
    short = taskvec.icl_prompt(capitals[:1], "Chile")
    batch = gemma.encode([long, short])
    pos = gemma.delimiters(batch)
    assert [len(p) for p in pos] == [6, 2]
    colon = gemma.tokenizer.convert_tokens_to_ids(":")
    for row, ps in zip(batch.input_ids, pos):
        assert all(int(row[i]) == colon for i in ps)
        assert gemma.tokenizer.decode(row[ps[-1] - 1: ps[-1] + 1]) == "A:"
        assert ps[-1] == batch.input_ids.shape[1] - 1  # left padding: the query delimiter is last
    # the short prompt alone: same positions shifted by its padding
    alone = gemma.encode([short])
    pad = batch.input_ids.shape[1] - alone.input_ids.shape[1]
    assert [p - pad for p in pos[1]] == gemma.delimiters(alone)[0]


def test_marker_inside_an_answer_is_reported(gemma):
    bad = taskvec.icl_prompt([("x", "A:b")], "y")
    with pytest.raises(taskvec.TaskvecError, match="answer markers"):
        gemma.delimiters(gemma.encode([bad]))


def test_chat_template_from_tokenizer(gemma, capitals):
    assert gemma.tokenizer.chat_template == GEMMA_CHAT_TEMPLATE  # set on the converted embedded model
    tpl = taskvec.chat_template(gemma.tokenizer)
    assert tpl.marker == "<start_of_turn>model\n"
    p = taskvec.icl_prompt(capitals[:2], "Chile", template=tpl)
    rendered = gemma.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for x, y in capitals[:2] for r, c in (("user", x), ("assistant", y))]
        + [{"role": "user", "content": "Chile"}], tokenize=False, add_generation_prompt=True)
    assert gemma.tokenizer.bos_token + p.text == rendered
    batch = gemma.encode([p])
    ids = marker_ids(gemma.tokenizer, tpl)
    assert gemma.tokenizer.decode(ids).endswith("model\n")
    assert len(gemma.delimiters(batch, tpl)[0]) == 3


def test_encode_rejects_image_prompt_on_text_model(gemma):
    from PIL import Image

    p = taskvec.icl_prompt([], Image.new("RGB", (8, 8)))
    with pytest.raises(taskvec.TaskvecError, match="text-only"):
        gemma.encode([p])


def test_position_helper_counts_real_tokens(gemma):
    batch = gemma.encode(["Q:France\nA:", "Q:the Democratic Republic of the Congo\nA:"])
    last = gemma.position(batch, -1)
    assert last.tolist() == [batch.input_ids.shape[1] - 1] * 2
    first = gemma.position(batch, 0)
    assert int(batch.input_ids[0, first[0]]) == gemma.tokenizer.bos_token_id
    with pytest.raises(taskvec.TaskvecError, match="outside prompt 0"):
        gemma.position(batch, 40)
