"""The analysis scripts run end to end in their --quick setting (on one task, into a temporary
results folder through `taskvec reproduce --out-dir`), write what they promise, and resume."""

import subprocess
import sys

import pandas as pd
import pytest


def reproduce(name: str, out, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "taskvec.cli", "reproduce", name, "--out-dir", str(out), "--quick", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_table3_quick_writes_every_baseline_and_resumes_to_the_same_numbers(tmp_path):
    reproduce("table3", tmp_path, "--tasks", "country-capital")
    table = pd.read_csv(tmp_path / "table3_cross_modal.csv", index_col=0)
    for setting in ("No Context", "Random", "Image ICL Base", "Image ICL Patch", "Text ICL xBase", "Text ICL xPatch"):
        assert setting in table.index, table.index.tolist()
    assert table["country-capital"].between(0, 1).all()
    assert any((tmp_path / "_partial").rglob("sweep-*.csv")), "no resumable partial results were stored"
    reproduce("table3", tmp_path, "--tasks", "country-capital")  # resumes from the store
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table3_cross_modal.csv", index_col=0), table)


@pytest.mark.slow
def test_delta_heatmap_quick_writes_one_delta_per_layer_and_head(tmp_path):
    reproduce("fig_delta_heatmap", tmp_path, "--tasks", "country-capital")
    df = pd.read_csv(tmp_path / "fig_delta_heatmap.csv")
    assert set(df.task) == {"country-capital"}
    per_reduce = df.groupby("reduce").size()
    assert (per_reduce == 18 * 4).all(), per_reduce  # Gemma-3-270m: 18 layers x 4 heads
    assert (df.delta >= 0).all() and df.delta.max() > 0
    assert (tmp_path / "fig_delta_heatmap.html").exists()


@pytest.mark.slow
@pytest.mark.parametrize("samples", ["reference", "subset"])
def test_fig8_quick_runs_with_either_sample_protocol(tmp_path, samples):
    """Both --samples protocols end to end on a tiny Llama (the reference one once failed before any work
    on a path joined to a string)."""
    import torch

    from taskvec.models.tiny import build_tiny

    torch.manual_seed(0)
    model = build_tiny("llama", tmp_path / "tiny")
    reproduce("fig8", tmp_path / "out", "--model", str(model), "--query", "text", "--tasks", "country-capital",
              "--samples", samples)
    df = pd.read_csv(tmp_path / "out" / "fig8_ensembling.csv")
    assert set(df.method) == {"Exemplar xPatch", "Instruction + Exemplar xPatch"} and (df.samples == samples).all()
    assert df["mean"].between(0, 1).all() and (df.draws == 2).all() and (df.n_queries == 20).all()
    assert sorted(df.k.unique()) == ([5, 10, 15] if samples == "reference" else [2, 5, 10])
