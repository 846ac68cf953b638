"""One table row per architecture: where the text decoder's pieces live and how images enter.

Every method in taskvec (lens, task vectors, MTV/STV/MimIC) reaches model internals only through
an :class:`Architecture` row, so adding a model family is adding one row here (see
``docs/adding-an-architecture.md``). Paths are dotted attribute paths from the top-level
transformers model (e.g. ``Gemma3ForConditionalGeneration``); they resolve the same way on the
plain module and on the nnsight envoy that wraps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable

from ..errors import TaskvecError


@dataclass(frozen=True)
class Architecture:
    """Where one model family keeps its text decoder, and how images are written into prompts.

    Attributes:
        layers: path to the ``ModuleList`` of text decoder layers.
        norm: path to the final norm applied before the unembedding.
        lm_head: path to the unembedding (``Linear(d_model, vocab)``).
        attention: path, relative to one decoder layer, of the self-attention module.
        out_proj: path, relative to one decoder layer, of the attention output projection
            (its *input* is the per-head output ``[batch, seq, n_heads * d_head]``).
        q_proj, k_proj: paths relative to one decoder layer of the query / key projections
            (MimIC needs the query and the keys).
        mlp: path, relative to one decoder layer, of the feed-forward block (MimIC aligns its
            output, as the reference code does).
        q_norm, k_norm: paths of the per-head query / key norms applied before the rotary
            embedding (Gemma-3, Qwen3), ``None`` when the architecture has none.
        image_token: the text a prompt uses for one image, which the processor expands into the
            image's embeddings (``None`` for text-only models). ``"processor:NAME"`` reads
            ``processor.NAME`` (e.g. Gemma3's ``boi_token``).
        images_per_prompt_nested: the processor wants images as one list per prompt
            (``[[img, img], [img]]``) rather than one flat list.
        max_images_per_prompt: how many images the processor accepts in one prompt (``None``:
            any number). Fuyu's processor takes one and always puts it before the text.
        fix_processor: applied to the processor right after loading, to work around a known
            transformers bug (``None``: nothing to fix).
        processor_defaults: keyword arguments the processor is loaded with unless the user's
            ``processor_kwargs`` say otherwise: what the papers' code sets (Idefics2 / Idefics3:
            ``do_image_splitting=False``, one crop per image, as in both the cross-modal paper's and
            MTV's code; the hub processor would split each image into 5 crops).
        is_vlm: the model takes images.
        cached_sweep: a prompt's last token can be run alone on the cached keys and values of
            the rest (the fast layer sweep, :func:`taskvec.methods.patching.prefix_cache`). Not on
            Qwen2-VL: its multimodal rotary positions are computed from the whole sequence and kept
            on the model between calls (``rope_deltas``), so a last token run alone would get the
            positions of an earlier batch; there the sweep runs full forwards.

    Example:
        >>> ARCHITECTURES["llama"].layers
        'model.layers'
    """

    layers: str
    norm: str
    lm_head: str = "lm_head"
    attention: str = "self_attn"
    out_proj: str = "self_attn.o_proj"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    mlp: str = "mlp"
    q_norm: str | None = None
    k_norm: str | None = None
    image_token: str | None = None
    images_per_prompt_nested: bool = True
    max_images_per_prompt: int | None = None
    fix_processor: Callable[[Any], Any] | None = None
    processor_defaults: tuple[tuple[str, Any], ...] = ()
    is_vlm: bool = False
    cached_sweep: bool = True


def _fuyu_patchify_tensors(processor: Any) -> Any:
    """transformers 5.23: without torchvision, ``FuyuProcessor`` hands torch tensors to the PIL image
    processor's ``patchify_image``, which only handles numpy arrays (``TypeError: transpose()``).
    Route tensors through numpy on this one processor instance; nothing changes with torchvision."""
    import numpy as np
    import torch

    images = processor.image_processor
    numpy_only = images.patchify_image
    if not type(images).__name__.endswith("Pil"):
        return processor

    def patchify_image(image: Any, patch_size: Any = None) -> Any:
        if isinstance(image, torch.Tensor):
            return torch.from_numpy(np.ascontiguousarray(numpy_only(image.numpy(), patch_size=patch_size)))
        return numpy_only(image, patch_size=patch_size)

    images.patchify_image = patchify_image
    return processor


_TEXT = Architecture(layers="model.layers", norm="model.norm")
_QK_NORM = dict(q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
_TEXT_QK_NORM = Architecture(layers="model.layers", norm="model.norm", **_QK_NORM)
_VLM_LANGUAGE_MODEL = dict(
    layers="model.language_model.layers", norm="model.language_model.norm", is_vlm=True
)
#: one crop per image: the papers' Idefics2 setting (the hub processor splits each image into 5)
_ONE_CROP = (("do_image_splitting", False),)
_VLM_TEXT_MODEL = dict(layers="model.text_model.layers", norm="model.text_model.norm", is_vlm=True)

#: ``config.model_type`` -> where things are. One row per architecture; nothing else branches on it.
ARCHITECTURES: dict[str, Architecture] = {
    # text-only decoders
    "llama": _TEXT,
    "mistral": _TEXT,
    "qwen2": _TEXT,
    "qwen3": _TEXT_QK_NORM,
    "gemma": _TEXT,
    "gemma2": _TEXT,
    "gemma3_text": _TEXT_QK_NORM,
    # vision-language models
    "llava": Architecture(**_VLM_LANGUAGE_MODEL, image_token="processor:image_token", images_per_prompt_nested=False),
    "llava_next": Architecture(**_VLM_LANGUAGE_MODEL, image_token="processor:image_token", images_per_prompt_nested=False),
    "idefics2": Architecture(**_VLM_TEXT_MODEL, image_token="processor:image_token", processor_defaults=_ONE_CROP),
    "idefics3": Architecture(**_VLM_TEXT_MODEL, image_token="processor:image_token", processor_defaults=_ONE_CROP),
    "smolvlm": Architecture(**_VLM_TEXT_MODEL, image_token="processor:image_token"),
    "qwen2_vl": Architecture(
        **_VLM_LANGUAGE_MODEL, image_token="<|vision_start|><|image_pad|><|vision_end|>", images_per_prompt_nested=False,
        cached_sweep=False,
    ),
    "qwen2_5_vl": Architecture(
        **_VLM_LANGUAGE_MODEL, image_token="<|vision_start|><|image_pad|><|vision_end|>", images_per_prompt_nested=False,
        cached_sweep=False,
    ),
    "gemma3": Architecture(**_VLM_LANGUAGE_MODEL, **_QK_NORM, image_token="processor:boi_token"),
    "fuyu": Architecture(
        layers="model.language_model.layers",
        norm="model.language_model.final_layernorm",
        out_proj="self_attn.dense",
        q_proj="self_attn.query_key_value",
        k_proj="self_attn.query_key_value",
        # FuyuProcessor prepends the image (patch tokens + newlines) to its prompt's text itself,
        # so the placeholder becomes nothing; it handles one image per prompt.
        image_token="",
        images_per_prompt_nested=True,
        max_images_per_prompt=1,
        fix_processor=_fuyu_patchify_tensors,
        is_vlm=True,
    ),
}


def architecture_for(config: Any) -> Architecture:
    """The table row for a transformers config, or a clear error listing the supported ones.

    Example:
        >>> from transformers import LlamaConfig
        >>> architecture_for(LlamaConfig()).norm
        'model.norm'
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise TaskvecError(
            f"architecture {model_type!r} is not supported yet. Supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Add one row to taskvec/models/architectures.py:ARCHITECTURES (see docs/adding-an-architecture.md)."
        )
    return ARCHITECTURES[model_type]


def resolve(root: Any, path: str) -> Any:
    """Follow a dotted attribute path (``"model.layers"``) from a module or an nnsight envoy.

    Example:
        >>> import torch
        >>> resolve(torch.nn.Sequential(torch.nn.Linear(2, 2)), "0.weight").shape
        torch.Size([2, 2])
    """
    try:
        return reduce(lambda obj, name: obj[int(name)] if name.isdigit() else getattr(obj, name), path.split("."), root)
    except (AttributeError, IndexError) as err:
        raise TaskvecError(
            f"the model has no module at {path!r} ({err}); the architecture table row is wrong for this "
            "transformers version: fix taskvec/models/architectures.py"
        ) from err
