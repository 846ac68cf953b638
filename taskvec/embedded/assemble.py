"""Assemble the embedded VLM: base Gemma-3-270m + shipped vision tower, projector and LM delta.

The repository ships only what is not the base LLM (``taskvec/embedded/weights/``, a few MB in
fp16). :func:`assemble` writes a standard ``save_pretrained`` folder (model, tokenizer,
processor) into the user cache; ``taskvec.load("gemma-3-270m-vlm")`` then loads that folder
through the same code path as any hub VLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import cache
from ..errors import TaskvecError
from .lora import merge_lora
from .spec import VLMSpec, vlm_config, vlm_processor, vlm_tokenizer

#: Files of the shipped weights folder.
VISION_FILE = "vision.safetensors"
DELTA_FILE = "lm_delta.safetensors"
MANIFEST_FILE = "manifest.json"


def weights_dir() -> Path:
    """Folder of the shipped VLM weights (inside the installed ``taskvec`` package).

    Raises a :class:`~taskvec.TaskvecError` naming the training script when they are missing.

    Example:
        >>> weights_dir().name        # doctest: +SKIP
        'weights'
    """
    folder = Path(__file__).resolve().parent / "weights"
    missing = [f for f in (VISION_FILE, DELTA_FILE, MANIFEST_FILE) if not (folder / f).exists()]
    if missing:
        raise TaskvecError(
            f"the embedded VLM's trained weights are missing from {folder} ({', '.join(missing)}): "
            "reinstall taskvec, or train them in a source checkout with `python -m vlm_recipe` (about 30 min on 2 CPU cores)"
        )
    return folder


def read_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """The shipped ``manifest.json``: the :class:`VLMSpec`, the training concepts and the run's facts.

    Example:
        >>> read_manifest()["spec"]["tokens_per_image"]     # doctest: +SKIP
        16
    """
    folder = Path(folder) if folder is not None else weights_dir()
    return json.loads((folder / MANIFEST_FILE).read_text())


def build_model(
    base_dir: str | Path,
    spec: VLMSpec,
    *,
    vision_state: dict[str, torch.Tensor] | None = None,
    lora_state: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A ``Gemma3ForConditionalGeneration`` whose language model is the base LLM's weights.

    Args:
        base_dir: converted base LLM folder (``taskvec.models.loading.converted_dir("gemma-3-270m")``).
        spec: the sizes.
        vision_state: ``model.vision_tower.*`` / ``model.multi_modal_projector.*`` weights; ``None``
            keeps a fresh initialisation (what training starts from).
        lora_state: a low-rank LM delta to merge (see :func:`taskvec.embedded.lora.merge_lora`).
        dtype: weight dtype of the result.

    Returns:
        the model, in eval mode.

    Example:
        >>> m = build_model(converted_dir("gemma-3-270m"), VLMSpec())   # doctest: +SKIP
        >>> type(m).__name__                                            # doctest: +SKIP
        'Gemma3ForConditionalGeneration'
    """
    from transformers import AutoConfig, Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    text_config = AutoConfig.from_pretrained(str(base_dir))
    if getattr(text_config, "model_type", None) != "gemma3_text":
        raise TaskvecError(f"{base_dir} holds a {text_config.model_type!r} model; the embedded VLM needs Gemma-3 text weights")
    config = vlm_config(text_config, spec)
    model = Gemma3ForConditionalGeneration(config)
    base = Gemma3ForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model.model.language_model.load_state_dict(base.model.state_dict())
    del base
    model.tie_weights()
    if vision_state is not None:
        own = model.state_dict()
        unknown = [k for k in vision_state if k not in own]
        if unknown:
            raise TaskvecError(f"the shipped vision weights have keys the model lacks ({unknown[:3]}...): retrain the VLM")
        missing = [k for k in own if k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) and k not in vision_state]
        if missing:
            raise TaskvecError(f"the shipped vision weights lack {missing[:3]}...: retrain the VLM")
        model.load_state_dict({k: v.to(torch.float32) for k, v in vision_state.items()}, strict=False)
    if lora_state:
        merge_lora(model.model.language_model.layers, lora_state, spec.lora_scale)
    return model.to(dtype).eval()


def assemble(base_dir: str | Path, shipped: str | Path, out_dir: str | Path) -> Path:
    """Write the embedded VLM as a ``save_pretrained`` folder (model + tokenizer + processor).

    Args:
        base_dir: converted base LLM folder.
        shipped: folder with ``vision.safetensors``, ``lm_delta.safetensors`` and ``manifest.json``.
        out_dir: where to write (created; written atomically through a temporary sibling, with a
            manifest of the files written: see :func:`taskvec.cache.building`).

    Returns:
        ``out_dir``.

    Example:
        >>> assemble(converted_dir("gemma-3-270m"), weights_dir(), "/tmp/vlm")   # doctest: +SKIP
        PosixPath('/tmp/vlm')
    """
    from safetensors.torch import load_file

    shipped, out_dir = Path(shipped), Path(out_dir)
    manifest = read_manifest(shipped)
    spec = VLMSpec.from_json(manifest["spec"])
    model = build_model(
        base_dir, spec, vision_state=load_file(str(shipped / VISION_FILE)), lora_state=load_file(str(shipped / DELTA_FILE))
    )
    processor = vlm_processor(vlm_tokenizer(base_dir), spec)
    with cache.building(out_dir, "the assembled embedded VLM") as tmp:
        need = sum(p.numel() * p.element_size() for p in model.parameters()) + 64 * 2**20
        cache.require_space(tmp, need, "the assembled embedded VLM")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "taskvec_manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return out_dir
