"""The command line's reliability cases that need no model (audit C07, C08, C09, C17, C19, C24, C30):
prompts typed on the command line reach the model as text, and bad counts and output paths are
refused before any work. The unit tier refuses to build a model (tests/unit/conftest.py), so a
command that returns here with status 2 provably stopped before loading one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from taskvec import TaskvecError
from taskvec.cli import main, prompt_text, writable_dir, writable_file

MODEL = "gemma-3-270m"  # never loaded: every command below stops before the model


def _can_write(folder: Path) -> bool:
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder nothing can be written in: chmod 0o555, or, for root (whom chmod does not
    stop), the immutable attribute (chattr +i), which stops root too."""
    folder = tmp_path / "ro_empty"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if _can_write(folder):
        folder.chmod(0o755)
        if shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable or _can_write(folder):
            pytest.skip("running as root without chattr +i: no honest way to make a folder read-only here")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_C07_non_ascii_prompts_reach_the_model_as_typed():
    assert prompt_text(r"Q:café\nA:") == "Q:café\nA:"
    assert prompt_text(r"Q:مصر\nA:") == "Q:مصر\nA:"
    assert prompt_text("Q:日本\\nA:東京\\n\\nQ:Ελλάδα\\nA:") == "Q:日本\nA:東京\n\nQ:Ελλάδα\nA:"
    assert prompt_text("emoji 🍎\\t!") == "emoji 🍎\t!"


def test_C08_other_backslashes_are_kept_as_typed():
    assert prompt_text(r"Q:C:\Users\nA:") == "Q:C:\\Users\nA:"
    assert prompt_text(r"\x41 \u00e9 \U0001F600 \d \0") == r"\x41 \u00e9 \U0001F600 \d \0"  # no other escape
    assert prompt_text(r"a\\nb") == "a\\nb"  # an escaped backslash, then the letter n
    assert prompt_text("trailing\\") == "trailing\\"


def test_C09_output_parent_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc = main(["lens", "Q:France\\nA:", "--model", MODEL, "--out", str(tmp_path / "afile" / "sub" / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("taskvec: error: --out ") and "is a file, not a folder" in err


def test_C09_missing_output_folders_are_created_before_the_work(tmp_path):
    target = tmp_path / "nodir" / "sub" / "x.csv"
    assert writable_file(target, "--out") == target
    assert target.parent.is_dir() and not target.exists() and not list(target.parent.iterdir())  # no probe left
    with pytest.raises(TaskvecError, match="is a folder"):
        writable_file(tmp_path / "nodir", "--out")
    with pytest.raises(TaskvecError, match="--out is empty"):
        writable_file("", "--out")


def test_C09_read_only_output_folder_is_refused(read_only_dir):
    with pytest.raises(TaskvecError, match="--out '.*': cannot (write in|create the folder)"):
        writable_file(read_only_dir / "x.csv", "--out")
    with pytest.raises(TaskvecError, match="cannot create the folder"):
        writable_file(read_only_dir / "sub" / "x.csv", "--out")


def test_C17_extract_to_a_read_only_folder_stops_before_extracting(read_only_dir, capsys):
    rc = main(["extract", "--model", MODEL, "--task", "country-capital", "-n", "4", "--shots", "2", "--seeds", "0",
               "--out", str(read_only_dir / "v")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("taskvec: error: --out ") and "TaskVector" not in out


def test_C17_extract_to_a_stem_under_a_file_stops_before_extracting(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc = main(["extract", "--task", "country-capital", "--out", str(tmp_path / "afile" / "cc")])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_C17_extract_never_replaces_another_kind_of_file_and_says_so_before_the_work(tmp_path, capsys):
    (tmp_path / "cc.json").write_text('{"model_type": "llama"}')
    rc = main(["extract", "--model", MODEL, "--task", "country-capital", "--out", str(tmp_path / "cc")])
    assert rc == 2 and "not a taskvec artefact" in capsys.readouterr().err
    assert (tmp_path / "cc.json").read_text() == '{"model_type": "llama"}'


@pytest.mark.parametrize("argv", [
    ["extract", "--task", "country-capital", "-n", "0", "--out", "{tmp}/v"],
    ["extract", "--task", "country-capital", "--shots", "0", "--out", "{tmp}/v"],
    ["extract", "--task", "country-capital", "--batch-size", "0", "--out", "{tmp}/v"],
    ["extract", "--task", "country-capital", "-n", "-3", "--out", "{tmp}/v"],
    ["patch", "{tmp}/v", "--n-test", "0"],
    ["patch", "{tmp}/v", "--n-val", "0"],
    ["lens", "x", "--top-k", "0"],
    ["demo", "-n", "0", "--out", "{tmp}/d.html"],
])
def test_C19_counts_below_one_are_refused_before_any_work(argv, tmp_path, capsys):
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and "pass a whole number >= 1" in err and err.startswith("taskvec: error: -")
    assert not (tmp_path / "v.safetensors").exists()


def test_C24_patch_to_a_read_only_out_dir_stops_before_the_work(read_only_dir, tmp_path, capsys):
    rc = main(["patch", str(tmp_path / "never-read"), "--layer", "6", "--n-test", "4", "--out-dir",
               str(read_only_dir / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("taskvec: error: --out-dir ") and "cannot create the folder" in err


def test_C24_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TaskvecError, match="afile is a file, not a folder"):
        writable_dir(tmp_path / "afile", "--out-dir")
    assert writable_dir(tmp_path / "a" / "b", "--out-dir").is_dir()


def test_C30_demo_to_a_read_only_folder_stops_before_the_work(read_only_dir, capsys):
    rc = main(["demo", "--vlm", "", "-n", "4", "--out", str(read_only_dir / "demo.html")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("taskvec: error: --out ") and out == ""
