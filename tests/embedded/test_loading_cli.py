"""Loading the embedded Gemma-3-270m, and the CLI commands that use it."""

import subprocess
import sys

import pytest

import taskvec
from taskvec.models.loading import converted_dir


def test_embedded_gemma_facts(gemma):
    assert (gemma.n_layers, gemma.d_model, gemma.n_heads, gemma.d_head) == (18, 640, 4, 256)
    assert not gemma.is_vlm and type(gemma.hf).__name__ == "Gemma3ForCausalLM"
    assert not any(p.requires_grad for p in gemma.hf.parameters())
    folder = converted_dir("gemma-3-270m")
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_head_input_shape(gemma):
    batch = gemma.encode(["Q:France\nA:"])
    with gemma.trace(batch):
        heads = gemma.head_input(3).input.save()
    assert heads.shape[-1] == gemma.n_heads * gemma.d_head


def test_unknown_model_error_lists_embedded_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(taskvec.TaskvecError) as err:
        taskvec.load("nobody/does-not-exist-xyz")
    msg = str(err.value)
    assert "nobody/does-not-exist-xyz" in msg and "gemma-3-270m" in msg and "offline" in msg


def test_remote_flag_reaches_trace_kwargs(gemma):
    gemma.remote = True
    try:
        assert gemma.trace_kwargs() == {"remote": True}
    finally:
        gemma.remote = False
    assert gemma.trace_kwargs() == {}


def test_few_shot_beats_zero_shot_on_capitals(gemma):
    from tests.conftest import CAPITALS

    few = taskvec.sample_icl_prompts(CAPITALS, CAPITALS, n_shots=5, seed=0)
    zero = [taskvec.icl_prompt([], x, label=y) for x, y in CAPITALS]
    labels = [y for _, y in CAPITALS]
    acc_few = taskvec.accuracy(taskvec.predict(gemma, few, progress=False), labels)
    acc_zero = taskvec.accuracy(taskvec.predict(gemma, zero, progress=False), labels)
    assert acc_few >= 0.6 and acc_few >= acc_zero + 0.4


def test_cli_extract_then_patch(tmp_path):
    stem = tmp_path / "cc"
    run = [sys.executable, "-m", "taskvec.cli"]
    subprocess.run(run + ["extract", "--task", "country-capital", "-n", "12", "--seeds", "0", "--out", str(stem)],
                   check=True, capture_output=True, text=True)
    vec = taskvec.TaskVector.load(stem)
    assert (vec.task, vec.spec, vec.n_prompts) == ("country-capital", "text-icl", 12)
    out = subprocess.run(run + ["patch", str(stem), "--layer", "6", "--n-test", "10", "--out-dir", str(tmp_path)],
                         check=True, capture_output=True, text=True)
    assert "layer 6" in out.stdout and "patched" in out.stdout
    import pandas as pd

    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert len(preds) == 10 and list(preds.columns) == ["query", "label", "no_context", "patched"]
