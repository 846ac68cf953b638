"""Resumable results and processes on a tiny random Llama (audit cases E01, E07, R3): a task named
with a '/' is stored under a safe name, an edited task file is recomputed instead of read back, and
stopping `taskvec reproduce` stops its analysis child too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import taskvec
from taskvec.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]
SETTING = dict(n_shots=2, n_val=3, n_test=3, batch_size=8)



def write_task(path: Path, val_label: str, test_label: str) -> Path:
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    rows = ["input,output,split"] + [f"{w},{val_label if i < 4 else test_label},{'val' if i < 4 else 'test'}"
                                     for i, w in enumerate(words)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run(model, task, store):
    s = taskvec.Setting(**SETTING)
    return taskvec.transfer_experiment(model, [task], [("text", "text")], s, store=store, progress=False)["summary"]


def test_E01_a_task_named_with_a_slash_runs_and_resumes_with_a_store(tiny, tmp_path):
    task = taskvec.load_task(write_task(tmp_path / "caps.csv", "a", "a"), name="caps/v2")
    store = tmp_path / "store"
    first = run(tiny, task, store)
    assert set(first.task) == {"caps/v2"}
    files = list(store.rglob("*.csv"))
    assert files and all(p.parent.parent == store for p in files), files  # no 'sweep-caps/' folder
    pd.testing.assert_frame_equal(run(tiny, task, store), first, check_dtype=False)


def test_E07_an_edited_task_file_is_recomputed_not_read_back(tiny, tmp_path):
    path = tmp_path / "mycaps.csv"
    store = tmp_path / "store"
    before = run(tiny, taskvec.load_task(write_task(path, "a", "a")), store)
    assert before.set_index("method").loc["Random", "accuracy"] == 1.0  # every label is the majority
    edited = taskvec.load_task(write_task(path, "a", "b"))  # same name and file, other test labels
    again = run(tiny, edited, store)
    assert again.set_index("method").loc["Random", "accuracy"] == 0.0
    pd.testing.assert_frame_equal(again, run(tiny, edited, None), check_dtype=False)


# --- R3: stopping `taskvec reproduce` stops its child ---------------------------------------------
SCRIPT = textwrap.dedent('''
    """A stand-in analysis: records its pid and a grandchild's, then works for a minute."""
    import os, signal, subprocess, sys, time
    out = os.environ["R3_OUT"]
    # Ctrl-C stops it, as it stops any Python program started from a terminal, even when the test
    # runner itself was started in the background (where SIGINT is inherited as ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if "--clean-stop" in sys.argv:  # an analysis that finishes its unit before stopping
        def stop(signum, frame):
            time.sleep(0.5)
            open(out + "/stopped", "w").write(str(signum))
            sys.exit(3)
        signal.signal(signal.SIGTERM, stop)
    open(out + "/pids", "w").write(f"{os.getpid()} {grandchild.pid}")
    time.sleep(60)
''')


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def start_reproduce(tmp_path: Path, *script_args: str) -> tuple[subprocess.Popen, list[int]]:
    """`taskvec reproduce r3` (the real command, its analyses folder pointed at a stand-in script)."""
    fake = tmp_path / "checkout" / "analyses"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "r3_sleeper.py").write_text(SCRIPT)
    code = ("import sys, pathlib, taskvec.cli as cli; "
            f"cli.analyses_dir = lambda: pathlib.Path({str(fake)!r}); "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = dict(os.environ, R3_OUT=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", code, "reproduce", "r3_sleeper", *script_args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pids").exists():
        assert parent.poll() is None, parent.communicate()[0]
        assert time.monotonic() < deadline, "the analysis child never started"
        time.sleep(0.05)
    time.sleep(0.1)
    return parent, [int(x) for x in (tmp_path / "pids").read_text().split()]


def stop_and_check(parent: subprocess.Popen, pids: list[int], sig: int) -> tuple[int, str]:
    try:
        parent.send_signal(sig)
        out, _ = parent.communicate(timeout=30)
        deadline = time.monotonic() + 5
        while any(running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if running(p)], f"left running after {signal.Signals(sig).name}: {out}"
        return parent.returncode, out
    finally:
        for p in [parent.pid, *pids]:
            if running(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_R3_a_signal_to_reproduce_stops_its_child_and_grandchildren(tmp_path, sig):
    parent, pids = start_reproduce(tmp_path)
    rc, out = stop_and_check(parent, pids, sig)
    assert rc == 128 + sig, out
    assert f"stopped by {signal.Signals(sig).name}" in out


def test_R3_reproduce_waits_for_its_child_to_stop_and_returns_its_status(tmp_path):
    parent, pids = start_reproduce(tmp_path, "--clean-stop")
    rc, out = stop_and_check(parent, pids, signal.SIGTERM)
    assert (tmp_path / "stopped").read_text() == str(int(signal.SIGTERM))  # the child got the signal and finished
    assert rc == 3, out


def test_E07_a_local_model_retrained_in_place_gets_another_key(tmp_path):
    """The second half of E07: results stored for a local folder are keyed by its files too, so
    weights saved again into the same folder never reuse the old units."""
    folder = build_tiny("llama", tmp_path / "m")
    before = taskvec.load(str(folder)).key
    assert taskvec.load(str(folder)).key == before  # same files, same key
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # a retrain in place: same name, new file
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert taskvec.load(str(folder)).key != before
