"""The architecture table's errors and processor classes, without building a model."""

from __future__ import annotations

import pytest

import taskvec
from taskvec.models.architectures import ARCHITECTURES
from taskvec.models.tiny import build_tiny


def test_unknown_architecture_lists_supported_ones(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(taskvec.TaskvecError) as err:
        taskvec.load(str(tmp_path))
    msg = str(err.value)
    assert "'gpt2' is not supported" in msg and "docs/adding-an-architecture.md" in msg
    assert all(name in msg for name in ARCHITECTURES)


def test_no_recipe_for_unknown_name(tmp_path):
    with pytest.raises(taskvec.TaskvecError, match="no tiny recipe for 'gpt2'.*llava"):
        build_tiny("gpt2", tmp_path)


def test_image_only_processor_without_torchvision():
    """Without torchvision transformers cannot build Qwen2-VL's video processor; taskvec's
    stand-in is the real processor class minus that one attribute."""
    from transformers import LlavaProcessor, Qwen2VLProcessor

    from taskvec.models.loading import processor_class_for

    image_only = processor_class_for("qwen2_vl", need_video=False)
    assert issubclass(image_only, Qwen2VLProcessor) and image_only is not Qwen2VLProcessor
    assert image_only.get_attributes() == ["image_processor", "tokenizer"]
    assert processor_class_for("qwen2_vl", need_video=True) is Qwen2VLProcessor
    assert processor_class_for("llava", need_video=False) is LlavaProcessor
    assert processor_class_for("llama") is None
