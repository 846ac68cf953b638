"""Class codes: one learned vector per concept in the vision encoder's output space.

The language model learns to *read* an image token slowly when the token comes from an encoder
that is still learning (docs/embedded-vlm.md, "Where the gap is"). The ``read`` stage of the
training therefore splits the problem in two:

1. **read**: a free code ``u_c`` per concept (``[n_classes, vision_hidden]``, random start, never
   a word embedding) stands in for the encoder's output; it goes through the real Gemma-3
   projector into the LM, and codes, projector and the LoRA update learn to caption together
   (:func:`codes_as_image_features`). Codes are free to spread out, so the LM learns to name
   them in a few dozen steps; read with noise (:func:`noisy_codes`), it learns to name
   everything near a code, as the encoder's features of a concept's renders will be.
2. **vision**: the encoder learns to put each render of a concept on its code
   (:class:`CodeHead`: a cosine classifier whose class weights are the frozen codes, plus a pull
   towards the own code). The projector normalises its input (RMSNorm), so only the direction
   of the pooled feature matters, and that is what the cosine fixes.

The image path stays learned from pixels end to end: the encoder never sees a word embedding
and the codes start random; the end-to-end caption stages that follow tune all of it together.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F


@contextmanager
def codes_as_image_features(model: Any, codes: torch.Tensor, classes: torch.Tensor) -> Iterator[None]:
    """Within the block, the vision tower's output for image ``i`` is ``codes[classes[i]]`` on every patch.

    The projector then pools (a no-op on identical patches), normalises and projects it as it
    would a real encoder output, so gradients reach ``codes``, the projector and the LM.

    Args:
        model: a ``Gemma3ForConditionalGeneration``.
        codes: ``[n_classes, vision_hidden]``.
        classes: ``[n_images]`` class index of each image in the batch, in the order of the
            batch's ``pixel_values``.

    Example:
        >>> with codes_as_image_features(vlm, codes, torch.tensor([3, 7])):    # doctest: +SKIP
        ...     loss = caption_loss(vlm, batch)
    """

    def replace(module: Any, args: Any, out: Any) -> Any:
        hidden = out.last_hidden_state
        if hidden.shape[0] != len(classes):
            raise ValueError(f"{hidden.shape[0]} images in the batch but {len(classes)} class indices")
        out.last_hidden_state = codes[classes].unsqueeze(1).expand(-1, hidden.shape[1], -1).to(hidden.dtype)
        return out

    handle = model.model.vision_tower.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def noisy_codes(codes: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Each row of ``codes`` plus Gaussian noise whose norm is ``ratio`` times the row's norm.

    The read stage feeds these to the LM so that it learns to name the neighbourhood of each code
    (the encoder's features of a concept's renders spread around its code), not the code alone.
    The noise is drawn from ``gen`` (reproducible) and carries no gradient; the codes do.

    Args:
        codes: ``[n, hidden]``.
        ratio: noise norm / code norm (0: the codes themselves; the cosine to the code is about
            ``1 / sqrt(1 + ratio**2)``).
        gen: the generator of the step.

    Returns:
        ``[n, hidden]``.

    Example:
        >>> c = torch.randn(4, 256)
        >>> n = noisy_codes(c, 0.75, torch.Generator().manual_seed(0))
        >>> round(float(torch.nn.functional.cosine_similarity(n, c).mean()), 1)
        0.8
    """
    if ratio == 0:
        return codes
    noise = torch.randn(codes.shape, generator=gen)
    noise = noise / noise.norm(dim=-1, keepdim=True) * codes.detach().norm(dim=-1, keepdim=True) * ratio
    return codes + noise.to(codes.dtype)


class CodeHead(torch.nn.Module):
    """Stage-1 classifier against frozen class codes: scaled cosines, plus a pull to the own code.

    Args:
        codes: ``[n_classes, hidden]`` (frozen: a buffer).
        pull: weight of the mean ``1 - cos(feature, own code)`` term of :meth:`loss`.

    Example:
        >>> head = CodeHead(torch.randn(5, 16))
        >>> head(torch.randn(2, 16)).shape
        torch.Size([2, 5])
        >>> head.loss(torch.randn(2, 16), torch.tensor([0, 4])).item() > 0
        True
    """

    def __init__(self, codes: torch.Tensor, pull: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("codes", F.normalize(codes.detach().float(), dim=-1), persistent=False)
        self.log_scale = torch.nn.Parameter(torch.tensor(3.0))
        self.pull = pull

    def cosines(self, feats: torch.Tensor) -> torch.Tensor:
        """``[b, hidden]`` pooled encoder output -> ``[b, n_classes]`` cosines to the codes."""
        return F.normalize(feats.float(), dim=-1) @ self.codes.T

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``[b, hidden]`` -> ``[b, n_classes]`` logits (scaled cosines)."""
        return self.log_scale.exp() * self.cosines(feats)

    def loss(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the codes + ``pull`` x mean(1 - cosine to the own code)."""
        cos = self.cosines(feats)
        own = cos[torch.arange(len(classes)), classes]
        return F.cross_entropy(self.log_scale.exp() * cos, classes) + self.pull * (1 - own).mean()


def fit_projector_to_codes(model: Any, feats: torch.Tensor, classes: torch.Tensor, codes: torch.Tensor,
                           ridge: float = 1e-3) -> float:
    """Fold the least-squares linear map that sends each normalised feature to its normalised code
    into the projector's weight, in place; returns the mean cosine of the fit.

    Gemma-3's projector is ``RMSNorm(x) @ W``, so a linear map ``A`` on the normalised input
    is exactly ``W <- A @ W``: the structure of the model does not change. The encoder's
    features only partly align with their codes (stage 1 is a classifier, and the augmentations
    spread each concept's renders); the fit turns the rest of that alignment that is linear into
    the projector, in closed form, before the caption stages tune it further.

    Args:
        model: a ``Gemma3ForConditionalGeneration``.
        feats: ``[n, vision_hidden]`` pooled encoder outputs of training renders.
        classes: ``[n]`` their concepts.
        codes: ``[n_classes, vision_hidden]``.
        ridge: ridge penalty, relative to ``n``.

    Example:
        >>> fit_projector_to_codes(vlm, feats, classes, codes)    # doctest: +SKIP
        0.71
    """
    proj = model.model.multi_modal_projector
    norm = proj.mm_soft_emb_norm
    with torch.no_grad():
        x = norm(feats.float())
        y = norm(codes.float()[classes])
        a = torch.linalg.solve(x.T @ x + ridge * len(x) * torch.eye(x.shape[1]), x.T @ y)
        proj.mm_input_projection_weight.copy_(a.to(proj.mm_input_projection_weight.dtype) @ proj.mm_input_projection_weight)
        return float(F.cosine_similarity(x @ a, y).mean())
