"""The command line's reliability cases on a tiny random Llama (audit C07-C30, rule 7): prompts reach
the model as typed, output folders are made before the work, a write that still fails after the
work saves the result elsewhere and says where (exit status 1), and a bad input file ends in
``taskvec: error: …`` with status 2, never a traceback. ``taskvec.cli.main`` runs in-process
except where the exit status and the absence of a traceback are the point (a subprocess)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import taskvec
import taskvec.experiments.demo
import taskvec.methods.lens
import taskvec.methods.patching
import taskvec.methods.vectors
from taskvec.cli import main
from taskvec.models.model import Model
from taskvec.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny("llama", tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def vector(tiny, tmp_path_factory):
    """A text-ICL vector of the tiny model, written by ``taskvec extract``."""
    stem = tmp_path_factory.mktemp("vecs") / "cc"
    assert main(["extract", "--model", tiny, "--task", "country-capital", "-n", "4", "--shots", "2", "--seeds", "0",
                 "--out", str(stem)]) == 0
    return stem


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A fresh current folder: where a result that cannot be written where asked is saved."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


def _seen_ids(monkeypatch):
    """Record the ids and the tokenizer of every batch the model encodes."""
    seen = []
    encode = Model.encode

    def recording(self, prompts):
        batch = encode(self, prompts)
        mask = batch.inputs["attention_mask"].bool()
        seen.extend((self.tokenizer, row[m].tolist()) for row, m in zip(batch.input_ids, mask))
        return batch

    monkeypatch.setattr(Model, "encode", recording)
    return seen


def _break_folder_after(monkeypatch, module, name, folder: Path, *, remove_only: bool = False):
    """Make ``module.name`` do its work, then turn ``folder`` into a regular file (or only remove
    it): the write that follows the work fails for real (not a mocked error)."""
    original = getattr(module, name)

    def then_break(*args, **kwargs):
        result = original(*args, **kwargs)
        shutil.rmtree(folder)
        if not remove_only:
            folder.write_text("now a file")
        return result

    monkeypatch.setattr(module, name, then_break)


def _error(stderr: str) -> str:
    """The last line of stderr (progress bars of the model loading come before it)."""
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "taskvec.cli", *argv], capture_output=True, text=True, timeout=300)


def test_C07_non_ascii_prompts_reach_the_model_as_typed(tiny, monkeypatch):
    seen = _seen_ids(monkeypatch)
    assert main(["lens", "Q:café\\nA:", "Q:مصر\\nA:", "--model", tiny, "--top-k", "1"]) == 0
    tokenizer = seen[0][0]
    assert [ids for _, ids in seen] == [tokenizer("Q:café\nA:")["input_ids"], tokenizer("Q:مصر\nA:")["input_ids"]]


def test_C08_a_windows_path_in_a_prompt_reaches_the_model_as_typed(tiny, monkeypatch):
    seen = _seen_ids(monkeypatch)
    assert main(["lens", r"Q:C:\Users\nA:", "--model", tiny, "--top-k", "1"]) == 0
    assert seen[0][1] == seen[0][0]("Q:C:\\Users\nA:")["input_ids"]


def test_C09_lens_creates_missing_output_folders(tiny, tmp_path):
    out = tmp_path / "nodir" / "sub" / "x.csv"
    assert main(["lens", "Q:France\\nA:", "--model", tiny, "--top-k", "2", "--out", str(out)]) == 0
    assert set(pd.read_csv(out).columns) >= {"prompt", "layer", "rank", "token"}


def test_C09_lens_output_that_fails_after_the_work_is_saved_in_the_current_folder(tiny, tmp_path, cwd, monkeypatch,
                                                                                  capsys):
    folder = tmp_path / "out"
    _break_folder_after(monkeypatch, taskvec.methods.lens, "lens", folder)
    (cwd / "x.csv").write_text("someone else's file")  # never replaced: the copy takes a free name
    rc = main(["lens", "Q:France\\nA:", "--model", tiny, "--top-k", "2", "--out", str(folder / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and _error(err).startswith("taskvec: error: could not write ") and f"saved it as {cwd / 'x-1.csv'}" in err
    assert (cwd / "x.csv").read_text() == "someone else's file"
    assert len(pd.read_csv(cwd / "x-1.csv")) == 3 * 2  # 3 layers x top-2


def test_C09_an_output_folder_removed_during_the_run_is_made_again(tiny, tmp_path, cwd, monkeypatch):
    folder = tmp_path / "out" / "sub"
    _break_folder_after(monkeypatch, taskvec.methods.lens, "lens", folder.parent, remove_only=True)
    assert main(["lens", "Q:France\\nA:", "--model", tiny, "--top-k", "1", "--out", str(folder / "x.csv")]) == 0
    assert len(pd.read_csv(folder / "x.csv")) == 3 and not list(cwd.iterdir())


def test_C17_extract_creates_missing_folders_and_keeps_dotted_names(tiny, tmp_path):
    stem = tmp_path / "a" / "b" / "cc.text"
    assert main(["extract", "--model", tiny, "--task", "country-capital", "-n", "3", "--shots", "1", "--seeds", "0",
                 "--out", str(stem)]) == 0
    assert taskvec.TaskVector.load(stem).task == "country-capital"


def test_C17_a_vector_that_fails_to_save_after_extraction_is_saved_in_the_current_folder(tiny, tmp_path, cwd,
                                                                                         monkeypatch, capsys):
    folder = tmp_path / "vecs"
    _break_folder_after(monkeypatch, taskvec.methods.vectors, "extract_icl", folder)
    rc = main(["extract", "--model", tiny, "--task", "country-capital", "-n", "3", "--shots", "1", "--seeds", "0",
               "--out", str(folder / "cc")])
    out, err = capsys.readouterr()
    assert rc == 1 and "TaskVector(" in out and f"saved it as {cwd / 'cc'} instead" in err
    assert taskvec.TaskVector.load(cwd / "cc").n_layers == 3


def test_C19_n_zero_is_refused_not_taken_as_all(tiny, tmp_path, capsys):
    rc = main(["extract", "--model", tiny, "--task", "country-capital", "-n", "0", "--out", str(tmp_path / "v")])
    assert rc == 2 and "-n=0: pass a whole number >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert main(["extract", "--model", tiny, "--task", "country-capital", "-n", "2", "--shots", "1", "--seeds", "0",
                 "--out", str(tmp_path / "v")]) == 0
    assert taskvec.TaskVector.load(tmp_path / "v").n_prompts == 2


def test_C24_patch_output_that_fails_after_the_work_is_saved_in_the_current_folder(tiny, vector, tmp_path, cwd,
                                                                                   monkeypatch, capsys):
    folder = tmp_path / "out"
    _break_folder_after(monkeypatch, taskvec.methods.patching, "patch_predict", folder)
    rc = main(["patch", str(vector), "--layer", "1", "--n-test", "4", "--out-dir", str(folder)])
    out, err = capsys.readouterr()
    assert rc == 1 and "patched" in out and f"saved it as {cwd / 'predictions.csv'} instead" in err
    assert list(pd.read_csv(cwd / "predictions.csv").columns) == ["query", "label", "no_context", "patched"]


def test_C24_patch_writes_into_a_new_out_dir(tiny, vector, tmp_path):
    out = tmp_path / "new" / "out"
    assert main(["patch", str(vector), "--n-val", "2", "--n-test", "3", "--out-dir", str(out)]) == 0
    assert len(pd.read_csv(out / "predictions.csv")) == 3 and (out / "validation_sweep.csv").exists()


def _copy_vector(vector: Path, stem: Path) -> Path:
    for suffix in (".safetensors", ".json"):
        shutil.copy(vector.with_name(vector.name + suffix), stem.with_name(stem.name + suffix))
    return stem


def test_C25_corrupt_or_pickled_vector_files_end_in_a_clear_error(vector, tmp_path, capsys):
    flipped = _copy_vector(vector, tmp_path / "flipped")
    data = bytearray(Path(f"{flipped}.safetensors").read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    Path(f"{flipped}.safetensors").write_bytes(bytes(data))
    pickled = _copy_vector(vector, tmp_path / "pickled")
    Path(f"{pickled}.safetensors").write_bytes(pickle.dumps({"vectors": torch.zeros(3, 64)}))
    truncated = _copy_vector(vector, tmp_path / "truncated")
    Path(f"{truncated}.safetensors").write_bytes(Path(f"{truncated}.safetensors").read_bytes()[:50])
    for stem in (flipped, truncated):  # in-process: main returns 2, nothing escapes it
        assert main(["patch", str(stem), "--layer", "1", "--n-test", "2"]) == 2
        assert _error(capsys.readouterr().err).startswith("taskvec: error: ")
    done = _run("patch", str(pickled), "--layer", "1", "--n-test", "2")  # the console script, as a user runs it
    assert done.returncode == 2, done.stderr
    assert _error(done.stderr).startswith("taskvec: error: ") and "Traceback" not in done.stderr, done.stderr


def test_C25_whatever_loading_a_vector_raises_is_shown_as_an_error(vector, monkeypatch, capsys):
    def broken(path):
        raise RuntimeError("Error while deserializing header: HeaderTooLarge")

    monkeypatch.setattr(taskvec.methods.vectors.TaskVector, "load", broken)
    assert main(["patch", str(vector), "--layer", "1"]) == 2
    err = capsys.readouterr().err
    assert _error(err).startswith(f"taskvec: error: cannot load the task vector {str(vector)!r}: RuntimeError: ") and \
        "HeaderTooLarge" in err


def test_C27_vector_json_without_model_name_is_an_error_not_a_keyerror(vector, tmp_path, capsys):
    stem = _copy_vector(vector, tmp_path / "nomodel")
    info = json.loads(Path(f"{stem}.json").read_text())
    del info["model_name"]
    Path(f"{stem}.json").write_text(json.dumps(info))
    assert main(["patch", str(stem), "--layer", "1", "--n-test", "2"]) == 2
    err = capsys.readouterr().err
    assert _error(err).startswith("taskvec: error: ") and "model_name" in err


def test_C12_a_model_that_cannot_be_loaded_is_an_error_without_traceback(tmp_path):
    done = _run("lens", "x", "--model", str(tmp_path / "no" / "such" / "model"))
    assert done.returncode == 2 and _error(done.stderr).startswith("taskvec: error: ") and "Traceback" not in done.stderr


def test_C30_demo_report_that_cannot_be_written_after_the_work_is_saved_elsewhere(tiny, tmp_path, monkeypatch,
                                                                                  capsys):
    folder, here = tmp_path / "report", tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    _break_folder_after(monkeypatch, taskvec.experiments.demo, "text_icl_section", folder)
    rc = main(["demo", "--model", tiny, "--vlm", "", "-n", "2", "--shots", "1", "--out", str(folder / "demo.html")])
    err = _error(capsys.readouterr().err)
    assert rc == 1 and err.startswith("taskvec: error: could not write") and "saved it as" in err
    rescued = here / "demo.html"
    assert rescued.exists() and "<h1>taskvec demo</h1>" in rescued.read_text() and str(rescued) in err


def test_reproduce_out_dir_is_checked_before_the_analysis_starts(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = main(["reproduce", "table3", "--out-dir", str(blocker / "results"), "--quick"])
    err = _error(capsys.readouterr().err)
    assert rc == 2 and "--out-dir" in err and "a-file" in err
