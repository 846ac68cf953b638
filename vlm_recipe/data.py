"""Training data of the embedded VLM: augmented OpenMoji renders and caption prompts.

Every image is drawn by :func:`taskvec.inputs.render.render_emoji` with random size, scale, shift,
rotation, background colour and colour jitter, then preprocessed by the model's own
``Gemma3Processor`` image processor. Captions are short prompts in which the image is followed
by its name; the loss is taken on the name only.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .concepts import Concept

#: Caption prompts: (text before the name with ``{image}`` where the image goes, text of the target,
#: weight). None is the ``Q:``/``A:`` format of the paper's ICL prompts: a caption written that way
#: teaches the VLM that an image after ``Q:`` is to be *named*, which is what the v0-v2 weights did
#: on every image ICL prompt (names instead of capitals or colours). Recognition is measured with
#: the first one, which the library ships as :data:`taskvec.embedded.CAPTION_PROMPT`.
CAPTION_TEMPLATES: tuple[tuple[str, str, float], ...] = (
    ("Image:{image}Name:", "{name}\n", 0.4),
    ("{image}This picture shows", " {name}\n", 0.3),
    ("{image}", "{name}\n", 0.3),
)

#: The caption prompts of the v0, v1 and v2 weights (40% in the paper's ``Q:``/``A:`` format).
QA_CAPTION_TEMPLATES: tuple[tuple[str, str, float], ...] = (
    ("Q:{image}\nA:", "{name}\n", 0.4),
    ("{image}", "{name}\n", 0.2),
    ("{image}This picture shows", " {name}\n", 0.2),
    ("Image:{image}Name:", "{name}\n", 0.2),
)


@dataclass(frozen=True)
class Augment:
    """Ranges of the random render parameters.

    Attributes:
        sizes: render sizes in pixels and their weights (the processor resizes to the model's size).
        scale: glyph size as a fraction of the image (min, max).
        shift: maximal shift of the glyph centre, as a fraction of the image.
        rotate: maximal rotation in degrees (either way).
        white: probability of a white background (else a random colour).
        jitter: maximal relative change of brightness, contrast and saturation.

    Example:
        >>> Augment().rotate
        8.0
    """

    sizes: tuple[tuple[int, float], ...] = ((64, 0.5), (96, 0.2), (128, 0.15), (224, 0.15))
    scale: tuple[float, float] = (0.65, 0.95)
    shift: float = 0.06
    rotate: float = 8.0
    white: float = 0.5
    jitter: float = 0.15


@dataclass(frozen=True)
class RenderDraw:
    """The random parameters of one augmented render (drawn by :func:`draw_render`).

    Attributes:
        size: render size in pixels.
        background: RGB background colour.
        scale, offset, rotate: as in :func:`taskvec.inputs.render.render_emoji`.
        enhance: brightness, contrast and saturation factors, in that order.
    """

    size: int
    background: tuple[int, int, int]
    scale: float
    offset: tuple[float, float]
    rotate: float
    enhance: tuple[float, float, float]


def draw_render(rng: random.Random, aug: Augment = Augment()) -> RenderDraw:
    """Draw the parameters of one augmented render from ``rng`` (cheap; the drawing is :func:`render_with`).

    Example:
        >>> draw_render(random.Random(0)).size in (64, 96, 128, 224)
        True
    """
    sizes, weights = zip(*aug.sizes)
    size = rng.choices(sizes, weights)[0]
    if rng.random() < aug.white:
        bg = (255, 255, 255)
    else:
        bg = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    scale = rng.uniform(*aug.scale)
    offset = (rng.uniform(-aug.shift, aug.shift), rng.uniform(-aug.shift, aug.shift))
    rotate = rng.uniform(-aug.rotate, aug.rotate)
    enhance = tuple(1.0 + rng.uniform(-aug.jitter, aug.jitter) for _ in range(3))
    return RenderDraw(size, bg, scale, offset, rotate, enhance)  # type: ignore[arg-type]


def render_with(emoji: str, draw: RenderDraw) -> Any:
    """Render ``emoji`` with drawn parameters: a PIL RGB image of ``draw.size`` pixels.

    Example:
        >>> render_with("🐺", draw_render(random.Random(0))).mode
        'RGB'
    """
    from PIL import ImageEnhance

    from taskvec.inputs.render import render_emoji

    img = render_emoji(emoji, draw.size, background=draw.background, scale=draw.scale, offset=draw.offset,
                       rotate=draw.rotate)
    for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), draw.enhance):
        img = enhancer(img).enhance(factor)
    return img


def render_augmented(emoji: str, rng: random.Random, aug: Augment = Augment()) -> Any:
    """One random render of ``emoji`` (a PIL RGB image whose size is drawn from ``aug.sizes``).

    Example:
        >>> render_augmented("🐺", random.Random(0)).mode
        'RGB'
    """
    return render_with(emoji, draw_render(rng, aug))


def _render_jobs(jobs: Sequence[tuple[str, RenderDraw]]) -> list[Any]:
    """Worker of :func:`render_pool`: render a chunk of ``(emoji, draw)`` jobs."""
    return [render_with(e, d) for e, d in jobs]


def pixel_values(processor: Any, images: Sequence[Any]) -> torch.Tensor:
    """Images through the model's image processor: ``[n, 3, H, W]`` float in [-1, 1]."""
    return processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Store processed pixels (``x / 127.5 - 1`` of 8-bit values) exactly as uint8."""
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(stored: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_uint8`."""
    return stored.float() / 127.5 - 1


def render_pool(
    concepts: Sequence[Concept],
    per_concept: int,
    processor: Any,
    *,
    seed: int,
    aug: Augment = Augment(),
    progress: bool = True,
    chunk: int = 256,
    workers: int | None = None,
) -> torch.Tensor:
    """``per_concept`` augmented renders of each concept, processed: ``[len(concepts), per_concept, 3, H, W]`` uint8.

    Every render's parameters are drawn in order from one ``random.Random(seed)``, so the pool
    depends on the seed alone, not on how many worker processes draw the glyphs.

    Args:
        workers: processes that render (1: this process; default: one per core for pools of
            4096 renders or more, where it halves the time on two cores, else 1: where there is
            no ``fork``, a worker takes seconds to start).

    Example:
        >>> pool = render_pool([Concept("🐺", "wolf", "animals")], 2, proc, seed=0)   # doctest: +SKIP
        >>> pool.shape                                                              # doctest: +SKIP
        torch.Size([1, 2, 3, 64, 64])
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    rng = random.Random(seed)
    jobs = [(c.emoji, draw_render(rng, aug)) for c in concepts for _ in range(per_concept)]
    chunks = [jobs[start : start + chunk] for start in range(0, len(jobs), chunk)]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(jobs) >= 4096 else 1
    workers = min(workers, len(chunks))
    bar = tqdm(total=len(jobs), desc="rendering", disable=not progress)
    out = []
    with contextlib.ExitStack() as stack:
        # fork where there is one (as torch's DataLoader does): the workers only run PIL, and unlike spawn
        # it does not re-import the caller's script, which may lack an ``if __name__ == "__main__"`` guard
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        rendered = (map(_render_jobs, chunks) if workers <= 1 else stack.enter_context(
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))).map(_render_jobs, chunks))
        for imgs in rendered:
            out.append(to_uint8(pixel_values(processor, imgs)))
            bar.update(len(imgs))
    bar.close()
    flat = torch.cat(out)
    return flat.view(len(concepts), per_concept, *flat.shape[1:])


@dataclass
class CaptionBatch:
    """Tokenized caption prompts with their images, right-padded.

    Attributes:
        input_ids: ``[b, s]``.
        attention_mask: ``[b, s]``.
        token_type_ids: ``[b, s]``, 1 on image tokens (Gemma-3 lets an image's tokens see each other).
        pixel_values: ``[n_images, 3, H, W]``.
        targets: ``[b, s]``: the token to predict at each position, -100 where there is no loss.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    pixel_values: torch.Tensor
    targets: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
            "pixel_values": self.pixel_values,
        }


def caption_batch(
    processor: Any,
    samples: Sequence[Sequence[str]],
    pixels: torch.Tensor,
    *,
    rng: random.Random,
    templates: Sequence[tuple[str, str, float]] = CAPTION_TEMPLATES,
) -> CaptionBatch:
    """Build caption sequences: each sample is the names of one or more images, in order.

    The image placeholder is expanded exactly as ``Gemma3Processor`` does (``\\n\\n<boi>`` +
    ``tokens_per_image`` image tokens + ``<eoi>\\n\\n``); targets cover the names (and the newline
    that closes each) only. Several images in one sample are separated by a blank line, as the
    demonstrations of an ICL prompt are.

    Args:
        processor: the VLM's ``Gemma3Processor``.
        samples: per sequence, the names of its images.
        pixels: ``[total images, 3, H, W]`` in the order the images appear.
        rng: picks a template per image.
        templates: ``(before, after, weight)`` caption formats.

    Returns:
        a :class:`CaptionBatch`.

    Example:
        >>> b = caption_batch(proc, [["France"]], torch.zeros(1, 3, 64, 64), rng=random.Random(0))  # doctest: +SKIP
        >>> int((b.targets >= 0).sum())     # "France", "\\n"                                     # doctest: +SKIP
        2
    """
    tok = processor.tokenizer
    image_text = processor.full_image_sequence
    weights = [w for *_, w in templates]
    rows, tgts = [], []
    for names in samples:
        ids: list[int] = [tok.bos_token_id]
        tgt: list[int] = []
        for i, name in enumerate(names):
            before, after, _ = rng.choices(templates, weights)[0]
            prefix = before.format(image=image_text)
            target = after.format(name=name) + ("\n" if i + 1 < len(names) else "")
            p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
            full = tok(prefix + target, add_special_tokens=False)["input_ids"]
            n_prefix = len(p_ids)
            while full[:n_prefix] != p_ids[:n_prefix]:  # a token merged across the boundary
                n_prefix -= 1
            start = len(ids)
            ids += full
            # the logits at position t predict token t+1
            tgt += [-100] * len(full)
            for j in range(n_prefix, len(full)):
                tgt[start + j - 1] = full[j]
        tgt.append(-100)
        rows.append(ids)
        tgts.append(tgt)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, tgts)):
        input_ids[i, : len(r)] = torch.tensor(r)
        targets[i, : len(t)] = torch.tensor(t)
        mask[i, : len(r)] = 1
    token_type = (input_ids == tok.image_token_id).long()
    return CaptionBatch(input_ids, mask, token_type, pixels, targets)


def jitter_pixels(pixels: torch.Tensor, gen: torch.Generator, *, scale: float = 0.1, rotate: float = 0.1,
                  shift: float = 0.08, brightness: float = 0.15, tint: float = 0.1) -> torch.Tensor:
    """Cheap extra augmentation of processed pixels on every draw: a random affine warp and colour shift.

    The render pool holds a fixed number of PIL-augmented renders per concept; warping them again
    on every step keeps a small encoder from memorising the pool.

    Args:
        pixels: ``[n, 3, H, W]`` in [-1, 1].
        gen: the generator of the step (reproducible batches).
        scale: maximal relative zoom; rotate: maximal rotation in radians; shift: maximal shift as
            a fraction of half the image; brightness: maximal relative contrast change; tint:
            maximal per-channel offset.

    Returns:
        ``[n, 3, H, W]`` in [-1, 1].

    Example:
        >>> jitter_pixels(torch.zeros(2, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3, 32, 32])
    """
    import torch.nn.functional as F

    n = pixels.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731
    s, a = 1 + scale * u(n), rotate * u(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = s * torch.cos(a), -s * torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = s * torch.sin(a), s * torch.cos(a)
    theta[:, :, 2] = shift * u(n, 2)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    warped = F.grid_sample(pixels + 1, grid, padding_mode="border", align_corners=False) - 1
    return (warped * (1 + brightness * u(n, 1, 1, 1)) + tint * u(n, 3, 1, 1)).clamp(-1, 1)
