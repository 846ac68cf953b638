"""Split work into batches with a progress bar (shown only when there is more than one batch)."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

from tqdm.auto import tqdm

from ..checks import count

T = TypeVar("T")


def batches(items: Sequence[T], batch_size: int, *, desc: str = "", progress: bool = True) -> Iterator[list[T]]:
    """Yield consecutive slices of ``items`` of at most ``batch_size``, with a tqdm bar.

    Example:
        >>> [b for b in batches([1, 2, 3, 4, 5], 2, progress=False)]
        [[1, 2], [3, 4], [5]]
    """
    batch_size = count("batch_size", batch_size, fix="prompts per forward")
    starts = range(0, len(items), batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) <= 1, leave=False)
    for start in bar:
        yield list(items[start : start + batch_size])
