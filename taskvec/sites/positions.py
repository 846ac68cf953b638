"""The one position vocabulary: where in each prompt a site is read or written.

``at`` is one of

- ``"last"``: each prompt's last token (the query's delimiter for a zero-shot or ICL query, the
  last token of an instruction);
- ``"query"``: the query's delimiter (the last ``A:``'s ``:``);
- ``"last_demo"``: the last demonstration's delimiter (where the cross-modal paper reads task
  vectors);
- an ``int``: a position counted on each prompt's own processed tokens (``-1`` = last, ``0`` =
  first real token), whatever the padding.

Positions are resolved once per :class:`~taskvec.models.model.Batch` and kept on it.
"""

from __future__ import annotations

import torch

from ..errors import TaskvecError
from ..models.model import Batch, Model

NAMED = ("last", "query", "last_demo")


def check_at(at: str | int) -> str | int:
    """Return ``at`` if it is a named position or an integer, else raise naming the choices.

    Example:
        >>> check_at("query")
        'query'
        >>> check_at("first")
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: at='first': use one of ('last', 'query', 'last_demo') or an integer position
    """
    if isinstance(at, bool) or not (isinstance(at, int) or at in NAMED):
        raise TaskvecError(f"at={at!r}: use one of {NAMED} or an integer position")
    return at


def resolve(model: Model, batch: Batch, at: str | int = "last") -> torch.Tensor:
    """Absolute token index per prompt of a batch, ``[batch]`` long (memoised on the batch).

    Example:
        >>> resolve(m, m.encode(["Q:France\\nA:", "Q:Japan is nice\\nA:"]), "query")   # doctest: +SKIP
        tensor([8, 8])
    """
    check_at(at)
    if at not in batch.positions:
        batch.positions[at] = _resolve(model, batch, at)
    return batch.positions[at]


def _resolve(model: Model, batch: Batch, at: str | int) -> torch.Tensor:
    if isinstance(at, int):
        return model.position(batch, at)
    if at == "last":
        return model.position(batch, -1)
    delims = model.delimiters(batch)
    out = []
    for i, (p, d) in enumerate(zip(batch.prompts, delims)):
        if at == "query":
            if not p.has_query:
                raise TaskvecError(f"prompt {i} has no query: at='query' needs prompts that end with one; build them "
                                   "with taskvec.icl_prompt(demos, x) (or icl_prompt([], x) for a query alone)")
            out.append(d[-1])
        else:
            if p.n_demos < 1:
                raise TaskvecError(f"prompt {i} has no demonstration: at='last_demo' needs few-shot prompts "
                                   "(taskvec.icl_prompt(demos, x) with at least one demo)")
            out.append(d[-2] if p.has_query else d[-1])
    return torch.tensor(out, dtype=torch.long)
