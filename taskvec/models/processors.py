"""Which processor class a model type takes, and loading it (image-only where the model has no video path)."""

from __future__ import annotations

from typing import Any


def _image_only(processor_class: type) -> type:
    """``processor_class`` without its video processor, for image-only use without torchvision.

    transformers builds every video processor with torchvision and requires one for Qwen2-VL,
    Qwen2.5-VL and SmolVLM processors even when only images are passed; taskvec never passes
    videos, so the subclass drops that one attribute and is otherwise the real processor.
    """
    attributes = [a for a in processor_class.get_attributes() if a != "video_processor"]
    return type(processor_class.__name__, (processor_class,), {
        "get_attributes": classmethod(lambda cls: list(attributes)),
        "taskvec_image_only": True,
        "__doc__": f"{processor_class.__name__} without its video processor (torchvision is not installed).",
    })


def processor_class_for(model_type: str, *, need_video: bool | None = None) -> type | None:
    """The transformers processor class of a ``config.model_type`` (``None`` if it has none).

    Without torchvision, a class that wants a video processor comes back as its image-only
    subclass (see :func:`_image_only`); ``need_video`` overrides the torchvision check.

    Example:
        >>> processor_class_for("llava").__name__
        'LlavaProcessor'
    """
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import is_torchvision_available

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if not name:
        return None
    cls = getattr(transformers, name)
    if need_video is None:
        need_video = is_torchvision_available()
    if not need_video and "video_processor" in cls.get_attributes():
        return _image_only(cls)
    return cls


def _load_processor(source: str, model_type: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``, or the image-only processor when torchvision is missing."""
    from transformers import AutoProcessor

    cls = processor_class_for(model_type)
    if getattr(cls, "taskvec_image_only", False):
        return cls.from_pretrained(source, video_processor=None, **kwargs)
    return AutoProcessor.from_pretrained(source, **kwargs)
