"""Token ids of answers as the model sees them right after the answer marker.

Rewards and losses of MTV, STV and MimIC score the label's tokens following the query's marker
(``A:`` + ``Paris``). The label is tokenized *after the marker*, so a tokenizer that merges
across the boundary or adds a leading space gives the ids the model actually predicts.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import TaskvecError
from ..inputs.prompts import GENERIC, Template
from ..models.model import Model


def answer_ids(model: Model, label: str, template: Template = GENERIC) -> list[int]:
    """The ids the model should produce after the template's marker to answer ``label``.

    Example:
        >>> m.tokenizer.convert_ids_to_tokens(answer_ids(m, "Canis lupus"))   # doctest: +SKIP
        ['Can', 'is', '▁lupus']
    """
    if not label or not label.strip():
        raise TaskvecError("a label is empty: every query needs a non-empty answer to score")
    tok = model.tokenizer
    marker = tok(template.marker, add_special_tokens=False)["input_ids"]
    full = tok(template.marker + label, add_special_tokens=False)["input_ids"]
    if full[: len(marker)] != marker or len(full) == len(marker):
        raise TaskvecError(
            f"the label {label!r} merges with the answer marker {template.marker!r} when tokenized: "
            "use a template whose marker ends at a token boundary"
        )
    return list(full[len(marker):])


def first_answer_ids(model: Model, labels: Sequence[str | None], template: Template = GENERIC) -> torch.Tensor:
    """First answer token id of each label, ``[n]`` long (the paper scores the first token).

    Example:
        >>> first_answer_ids(m, ["Paris", "Tokyo"])    # doctest: +SKIP
        tensor([50429, 89040])
    """
    out = []
    for y in labels:
        if y is None:
            raise TaskvecError("a prompt has no label: build queries with icl_prompt(..., label=y)")
        out.append(answer_ids(model, y, template)[0])
    return torch.tensor(out, dtype=torch.long)


class RepeatedQueries:
    """Labelled queries, each encoded once as ``n`` identical rows, with its first answer id.

    REINFORCE scores ``n`` sampled interventions on one query per step: row ``i`` of the batch
    gets sample ``i``.

    Example:
        >>> rq = RepeatedQueries(m, queries, 32)        # doctest: +SKIP
        >>> batch, targets = rq(0)                       # doctest: +SKIP
        >>> len(batch), targets.shape                    # doctest: +SKIP
        (32, torch.Size([32]))
    """

    def __init__(self, model: Model, queries: Sequence[Any], n: int, template: Template = GENERIC) -> None:
        self.model, self.queries, self.n = model, list(queries), n
        self.targets = first_answer_ids(model, [q.label for q in self.queries], template)
        self._cache: dict[int, Any] = {}

    def __call__(self, i: int) -> tuple[Any, torch.Tensor]:
        """``(batch of n copies of query i, [n] answer ids)``."""
        if i not in self._cache:
            self._cache[i] = self.model.encode([self.queries[i]] * self.n)
        return self._cache[i], self.targets[i].repeat(self.n)
