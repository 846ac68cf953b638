"""The one runner: greedy first-token logits, predictions and generation, with or without an
intervention (:mod:`taskvec.interventions.base`).

Every accuracy in the cross-modal paper is built on the greedy first token; batches are padded
on the left, so the last position is every prompt's own last token.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..checks import count, one_of
from ..errors import TaskvecError
from ..inputs.prompts import Prompt, prompt_list
from ..models.each_batch import each_batch
from ..models.model import Batch, Model
from ..sites.positions import resolve
from .base import Intervention

OUTPUTS = ("logits", "predict", "generate")


def where(model: Model, batch: Batch, intervention: Intervention) -> tuple[Any, Any]:
    """``(rows, pos)`` the intervention writes at in ``batch`` (``(None, None)`` for ``"every"``)."""
    if intervention.at == "every":
        return None, None
    return torch.arange(len(batch)), resolve(model, batch, intervention.at)


def batch_logits(
    model: Model,
    batch: Batch,
    intervention: Intervention | None = None,
    *,
    inputs: dict[str, Any] | None = None,
    at: tuple[Any, Any] | None = None,
) -> torch.Tensor:
    """Next-token logits at the last position of one batch, ``[batch, vocab]`` float32 on the CPU.

    Args:
        intervention: applied inside the trace (``None``: the plain model, same code path).
        inputs: run these forward inputs instead of ``batch.inputs`` (e.g. one token on a KV cache).
        at: ``(rows, pos)`` to write at instead of the intervention's own position.
    """
    with torch.no_grad(), model.nn.trace(dict(inputs or batch.inputs), **model.trace_kwargs(logits_to_keep=1)):
        if intervention is not None:
            rows, pos = at if at is not None else where(model, batch, intervention)
            intervention.apply(model, rows, pos)
        logits = model.nn.output.logits[:, -1].save()
    logits = logits.float().cpu()
    if not torch.isfinite(logits).all():
        raise TaskvecError(non_finite(model, "next-token logits"))
    return logits


def non_finite(model: Model, what: str) -> str:
    """The error for NaN or inf coming out of the model itself (float16 overflow, most often)."""
    dtype = next(model.hf.parameters()).dtype
    half = (f"{model.name} runs in {dtype}: its activations overflow float16's range (65504); load it with "
            "dtype=torch.bfloat16 or torch.float32") if dtype == torch.float16 else \
        "check the weights (a NaN in them) and any intervention written into this forward"
    return f"the model's {what} hold NaN or inf: {half}"


def decode_ids(model: Model, ids: Any) -> list[str]:
    """Each token id of ``ids`` (``[n]``) decoded on its own: the paper's first-token predictions."""
    return [model.tokenizer.decode([int(i)]) for i in ids]


def decode_first(model: Model, logits: torch.Tensor) -> list[str]:
    """The greedy token of each row of ``[n, vocab]`` logits, decoded."""
    return decode_ids(model, logits.argmax(dim=-1))


def _checked(model: Model, intervention: Intervention | None) -> None:
    if intervention is not None:
        if not all(hasattr(intervention, k) for k in ("at", "every_step", "check", "apply")):
            raise TaskvecError(f"intervention={intervention!r} is a {type(intervention).__name__}, not an "
                               "intervention: pass a TaskVector's .patch(layers), a fit's .intervention, or None")
        intervention.check(model)


def first_token_logits(
    model: Model,
    prompts: Sequence[Prompt | str],
    *,
    intervention: Intervention | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "forward",
) -> torch.Tensor:
    """Next-token logits at each prompt's last position, ``[n_prompts, vocab]`` (float32, CPU).

    Example:
        >>> m = taskvec.load()                                      # doctest: +SKIP
        >>> first_token_logits(m, ["Q:France\\nA:"]).shape           # doctest: +SKIP
        torch.Size([1, 262144])
    """
    prompts = prompt_list(prompts)
    batch_size = count("batch_size", batch_size)
    _checked(model, intervention)
    out = each_batch(model, prompts, batch_size, lambda batch: batch_logits(model, batch, intervention),
                     desc=desc, progress=progress)
    return torch.cat([logits for _, logits in out])


def predict(
    model: Model,
    prompts: Sequence[Prompt | str],
    *,
    intervention: Intervention | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "forward",
) -> list[str]:
    """Greedy first token of each prompt, decoded (the paper's prediction).

    Example:
        >>> m = taskvec.load()                                                     # doctest: +SKIP
        >>> predict(m, [taskvec.icl_prompt([("France", "Paris")] * 3, "Japan")])    # doctest: +SKIP
        ['Tokyo']
    """
    prompts = prompt_list(prompts)
    batch_size = count("batch_size", batch_size)
    _checked(model, intervention)
    # only the greedy ids come back (not [batch, vocab] logits): what a remote request returns
    out = each_batch(model, prompts, batch_size,
                     lambda batch: batch_logits(model, batch, intervention).argmax(dim=-1),
                     desc=desc, progress=progress)
    return [pred for _, ids in out for pred in decode_ids(model, ids)]


def generate(
    model: Model,
    prompts: Sequence[Prompt | str],
    *,
    intervention: Intervention | None = None,
    max_new_tokens: int = 8,
) -> list[str]:
    """Greedy continuation of each prompt: the intervention writes in the prompt's forward and, if
    it is ``every_step``, at each new token too.

    Example:
        >>> generate(m, [taskvec.icl_prompt([], "Kenya")], intervention=iv, max_new_tokens=3)   # doctest: +SKIP
        ['Nairobi\\n\\n']
    """
    prompts = prompt_list(prompts)
    max_new_tokens = count("max_new_tokens", max_new_tokens, fix="the number of tokens to generate")
    _checked(model, intervention)
    batch = model.encode(prompts)
    with torch.no_grad(), model.generate(batch, max_new_tokens=max_new_tokens) as tracer:
        if intervention is not None and intervention.every_step:
            for _ in tracer.iter[:max_new_tokens]:
                intervention.apply(model, *_step_where(model, batch, intervention))
        elif intervention is not None:
            intervention.apply(model, *where(model, batch, intervention))
        out = tracer.result.save()
    return model.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)


def _step_where(model: Model, batch: Batch, intervention: Intervention) -> tuple[Any, Any]:
    # a per-token intervention writes at the newest token of every step (the prompt's last first)
    return (None, None) if intervention.at == "every" else (torch.arange(len(batch)), -1)


def run(
    model: Model,
    prompts: Sequence[Prompt | str],
    intervention: Intervention | None = None,
    *,
    out: str = "predict",
    batch_size: int = 16,
    progress: bool = True,
    max_new_tokens: int = 8,
) -> Any:
    """One entry for all three outputs: ``out="logits"`` (``[n, vocab]``), ``"predict"`` (greedy
    first tokens) or ``"generate"`` (greedy continuations).

    Example:
        >>> run(m, queries, fit.intervention, out="predict")[:2]      # doctest: +SKIP
        ['Paris', 'Tokyo']
    """
    one_of("out", out, OUTPUTS)
    prompts = prompt_list(prompts)
    batch_size = count("batch_size", batch_size)
    max_new_tokens = count("max_new_tokens", max_new_tokens, fix="the number of tokens to generate")
    if out == "logits":
        return first_token_logits(model, prompts, intervention=intervention, batch_size=batch_size, progress=progress)
    if out == "predict":
        return predict(model, prompts, intervention=intervention, batch_size=batch_size, progress=progress)
    if out == "generate":
        return generate(model, prompts, intervention=intervention, max_new_tokens=max_new_tokens)
    raise TaskvecError(f"out={out!r}: use one of {OUTPUTS}")
