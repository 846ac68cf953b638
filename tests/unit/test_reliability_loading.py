"""Reliability audit, loading and the model cache (issue 24: L01-L09, K01-K06): no model is built here.

The cases on the real embedded model's cache are in tests/embedded/test_reliability_cache.py, the
ones that need a tiny model in tests/tiny/test_reliability_loading.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import taskvec
from taskvec import cache
from taskvec.models import loading

ROOT = Path(__file__).resolve().parents[2]
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub endpoint is a closed local port: what an offline machine looks like, but the same
    wherever the test runs (huggingface_hub retries such a connection for ~23 s)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXIES):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loading, "_probe_cache", {})


def _load_error(name: str, **kwargs) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(taskvec.TaskvecError) as err:
        taskvec.load(name, **kwargs)
    return str(err.value), time.monotonic() - t0


def test_L01_offline_unknown_name_fails_in_seconds_with_the_documented_message(unreachable_hub):
    msg, took = _load_error("gemma-9000")
    assert took < 8, f"took {took:.1f} s (huggingface_hub's retries take ~23 s)"
    assert "'gemma-9000'" in msg and "offline" in msg
    assert "gemma-3-270m, smollm2-135m, gemma-3-270m-vlm" in msg and "did you mean 'gemma-3-270m'" in msg.lower()


def test_L01_hub_offline_variable_needs_no_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_probe_cache", {})
    t0 = time.monotonic()
    assert loading.hub_reachable() is False
    assert time.monotonic() - t0 < 0.5


def test_L02_offline_hub_id_fails_in_seconds(unreachable_hub):
    msg, took = _load_error("HuggingFaceM4/idefics2-8b")
    assert took < 8, f"took {took:.1f} s"
    assert "'HuggingFaceM4/idefics2-8b'" in msg and "offline" in msg and "local hub cache" in msg


def test_L03_folder_that_is_not_a_model_says_what_is_missing(tmp_path, monkeypatch):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    monkeypatch.setattr(loading, "hub_reachable", lambda *a, **k: pytest.fail("a local folder must not probe the hub"))
    msg, _ = _load_error(str(folder))
    assert "local directory" in msg and "no config.json" in msg and "readme.txt" in msg
    assert "neither" not in msg
    monkeypatch.chdir(tmp_path)  # the audit's spelling: a bare relative name that is a folder
    msg, _ = _load_error("notamodel")
    assert "no config.json" in msg and "neither" not in msg


def test_L07_unknown_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch_xyz"}))
    msg, _ = _load_error(str(tmp_path))
    assert "'no_such_arch_xyz'" in msg and "does not know" in msg and "neither" not in msg
    (tmp_path / "config.json").write_text('{"model_type": "llam')
    msg, _ = _load_error(str(tmp_path))
    assert "config.json is not valid JSON" in msg
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "lama"}))
    assert "llama" in _load_error(str(tmp_path))[0]  # a close known model type is suggested


def test_L09_wrong_case_embedded_name_says_did_you_mean_at_once(monkeypatch):
    monkeypatch.setattr(loading, "hub_reachable", lambda *a, **k: pytest.fail("a wrong-case embedded name must not probe the hub"))
    msg, took = _load_error("Gemma-3-270M")
    assert took < 2 and "did you mean 'gemma-3-270m'" in msg
    assert "'gemma-3-270m-vlm'" in _load_error("GEMMA-3-270M-VLM")[0]


def test_K01_cache_that_is_a_file_names_TASKVEC_CACHE(tmp_path, monkeypatch):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TASKVEC_CACHE", str(blocker))
    with pytest.raises(taskvec.TaskvecError, match="TASKVEC_CACHE") as err:
        cache.cache_dir("models")
    assert "is a file, not a folder" in str(err.value) and str(blocker) in str(err.value)


def test_K01_read_only_cache_names_TASKVEC_CACHE(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "ro"))
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(taskvec.TaskvecError) as err:
        cache.cache_dir("models")
    msg = str(err.value)
    assert "TASKVEC_CACHE=" in msg and "Read-only file system" in msg and "writable folder" in msg


def test_K01_default_cache_error_says_how_to_move_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TASKVEC_CACHE", raising=False)
    (tmp_path / "xdg").write_text("a file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(taskvec.TaskvecError, match="TASKVEC_CACHE is not set.*Set TASKVEC_CACHE"):
        cache.cache_dir("models")


def _tmp_folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp" in p.name)


def test_K03_full_disk_during_the_write_says_size_and_override_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path))
    models = cache.cache_dir("models")
    with pytest.raises(taskvec.TaskvecError) as err:
        with cache.building(models / "gemma-3-270m-v1", "the converted gemma-3-270m") as tmp:
            cache.require_space(tmp, 10, "the converted gemma-3-270m")  # enough by the count ...
            cache._NEED[tmp] = 1_150_000_000
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            # ... but the disk fills while writing (safetensors reports it inside its own error)
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                               '"No space left on device" })')
    msg = str(err.value)
    assert "not enough disk space" in msg and "1.15 GB" in msg and "TASKVEC_CACHE" in msg and str(tmp_path) in msg
    assert _tmp_folders(models) == [] and not (models / "gemma-3-270m-v1").exists()


def test_K03_too_little_space_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path))
    models = cache.cache_dir("models")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 40 * 2**20})())
    with pytest.raises(taskvec.TaskvecError, match=r"needs about 1\.26 GB and 0\.04 GB are free.*TASKVEC_CACHE"):
        with cache.building(models / "m-v1", "the converted m") as tmp:
            cache.require_space(tmp, 1200 * 2**20, "the converted m")
            pytest.fail("nothing may be written after the space check fails")
    assert _tmp_folders(models) == []


def test_K04_manifest_catches_truncation_deletion_additions_and_changed_bytes(tmp_path):
    target = tmp_path / "m-v1"
    with cache.building(target, "m") as tmp:
        (tmp / "config.json").write_text('{"model_type": "llama"}')
        (tmp / "model.safetensors").write_bytes(os.urandom(200_000))
        (tmp / "tokenizer.json").write_text('{"x": 1}')
    assert cache.check_folder(target) == [] and (target / cache.MANIFEST).exists()
    with open(target / "model.safetensors", "r+b") as f:  # scribble 4 KiB in place: same size
        f.seek(100_000)
        f.write(b"\0" * 4096)
    assert cache.check_folder(target) == ["model.safetensors was modified after it was written (its sha256 differs)"]
    (target / "config.json").write_text('{"model_')
    (target / "tokenizer.json").unlink()
    (target / "partial.safetensors").write_bytes(b"")
    (target / f"{cache.MANIFEST}.tmp12345").write_text("{")  # a manifest update cut short: not damage
    problems = cache.check_folder(target)
    assert "tokenizer.json is missing" in problems and "partial.safetensors was not written by taskvec" in problems
    assert any(p.startswith("config.json has 8 bytes where 23 were written") for p in problems)
    assert len(problems) == 3


def test_K04_a_copy_with_new_times_but_the_same_bytes_is_accepted_once_and_remembered(tmp_path):
    target = tmp_path / "m-v1"
    with cache.building(target, "m") as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
    os.utime(target / "model.safetensors", ns=(1, 1))
    assert cache.check_folder(target) == []
    assert cache.read_manifest(target)["files"]["model.safetensors"]["mtime_ns"] == 1


def test_K06_stale_temporary_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path))
    models = cache.cache_dir("models")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    legacy = models / f"gemma-3-270m-v1.tmp{dead_pid}"  # what a killed conversion of the old code left
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes(b"\0" * 1000)
    alive = models / f"gemma-3-270m-v1.tmp{os.getppid()}"  # a conversion still running: kept
    alive.mkdir()
    elsewhere = models / f"other-v1.tmp{dead_pid}"  # another machine's build, recent: kept
    elsewhere.mkdir()
    (elsewhere / cache.OWNER).write_text(json.dumps({"host": "another-machine", "pid": dead_pid}))
    old = models / "older-v1.tmp1"  # another machine's, untouched for two days: removed
    old.mkdir()
    (old / cache.OWNER).write_text(json.dumps({"host": "another-machine", "pid": 1}))
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    with cache.building(models / "gemma-3-270m-v1", "m") as tmp:
        (tmp / "config.json").write_text("{}")
    assert _tmp_folders(models) == sorted([alive.name, elsewhere.name])


SIGTERM_CHILD = """
import sys, time, types
pkg = types.ModuleType("taskvec"); pkg.__path__ = [sys.argv[1]]; sys.modules["taskvec"] = pkg  # no heavy imports
from taskvec import cache
from pathlib import Path
with cache.building(Path(sys.argv[2]) / "gemma-3-270m-v1", "m") as tmp:
    (tmp / "model.safetensors").write_bytes(b"\\0" * 1_000_000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_K06_sigterm_during_a_build_leaves_no_temporary_folder(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(ROOT / "taskvec"), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        assert _tmp_folders(tmp_path)  # the build is under way
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM  # it still ends as a SIGTERM does
    finally:
        if child.poll() is None:
            child.kill()
    assert _tmp_folders(tmp_path) == [] and not (tmp_path / "gemma-3-270m-v1").exists()


def test_K06_an_error_or_ctrl_c_inside_a_build_leaves_no_temporary_folder(tmp_path):
    for exc in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(exc):
            with cache.building(tmp_path / "m-v1", "m") as tmp:
                (tmp / "model.safetensors").write_bytes(b"\0" * 1000)
                raise exc()
        assert _tmp_folders(tmp_path) == [] and not (tmp_path / "m-v1").exists()


def test_K04c_tokenizer_check_refuses_a_tokenizer_of_a_handful_of_tokens():
    class FiveTokens:  # what transformers builds from tokenizer_config.json alone
        unk_token_id = 3

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3]}

        def decode(self, ids):
            return "<unk>"

        def __len__(self):
            return 5

    why = loading.tokenizer_problem(FiveTokens())
    assert why is not None and "[3]" in why and "5 tokens" in why
