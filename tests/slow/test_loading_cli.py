"""The demo's LLM part end to end (minutes)."""

import pytest


@pytest.mark.slow
def test_demo_llm_part_writes_a_report(tmp_path):
    from taskvec.experiments.demo import run_demo

    out = run_demo(vlm_name=None, n_queries=12, out=tmp_path / "demo.html", progress=False)
    icl = out["icl"].set_index("setting").accuracy
    assert icl.iloc[1] > icl.iloc[0]  # 5-shot beats the query alone
    assert set(out["phases"].category) == {"input", "task", "answer"}
    page = out["report"].read_text()
    assert "plotly" in page.lower() and "0-shot vs 5-shot" in page
