"""What the VLM's evaluation scripts share (``analyses/eval_embedded_vlm.py``, ``analyses/diagnose_embedded_vlm.py``):
the held-out renders they caption, and when a prediction names a concept.
"""

from __future__ import annotations

import random

import taskvec

from .concepts import Concept
from .data import render_augmented

#: Seed offset of the held-out renders: training draws its renders from ``random.Random(seed)``
#: (and its caption pools from the seeds of :mod:`vlm_recipe.seeds`), never from this one.
HELD_OUT_SEED = 1_000_003


def held_out_renders(concepts: list[Concept], renders: int, seed: int) -> list[list]:
    """``renders`` augmented renders of each concept, from a seed training never used (per concept,
    in order: the same concepts, count and seed always give the same images).

    Example:
        >>> [len(r) for r in held_out_renders([Concept("🐺", "wolf", "animals")], 2, seed=0)]
        [2]
    """
    rng = random.Random(HELD_OUT_SEED + seed)
    return [[render_augmented(c.emoji, rng) for _ in range(renders)] for c in concepts]


def names_concept(first_token: str, concept: Concept) -> bool:
    """The paper's metric (first token, prefix match) against the concept's name or any alias.

    Example:
        >>> names_concept("Rom", Concept("🇹🇩", "Chad", "flags", ("Romania",)))
        True
    """
    return any(taskvec.is_correct(first_token, n) for n in (concept.caption, *concept.aliases))
