"""What the embedded VLM is: a Gemma-3 vision-language model whose text model is Gemma-3-270m.

The model is a plain ``transformers.Gemma3ForConditionalGeneration`` with a
``Gemma3Processor``: a small SigLIP encoder (trained here on OpenMoji renders) turns a 32x32
image into a 4x4 grid of patches, the Gemma-3 projector average-pools the grid into one vector
and maps it into the language model's embedding space: one soft token per image. Every size lives in
:class:`VLMSpec`, which the training run writes into the shipped ``manifest.json`` so that the
folder assembled at load time always matches the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..inputs.prompts import Template

#: ``taskvec.load`` name of the embedded VLM.
VLM_NAME = "gemma-3-270m-vlm"
#: The embedded LLM the VLM's language model starts from.
BASE_LLM = "gemma-3-270m"

#: Gemma-3's image tokens. The 270m text tokenizer already has ``<start_of_image>`` (255999) and
#: ``<end_of_image>`` (256000); ``<image_soft_token>`` is added as id 262144, one past the
#: embedding matrix, exactly as in the released Gemma-3 VLMs: ``Gemma3Model`` masks ids at or
#: above ``vocab_size`` before the embedding lookup and scatters image features there instead.
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}

#: The captioning prompt the VLM was trained on, as a :class:`taskvec.Template` (the first caption
#: format of the training recipe): ``taskvec.zero_shot(pairs, template=CAPTION_PROMPT)`` asks the
#: embedded VLM to name each image.
CAPTION_PROMPT = Template(name="caption", demo="Image:{x}Name:{y}\n\n", query="Image:{x}Name:", marker="Name:")


@dataclass(frozen=True)
class VLMSpec:
    """Sizes of the vision tower, projector and language-model delta.

    Attributes:
        image_size: side of the (square) image the processor resizes to, in pixels.
        patch_size: side of one ViT patch (``image_size / patch_size`` patches per side).
        tokens_per_image: image embeddings per image in the prompt (a square: 1, 4 = 2x2, ...).
        vision_hidden, vision_layers, vision_heads, vision_mlp: the SigLIP encoder.
        lora_rank, lora_alpha: rank and scale of the low-rank update of the language model.
        lora_targets: linear layers of each decoder layer that get the update.

    Example:
        >>> VLMSpec().tokens_per_image
        1
    """

    image_size: int = 32
    patch_size: int = 8
    tokens_per_image: int = 1
    vision_hidden: int = 256
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 1024
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = field(default=("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"))

    def __post_init__(self) -> None:
        from ..errors import TaskvecError

        side = int(round(self.tokens_per_image**0.5))
        patches = self.image_size // self.patch_size
        if side * side != self.tokens_per_image:
            raise TaskvecError(f"tokens_per_image={self.tokens_per_image} must be a square (Gemma-3 pools a square grid): use 9, 16, 25...")
        if self.image_size % self.patch_size or patches % side:
            raise TaskvecError(
                f"{patches}x{patches} patches cannot be average-pooled to {side}x{side}: pick image_size, "
                "patch_size and tokens_per_image so that (image_size / patch_size) is a multiple of sqrt(tokens_per_image)"
            )

    @property
    def lora_scale(self) -> float:
        """Multiplier of ``B @ A`` in the merged update ``W + scale * B @ A``."""
        return self.lora_alpha / self.lora_rank

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "VLMSpec":
        d = dict(d)
        d["lora_targets"] = tuple(d.get("lora_targets", cls.lora_targets))
        return cls(**d)


def vlm_config(text_config: Any, spec: VLMSpec) -> Any:
    """The ``Gemma3Config`` of the embedded VLM around a Gemma-3 text config.

    Args:
        text_config: the base LLM's ``Gemma3TextConfig``.
        spec: the sizes.

    Returns:
        a ``transformers.Gemma3Config``.

    Example:
        >>> from transformers import Gemma3TextConfig
        >>> vlm_config(Gemma3TextConfig(), VLMSpec()).mm_tokens_per_image
        1
    """
    from transformers import Gemma3Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_mlp,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
        layer_norm_eps=1e-6,
    )
    text = text_config.to_dict()
    for key in ("architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        text.pop(key, None)
    return Gemma3Config(
        text_config=text,
        vision_config=vision.to_dict(),
        mm_tokens_per_image=spec.tokens_per_image,
        boi_token_index=255999,
        eoi_token_index=256000,
        image_token_index=262144,
        tie_word_embeddings=True,
    )


def vlm_tokenizer(base_dir: Any) -> Any:
    """The base LLM's tokenizer with Gemma-3's three image tokens registered.

    Example:
        >>> from taskvec.models.loading import converted_dir      # doctest: +SKIP
        >>> vlm_tokenizer(converted_dir("gemma-3-270m")).image_token_id   # doctest: +SKIP
        262144
    """
    from transformers import AutoTokenizer

    from ..errors import TaskvecError

    tok = AutoTokenizer.from_pretrained(str(base_dir), extra_special_tokens=dict(IMAGE_TOKENS))
    if tok.boi_token_id != 255999 or tok.eoi_token_id != 256000 or tok.image_token_id != 262144:
        raise TaskvecError(
            f"the base tokenizer in {base_dir} does not have Gemma-3's image tokens at the expected ids "
            f"(got {tok.boi_token_id}, {tok.eoi_token_id}, {tok.image_token_id}): delete that folder so it is converted again"
        )
    return tok


def vlm_processor(tokenizer: Any, spec: VLMSpec) -> Any:
    """A ``Gemma3Processor`` that resizes images to ``spec.image_size`` and expands each into
    ``spec.tokens_per_image`` image tokens.

    Example:
        >>> p = vlm_processor(tok, VLMSpec())                           # doctest: +SKIP
        >>> p(text=["Q:<start_of_image>\\nA:"], images=[[img]])["pixel_values"].shape   # doctest: +SKIP
        torch.Size([1, 3, 32, 32])
    """
    import transformers
    from transformers import Gemma3Processor

    # the Pillow backend needs no torchvision (not a taskvec dependency); both backends resize bilinearly
    image_class = getattr(transformers, "Gemma3ImageProcessorPil", None) or transformers.Gemma3ImageProcessor
    images = image_class(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    return Gemma3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_length=spec.tokens_per_image,
        chat_template=getattr(tokenizer, "chat_template", None),
    )
