"""Fixtures of the tiny tier: one thread per test module, and a tiny random Llama (a real
transformers class with its real tokenizer, built offline) loaded through ``taskvec.load``."""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.models.tiny import build_tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread
    pool's waiting made the tier several times slower; restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The folder of a tiny random Llama (seed 0), one per test module: load it again in another
    dtype or with a ``device_map`` to compare with ``tiny``."""
    torch.manual_seed(0)
    return build_tiny("llama", tmp_path_factory.mktemp("llama"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> taskvec.Model:
    """A tiny random Llama loaded in float32, one per test module (a module that needs another
    ``tiny`` defines its own)."""
    return taskvec.load(str(tiny_dir))
