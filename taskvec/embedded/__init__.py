"""The embedded VLM, ``gemma-3-270m-vlm``: a real ``Gemma3ForConditionalGeneration`` on CPU.

Its language model is the embedded Gemma-3-270m (lightly LoRA-tuned); its SigLIP vision tower
and projector are trained in this project on OpenMoji renders, to caption images with their
names (never on the six tasks). Only those trained weights ship (``weights/``, a few MB); the
full model is assembled once in the user cache by ``taskvec.load("gemma-3-270m-vlm")``. This
package holds what loading needs (the model definition, the assembly, the merge of the shipped
LM delta, the weights); the training recipe is not installed: it lives in ``vlm_recipe/`` of a
source checkout (``python -m vlm_recipe`` retrains). See ``docs/embedded-vlm.md`` for the model card.

Example:
    >>> import taskvec
    >>> vlm = taskvec.load("gemma-3-270m-vlm")          # doctest: +SKIP
    >>> type(vlm.hf).__name__                            # doctest: +SKIP
    'Gemma3ForConditionalGeneration'
    >>> from taskvec.embedded import CAPTION_PROMPT       # ask it to name images
    >>> taskvec.zero_shot([(img, "wolf")], template=CAPTION_PROMPT)[0].text   # doctest: +SKIP
    'Image:<taskvec:image>Name:'
"""

from .assemble import assemble, build_model, read_manifest, weights_dir
from .spec import BASE_LLM, CAPTION_PROMPT, VLM_NAME, VLMSpec, vlm_config, vlm_processor, vlm_tokenizer

__all__ = [
    "assemble", "BASE_LLM", "build_model", "CAPTION_PROMPT", "read_manifest", "VLM_NAME", "VLMSpec",
    "vlm_config", "vlm_processor", "vlm_tokenizer", "weights_dir",
]
