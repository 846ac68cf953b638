import plotly.graph_objects as go
import pytest
import torch

import taskvec


@pytest.fixture(scope="module")
def icl(gemma):
    from tests.conftest import CAPITALS

    return taskvec.sample_icl_prompts(CAPITALS, CAPITALS, n_shots=5, seed=0)


@pytest.fixture(scope="module")
def result(gemma, icl):
    return taskvec.lens(gemma, icl, batch_size=4, progress=False)


def test_last_layer_lens_equals_model_logits(gemma, icl, result):
    logits = taskvec.first_token_logits(gemma, icl, progress=False)
    top = result.top1()
    last = top[top.layer == gemma.n_layers - 1].sort_values("prompt")
    assert last.token_id.tolist() == logits.argmax(-1).tolist()
    probs = torch.softmax(logits, -1).max(-1).values
    assert last.probability.tolist() == pytest.approx(probs.tolist(), abs=1e-4)


def test_tidy_table_shape_and_ranks(gemma, icl, result):
    df = result.df
    assert list(df.columns) == ["prompt", "layer", "rank", "token", "token_id", "probability", "logit"]
    assert len(df) == len(icl) * gemma.n_layers * 5
    per = df.groupby(["prompt", "layer"]).probability.apply(lambda s: s.is_monotonic_decreasing)
    assert per.all()
    assert result.hidden.shape == (len(icl), gemma.n_layers, gemma.d_model)


def test_batching_and_padding_do_not_change_results(gemma, icl, result):
    single = taskvec.lens(gemma, icl[3], progress=False)
    a = result.df[result.df.prompt == 3].reset_index(drop=True)
    b = single.df.reset_index(drop=True)
    assert a.token_id.tolist() == b.token_id.tolist()
    assert a.probability.tolist() == pytest.approx(b.probability.tolist(), abs=2e-3)


def test_phases_answer_rises_in_late_layers(gemma, icl, result):
    from tests.conftest import CAPITALS

    ph = result.phases({"input": [":"], "task": ["capital", "city"], "answer": [y for _, y in CAPITALS]})
    piv = ph.df.pivot(index="layer", columns="category", values="mean")
    assert list(piv.index) == list(range(gemma.n_layers))
    assert piv["answer"].iloc[-4:].mean() > 0.3 > piv["answer"].iloc[:6].max()
    assert ph.per_prompt.shape == (len(icl), gemma.n_layers, 3)
    assert ((ph.df["mean"] >= 0) & (ph.df["mean"] <= 1)).all()
    fig = ph.figure()
    assert isinstance(fig, go.Figure) and {t.name for t in fig.data if t.name} == {"input", "task", "answer"}


def test_figures(result):
    assert isinstance(result.figure_table(0), go.Figure)
    fig = result.figure_top1_distribution()
    shares = {}
    for tr in fig.data:
        for x, y in zip(tr.x, tr.y):
            shares[x] = shares.get(x, 0) + y
    assert all(v == pytest.approx(1.0) for v in shares.values())
    assert "LensResult" in result._repr_html_() and "prompts" in repr(result)


def test_decode_mean_vector(gemma, result):
    table = taskvec.decode(gemma, result.hidden.mean(0), layer=gemma.n_layers - 1, top_k=3)
    assert len(table) == 3 and table.probability.is_monotonic_decreasing
    with pytest.raises(taskvec.TaskvecError, match="width 640"):
        taskvec.decode(gemma, torch.zeros(10))
    with pytest.raises(taskvec.TaskvecError, match="pass layer="):
        taskvec.decode(gemma, result.hidden.mean(0))


def test_selected_layers_and_position(gemma, icl):
    r = taskvec.lens(gemma, icl[:2], layers=[2, -1], position=0, top_k=1, progress=False)
    assert sorted(r.df.layer.unique()) == [2, gemma.n_layers - 1]


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(prompts=[]), "no prompts"), (dict(layers=[99]), "out of range"), (dict(position=500), "outside prompt"),
     (dict(top_k=0), "top_k")],
)
def test_bad_input(gemma, kwargs, match):
    args = dict(prompts=["Q:France\nA:"])
    args.update(kwargs)
    with pytest.raises(taskvec.TaskvecError, match=match):
        taskvec.lens(gemma, args.pop("prompts"), progress=False, **args)


def test_prompt_longer_than_context(gemma):
    too_long = "word " * (gemma.max_length + 10)
    with pytest.raises(taskvec.TaskvecError, match="context"):
        taskvec.lens(gemma, [too_long], progress=False)
