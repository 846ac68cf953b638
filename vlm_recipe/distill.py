"""Keeping the VLM's language model close to the base LLM while its LoRA update learns to read images.

A LoRA trained on captions alone learns "after ``A:`` say a concept's name", and with it the
language model forgets in-context learning (the one run measured lost 5-shot text ICL, 0.19 ->
0.02; docs/embedded-vlm.md). Here the update is also trained to leave the base model's output
*distribution* unchanged on few-shot prompts in the paper's own ``Q:``/``A:`` format, built from
synthetic string and number tasks that are none of the six paper tasks (upper-casing a word, its
first letter, the next number, ...): a KL divergence to the base model, read at every answer
delimiter (plus a few random positions). The teacher is the same model with the update switched
off (:func:`vlm_recipe.lora.lora_disabled`), so no second copy of the LM is held.
"""

from __future__ import annotations

import random
import unicodedata
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .lora import lora_disabled

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    """Lower-case words (3 to 9 letters) of OpenMoji's Unicode names: a vocabulary needing no download."""
    from .concepts import openmoji_sequences

    out = {w.lower() for e in openmoji_sequences() if len(e) == 1 for w in unicodedata.name(e, "").split()
           if w.isalpha() and 3 <= len(w) <= 9}
    return tuple(sorted(out))


def _few(r: random.Random) -> list[str]:
    return [r.choice(_words()) for _ in range(r.randrange(1, 5))]


#: Synthetic ICL tasks: name -> a function drawing one ``(x, y)`` pair. None is one of the six paper tasks.
SYNTHETIC_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "upper": lambda r: (w := r.choice(_words()), w.upper()),
    "lower": lambda r: ((w := r.choice(_words())).capitalize(), w),
    "first-letter": lambda r: (w := r.choice(_words()), w[0]),
    "last-letter": lambda r: (w := r.choice(_words()), w[-1]),
    "next-number": lambda r: (str(n := r.randrange(1, 500)), str(n + 1)),
    "double": lambda r: (str(n := r.randrange(1, 50)), str(2 * n)),
    "number-word": lambda r: (str(n := r.randrange(21)), _NUMBER_WORDS[n]),
    "next-letter": lambda r: (_LETTERS[i := r.randrange(25)], _LETTERS[i + 1]),
    "last-word": lambda r: (" ".join(ws := _few(r) + [r.choice(_words())]), ws[-1]),
    "word-count": lambda r: (" ".join(ws := _few(r)), str(len(ws))),
}


def synthetic_icl_prompt(r: random.Random, max_shots: int = 5) -> str:
    """One few-shot prompt of a random synthetic task, ending with the query's answer (1 to ``max_shots`` demos).

    Example:
        >>> synthetic_icl_prompt(random.Random(0)).count("A:") >= 2
        True
    """
    task = SYNTHETIC_TASKS[r.choice(sorted(SYNTHETIC_TASKS))]
    pairs = [task(r) for _ in range(r.randrange(1, max_shots + 1) + 1)]
    return "\n\n".join(f"Q:{x}\nA:{y}" for x, y in pairs)


def distill_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, marker: tuple[int, int],
                      extra: float, gen: torch.Generator) -> torch.Tensor:
    """Where the KL is read: every answer delimiter (last token of ``marker``) plus random positions.

    Args:
        input_ids, attention_mask: ``[b, s]`` right-padded.
        marker: the two token ids of ``A:`` (the delimiter is the second).
        extra: expected number of extra random positions per sequence.
        gen: the step's generator.

    Returns:
        ``[b, s]`` bool.

    Example:
        >>> ids = torch.tensor([[2, 7, 9, 5, 7, 9]])
        >>> distill_positions(ids, torch.ones_like(ids), (7, 9), 0.0, torch.Generator()).nonzero()[:, 1].tolist()
        [2, 5]
    """
    prev = torch.cat([torch.full_like(input_ids[:, :1], -1), input_ids[:, :-1]], 1)
    at = (input_ids == marker[1]) & (prev == marker[0])
    if extra > 0:
        at |= (torch.rand(input_ids.shape, generator=gen) < extra / input_ids.shape[1]) & attention_mask.bool()
    return at & attention_mask.bool()


def icl_distill_loss(model: Any, tokenizer: Any, n: int, seed: int, *, extra: float = 4.0) -> torch.Tensor:
    """KL(base || tuned) of ``n`` synthetic few-shot prompts at their answer delimiters (and ``extra`` random positions).

    ``model`` is the VLM under training with :class:`~vlm_recipe.lora.LoRALinear` layers;
    the base distribution is the same model with the update switched off.

    Example:
        >>> loss = icl_distill_loss(vlm_in_training, tokenizer, 8, seed=0)     # doctest: +SKIP
        >>> loss.item() >= 0                                                    # doctest: +SKIP
        True
    """
    r = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    enc = tokenizer([synthetic_icl_prompt(r) for _ in range(n)], return_tensors="pt", padding=True, padding_side="right")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    marker = tuple(tokenizer("\nA:", add_special_tokens=False)["input_ids"][-2:])
    at = distill_positions(ids, mask, marker, extra, gen)  # type: ignore[arg-type]
    lm = model.model.language_model

    def log_probs() -> torch.Tensor:
        hidden = lm(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[at]
        return model.lm_head(hidden).float().log_softmax(-1)

    with torch.no_grad(), lora_disabled(lm.layers):
        teacher = log_probs()
    return F.kl_div(log_probs(), teacher, log_target=True, reduction="batchmean")
