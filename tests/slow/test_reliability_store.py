"""R3 end to end: SIGTERM to a real `taskvec reproduce fig11 --quick` (on a tiny random Llama)
stops the analysis with it, leaves only complete units in the store, and a rerun resumes from them
to the numbers of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from taskvec.experiments.store import Store
from taskvec.models.tiny import build_tiny


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every live process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def reproduce(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "taskvec.cli", "reproduce", "fig11", "--quick", "--model", str(model),
            "--query", "text", "--out-dir", str(out)]


@pytest.mark.slow
def test_R3_sigterm_to_reproduce_stops_the_analysis_and_a_rerun_resumes_to_the_same_numbers(tmp_path):
    torch.manual_seed(0)
    model = build_tiny("llama", tmp_path / "tiny")
    out = tmp_path / "out"
    parent = subprocess.Popen(reproduce(model, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("_partial/transfer-quick/*/sweep-*.done")):
            assert parent.poll() is None, parent.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no unit was stored in time"
            time.sleep(0.05)
        child = [pid for pid, (ppid, _, _) in processes().items() if ppid == parent.pid]
        assert child, "the analysis child is not running"
        parent.send_signal(signal.SIGTERM)
        log, _ = parent.communicate(timeout=60)
        time.sleep(0.5)
        left = [pid for pid, (_, pgid, _) in processes().items() if pgid in child or pid in child]
        assert not left, f"left running after SIGTERM: {left}\n{log[-2000:]}"
        assert parent.returncode == 128 + signal.SIGTERM, log[-2000:]
    finally:
        if parent.poll() is None:
            parent.kill()
    if not list(out.glob("_partial/transfer-quick/*/test-*.done")):  # stopped within the sweeps, as intended
        folder = next(out.glob("_partial/transfer-quick/*"))
        stems = sorted(p.stem for p in folder.glob("*.csv"))
        assert stems and Store(folder).units() == stems  # every unit left behind is complete

    again = subprocess.run(reproduce(model, out), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    whole = tmp_path / "whole"
    once = subprocess.run(reproduce(model, whole), capture_output=True, text=True)
    assert once.returncode == 0, once.stdout[-2000:] + once.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(out / "fig11_layer_sweep.csv"), pd.read_csv(whole / "fig11_layer_sweep.csv"))
    assert "incomplete" not in again.stderr
