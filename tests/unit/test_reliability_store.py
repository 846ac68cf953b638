"""The result store keeps nothing stale and loses nothing (audit cases S01, S03-S05, E01, E05, E07,
E08): unit names are safe file names checked before the work, each process writes through its own
temporary file, a unit is used only when its completeness marker matches, and --fresh clears only
the store folders of the current model and setting. No model is built here."""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

import taskvec
from taskvec.errors import TaskvecError
from taskvec.experiments import store as store_mod
from taskvec.experiments.cross_modal import Setting, pairs, task_key
from taskvec.experiments.store import Store, safe_name
from taskvec.tasks.task import Item, Task


def frame(n: int, correct: int | None = None) -> pd.DataFrame:
    correct = n if correct is None else correct
    return pd.DataFrame({"i": range(n), "correct": [1] * correct + [0] * (n - correct)})


class Calls:
    """A unit's ``run`` that counts its calls."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df, self.n = df, 0

    def __call__(self) -> pd.DataFrame:
        self.n += 1
        return self.df


@pytest.fixture(autouse=True)
def no_fresh_roots(monkeypatch):
    """Each test starts with no --fresh roots registered in this process."""
    monkeypatch.setattr(store_mod, "_RECOMPUTE", set())
    monkeypatch.setattr(store_mod, "_CLEARED", set())


# --- S01: two processes on one unit --------------------------------------------------------------
ROWS = 150_000


def _race_worker(folder: str, barrier, results) -> None:
    barrier.wait()  # both start together, compute the same unit and write it at about the same time
    try:
        df = Store(folder).get_or_run("u", lambda: pd.DataFrame({"x": range(ROWS), "y": ["row"] * ROWS}))
        results.put(("ok", len(df)))
    except BaseException as err:  # noqa: BLE001 - the test reports whatever a process died of
        results.put(("error", f"{type(err).__name__}: {err}"))


def test_S01_two_processes_on_one_unit_both_finish(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(3):
        folder = tmp_path / f"race{trial}"
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_race_worker, args=(str(folder), barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert outcomes == [("ok", ROWS)] * 3, outcomes
        # the stored unit is complete and is what a later run reads back; no temporary file is left
        st = Store(folder)
        assert st.units() == ["u"]
        assert len(st.get_or_run("u", lambda: pytest.fail("recomputed a complete unit"))) == ROWS
        assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


def test_S01_a_temporary_file_of_a_killed_process_is_removed(tmp_path):
    st = Store(tmp_path)
    dead = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    stale = st._temporary("u", ".csv").with_name(f".u.csv~{store_mod._HOST}~{dead.pid}~abcd1234.tmp")
    stale.write_text("x\n1\n")
    mine = st._temporary("v", ".csv")  # this process is alive: its temporary stays
    mine.write_text("x\n")
    Store(tmp_path)
    assert not stale.exists() and mine.exists()


# --- S03 / S04: incomplete units are recomputed, never used ----------------------------------------
def test_S03_an_empty_unit_file_is_recomputed(tmp_path):
    st = Store(tmp_path)
    st.get_or_run("u", lambda: frame(4))
    (tmp_path / "u.csv").write_bytes(b"")
    run = Calls(frame(4))
    with pytest.warns(UserWarning, match="incomplete"):
        df = st.get_or_run("u", run)
    assert run.n == 1 and len(df) == 4
    assert len(Store(tmp_path).get_or_run("u", lambda: pytest.fail("recomputed again"))) == 4

    (tmp_path / "legacy.csv").write_bytes(b"")  # a 0-byte file from an older store, no marker
    with pytest.warns(UserWarning, match="no completeness marker"):
        assert len(st.get_or_run("legacy", lambda: frame(2))) == 2


def test_S04_a_truncated_unit_is_recomputed_not_used(tmp_path):
    st = Store(tmp_path)
    st.get_or_run("u", lambda: frame(4, correct=2))
    lines = (tmp_path / "u.csv").read_text().splitlines(keepends=True)
    (tmp_path / "u.csv").write_text("".join(lines[:3]))  # header + 2 of the 4 rows: accuracy 1.0 if used
    with pytest.warns(UserWarning, match="does not match its completeness marker"):
        df = st.get_or_run("u", Calls(frame(4, correct=2)))
    assert df.correct.mean() == 0.5

    (tmp_path / "u.done").unlink()  # killed between writing the CSV and its marker
    with pytest.warns(UserWarning, match="no completeness marker"):
        assert st.get_or_run("u", Calls(frame(4, correct=2))).correct.mean() == 0.5


# --- S05: a folder that cannot be written fails before the work -------------------------------------
def test_S05_a_read_only_store_fails_before_the_work(tmp_path, monkeypatch):
    run = Calls(frame(1))
    (tmp_path / "file").write_text("")
    with pytest.raises(TaskvecError, match="cannot create the result store folder"):
        Store(tmp_path / "file" / "store")

    folder = tmp_path / "ro"
    Store(folder).get_or_run("done", lambda: frame(2))
    real = Path.write_bytes

    def read_only(self, data):  # what a read-only mount answers (chmod does not stop root)
        if self.parent == folder:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    st = Store(folder)
    assert len(st.get_or_run("done", run)) == 2  # complete units are still read
    with pytest.raises(TaskvecError, match=r"is not writable \(Read-only file system\)"):
        st.get_or_run("new", run)
    assert run.n == 0


def test_S05_a_read_only_store_with_permissions(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(TaskvecError, match="is not writable"):
            Store(folder).get_or_run("u", lambda: pytest.fail("ran before the check"))
    finally:
        folder.chmod(0o755)


# --- E01: unit names are safe file names, before the work ------------------------------------------
def caps(name: str = "caps", upper: bool = True) -> Task:
    words = ["red", "blue", "green", "cat", "dog", "sun"]
    items = tuple(Item(w, w.upper() if upper else w.title(), "val" if i < 3 else "test") for i, w in enumerate(words))
    return Task(name=name, instruction="Capitalise:", items=items)


def test_E01_a_task_name_with_a_slash_is_refused_or_made_safe_before_the_work(tmp_path):
    run = Calls(frame(1))
    with pytest.raises(TaskvecError, match="not a safe file name"):
        Store(tmp_path).get_or_run("sweep-caps/v2-text", run)
    with pytest.raises(TaskvecError, match="not a safe file name"):
        Store(tmp_path).get_or_run("../escape", run)
    assert run.n == 0
    key = task_key(caps("caps/v2"))
    assert "/" not in key and key.startswith("caps_v2-")
    assert task_key(caps("caps/v2")) != task_key(caps("caps_v2"))
    assert safe_name("sweep", "caps/v2") != safe_name("sweep", "caps_v2")
    assert len(safe_name("x" * 500)) <= store_mod.MAX_NAME
    Store(tmp_path).get_or_run(safe_name("sweep", key, "text"), run)
    assert run.n == 1 and [p.parent for p in tmp_path.rglob("*.csv")] == [tmp_path]


# --- E05: 0 is not "all" --------------------------------------------------------------------------
def test_E05_zero_items_is_an_error_not_all(tmp_path):
    for field in ("n_val", "n_test", "n_shots", "batch_size"):
        with pytest.raises(TaskvecError, match=f"{field}=0"):
            Setting(**{field: 0})
    with pytest.raises(TaskvecError, match="seeds"):
        Setting(seeds=())
    task = taskvec.get_task("antonym")
    with pytest.raises(TaskvecError, match="limit=0"):
        pairs(task, "val", "text", 0)
    with pytest.raises(TaskvecError, match="limit"):
        pairs(task, "val", "text", 2.5)
    assert len(pairs(task, "val", "text", None)) == len(task.pairs("val"))
    assert len(pairs(task, "val", "text", 3)) == 3
    assert Setting(seeds=[0, 1]) == Setting(seeds=(0, 1))


# --- E07: the key holds everything that decides a result ------------------------------------------
def test_E07_the_store_key_holds_the_task_content_and_the_whole_setting():
    assert task_key(caps()) == task_key(caps())
    assert task_key(caps(upper=True)) != task_key(caps(upper=False))  # same name, other labels
    assert Setting().key() == Setting().key()
    tpl = taskvec.GENERIC
    other = type(tpl)(name=tpl.name, demo=tpl.demo, query=tpl.query, marker=tpl.marker, prefix="System: ")
    assert Setting(template=other).key() != Setting().key()  # the template's prefix decides prompts too
    assert Setting(n_val=4).key() != Setting().key()


# --- E08: --fresh clears only the current model and setting ---------------------------------------
def test_E08_fresh_clears_only_this_model_and_setting(tmp_path, monkeypatch):
    from analyses import _common

    monkeypatch.setattr(_common, "PARTIAL", tmp_path / "_partial")
    args = argparse.Namespace(quick=True, fresh=False)
    root = _common.store_for(args, "transfer")
    for sub in ("modelA-set1", "modelA-set2", "modelB-set1"):
        Store(root / sub).get_or_run("u", lambda: frame(2))

    fresh = _common.store_for(argparse.Namespace(quick=True, fresh=True), "transfer")
    assert fresh == root
    assert all((root / sub / "u.csv").exists() for sub in ("modelA-set1", "modelA-set2", "modelB-set1"))
    run = Calls(frame(2))
    st = Store(root / "modelA-set1")  # the run's model and setting: recomputed
    st.get_or_run("u", run)
    assert run.n == 1
    Store(root / "modelA-set1").get_or_run("u", run)  # reopened in the same run: not cleared again
    assert run.n == 1
    for sub in ("modelA-set2", "modelB-set1"):  # other settings and models: untouched
        assert (root / sub / "u.csv").exists() and (root / sub / "u.done").exists(), sub

    other = _common.store_for(argparse.Namespace(quick=False, fresh=False), "transfer")
    assert other != root


def test_E08_store_fresh_argument_clears_only_its_folder(tmp_path):
    Store(tmp_path / "a").get_or_run("u", lambda: frame(1))
    Store(tmp_path / "b").get_or_run("u", lambda: frame(1))
    run = Calls(frame(1))
    Store(tmp_path / "a", fresh=True).get_or_run("u", run)
    assert run.n == 1 and (tmp_path / "b" / "u.done").exists()


def test_a_save_that_fails_after_the_work_returns_the_result_with_a_warning(tmp_path, monkeypatch):
    st = Store(tmp_path)
    st._check_writable()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = st.get_or_run("u", lambda: frame(3))
    assert len(df) == 3 and any("could not save unit 'u'" in str(w.message) for w in caught)
    assert not list(tmp_path.iterdir())
