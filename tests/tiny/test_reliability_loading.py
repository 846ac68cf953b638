"""Reliability audit, loading (issue 24: L03, L07, K04c, C12) on tiny saved models: a folder that is
not (or no longer) a whole model is refused with what is missing, never loaded half-broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import taskvec
from taskvec.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


def _error(folder: Path) -> str:
    with pytest.raises(taskvec.TaskvecError) as err:
        taskvec.load(str(folder))
    return str(err.value)


def test_L03_saved_model_folder_loads_and_one_without_config_says_so(tiny_llama, tmp_path):
    assert taskvec.load(str(tiny_llama)).n_layers == 3
    folder = _copy(tiny_llama, tmp_path / "noconfig")
    (folder / "config.json").unlink()
    msg = _error(folder)
    assert "not a saved model" in msg and "no config.json" in msg and "model.safetensors" in msg and "neither" not in msg


def test_L07_tiny_folder_with_an_unknown_model_type_names_it(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "badarch")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no_such_arch_xyz"
    (folder / "config.json").write_text(json.dumps(config))
    msg = _error(folder)
    assert "model_type 'no_such_arch_xyz'" in msg and "does not know" in msg and "neither" not in msg


def test_K04c_local_folder_without_its_tokenizer_json_is_refused(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "notok")
    (folder / "tokenizer.json").unlink()
    msg = _error(folder)
    assert "notok" in msg and "neither" not in msg
    assert "its tokenizer cannot be loaded" in msg or "tokenizer of" in msg


def test_L03_local_folder_without_weights_names_the_folder_not_the_hub(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "noweights")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "partial.safetensors").write_bytes(b"")
    msg = _error(folder)
    assert "its weights cannot be loaded" in msg and "partial.safetensors" in msg and "neither" not in msg


def test_C12_cli_model_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    out = subprocess.run([sys.executable, "-m", "taskvec.cli", "lens", "x", "--model", "notamodel"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "no config.json" in out.stderr and "readme.txt" in out.stderr and "neither" not in out.stderr
    assert "Traceback" not in out.stderr
