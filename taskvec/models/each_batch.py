"""Run one step per batch of prompts: the one loop every operation's forwards go through.

It gives every operation the same three things:

- **a progress bar** over batches (locally);
- **one request on NDIF**: on a remote model all batches are encoded here and the steps run in
  one nnsight session (:meth:`Model.request`), not one job per batch;
- **batch-size backoff**: when a batch runs out of GPU memory it is halved and retried, the
  rest of the operation keeps the smaller size, and the user is told (a
  :class:`BatchSizeWarning`). Results are the same as with a batch size that fits.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..checks import count
from ..inputs.prompts import Prompt
from .model import Batch, Model


class BatchSizeWarning(UserWarning):
    """A batch ran out of memory and the operation went on with a smaller batch size."""


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps: nnsight re-raises errors from inside a trace) is an
    out-of-memory error of an accelerator."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, torch.OutOfMemoryError) or (
                type(err).__name__ == "RuntimeError" and "out of memory" in str(err).lower()):
            return True
        err = err.__cause__ or err.__context__
    return False


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def each_batch(
    model: Model,
    prompts: Sequence[Prompt],
    batch_size: int,
    step: Callable[[Batch], Any],
    *,
    desc: str = "forward",
    progress: bool = True,
) -> list[tuple[list[Prompt], Any]]:
    """``step(model.encode(chunk))`` for consecutive chunks of at most ``batch_size`` prompts.

    Args:
        step: runs one batch (its traces) and returns tensors; on a remote model it runs on the
            server, so it must use only what the server has (see :meth:`Model.request`).
        desc: the progress bar's label, also named in a backoff warning.

    Returns:
        ``[(chunk, step's result), ...]`` in prompt order. After a backoff a chunk can be smaller
        than ``batch_size``; concatenating the results in order is always right.

    Example:
        >>> out = each_batch(m, prompts, 8, lambda b: batch_logits(m, b))   # doctest: +SKIP
        >>> logits = torch.cat([r for _, r in out])                         # doctest: +SKIP
    """
    batch_size = count("batch_size", batch_size, fix="prompts per forward")
    items = list(prompts)
    if model.remote and not model._in_request:
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        encoded = [model.encode(chunk) for chunk in chunks]
        results = model.request(_steps, step, encoded)
        return list(zip(chunks, results))
    out: list[tuple[list[Prompt], Any]] = []
    size, start = batch_size, 0
    bar = tqdm(total=len(items), desc=desc, unit="prompt", disable=not progress or len(items) <= batch_size,
               leave=False)
    while start < len(items):
        chunk = items[start : start + size]
        try:
            result = step(model.encode(chunk))
        except Exception as err:
            if not out_of_memory(err) or size == 1:
                raise
            _free_memory()
            smaller = max(1, size // 2)
            message = (f"{desc}: batch_size={size} ran out of memory on {model.name} (a batch of {len(chunk)} "
                       f"prompts); going on with batch_size={smaller} (pass batch_size={smaller} to start there)")
            warnings.warn(message, BatchSizeWarning, stacklevel=2)
            bar.set_postfix_str(f"batch_size={smaller}")
            size = smaller
            continue
        out.append((chunk, result))
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return out


def _steps(step: Callable[[Batch], Any], batches: list[Batch]) -> list[Any]:
    """The server side of a remote :func:`each_batch`: every step, in one request."""
    return [step(batch) for batch in batches]
