"""Delimiter positions, read from the processed ``input_ids`` (never from string offsets).

A VLM processor may turn one image placeholder into hundreds of tokens, and a batch may be
padded on either side, so the only trustworthy positions are the ones found in the final ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import TaskvecError
from .prompts import Template


def marker_ids(tokenizer: Any, template: Template) -> list[int]:
    """Token ids of the template's answer marker as they appear at the end of a query.

    The marker is tokenized in context (a query with a dummy input), and the shortest run of
    trailing ids that decodes to the marker is kept; its last id is the delimiter.

    Example:
        >>> m = taskvec.load("gemma-3-270m")                                  # doctest: +SKIP
        >>> m.tokenizer.convert_ids_to_tokens(marker_ids(m.tokenizer, GENERIC))  # doctest: +SKIP
        ['A', ':']
    """
    ids = tokenizer(template.query.format(x="hello"), add_special_tokens=False)["input_ids"]
    want = template.marker.strip() or template.marker
    for k in range(1, len(ids) + 1):
        if want in tokenizer.decode(ids[-k:], skip_special_tokens=False):
            return list(ids[-k:])
    raise TaskvecError(f"could not find the answer marker {template.marker!r} in the tokenized query")


def find_subsequence_ends(row: torch.Tensor, pattern: Sequence[int]) -> list[int]:
    """Positions of the last token of every occurrence of ``pattern`` in a 1-D id tensor.

    Example:
        >>> find_subsequence_ends(torch.tensor([5, 1, 2, 7, 1, 2]), [1, 2])
        [2, 5]
    """
    k = len(pattern)
    if k == 0 or row.numel() < k:
        return []
    pat = torch.as_tensor(pattern, dtype=row.dtype, device=row.device)
    windows = row.unfold(0, k, 1)  # [n - k + 1, k]
    hits = (windows == pat).all(dim=1).nonzero().flatten()
    return (hits + k - 1).tolist()


def delimiter_positions(input_ids: torch.Tensor, pattern: Sequence[int], expected: Sequence[int]) -> list[list[int]]:
    """Delimiter positions per row of a padded ``[batch, seq]`` id tensor, checked against counts.

    Args:
        input_ids: ``[batch, seq]`` processed ids (any padding side).
        pattern: the marker's ids (see :func:`marker_ids`).
        expected: how many markers each row must contain (``n_demos + 1`` for an ICL prompt).

    Raises:
        TaskvecError: if a row has another number of markers (e.g. an answer contains ``A:``).

    Example:
        >>> delimiter_positions(torch.tensor([[0, 1, 2, 9, 1, 2]]), [1, 2], [2])
        [[2, 5]]
    """
    out = []
    for i, row in enumerate(input_ids):
        found = find_subsequence_ends(row, pattern)
        if len(found) != expected[i]:
            raise TaskvecError(
                f"prompt {i} contains {len(found)} answer markers but {expected[i]} were expected: an input or "
                "answer probably contains the marker text itself; change the template or clean the data"
            )
        out.append(found)
    return out
