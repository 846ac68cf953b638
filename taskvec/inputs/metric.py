"""The cross-modal paper's accuracy metric: greedy first token, prefix match both ways."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..errors import TaskvecError


def is_correct(prediction: str, label: str, *, case_sensitive: bool = True) -> bool:
    """True if the stripped prediction and label are non-empty and one is a prefix of the other.

    The paper compares the first generated token with the label, so a first token ``" Par"``
    counts as correct for ``"Paris"``, and ``"Canis lupus"`` for the token ``"Canis"``.

    Example:
        >>> is_correct(" Par", "Paris"), is_correct("Paris", "Rome"), is_correct("", "Rome")
        (True, False, False)
        >>> is_correct("paris", "Paris"), is_correct("paris", "Paris", case_sensitive=False)
        (False, True)
    """
    for name, value in (("prediction", prediction), ("label", label)):
        if not isinstance(value, str):
            raise TaskvecError(f"{name}={value!r} is a {type(value).__name__}: pass a str (a label of None "
                               "means the prompt has no label: build prompts with label=)")
    p, y = prediction.strip(), label.strip()
    if not p or not y:
        return False
    if not case_sensitive:
        p, y = p.lower(), y.lower()
    return p.startswith(y) or y.startswith(p)


def accuracy(predictions: Sequence[str], labels: Sequence[str], *, case_sensitive: bool = True) -> float:
    """Mean of :func:`is_correct` over paired predictions and labels.

    Example:
        >>> accuracy(["Par", "Ber"], ["Paris", "Rome"])
        0.5
    """
    for name, value in (("predictions", predictions), ("labels", labels)):
        if isinstance(value, str) or not hasattr(value, "__len__"):
            raise TaskvecError(f"{name}={value!r}: pass a list of strings (one per prompt), not one string")
    if len(predictions) != len(labels):
        raise TaskvecError(
            f"accuracy() got {len(predictions)} predictions but {len(labels)} labels: pass one label per prediction"
        )
    if not predictions:
        return float("nan")
    hits = [is_correct(p, y, case_sensitive=case_sensitive) for p, y in zip(predictions, labels)]
    return sum(hits) / len(hits)


def majority(labels: Iterable[str]) -> str:
    """Most common label (ties broken by first occurrence): the paper's *Random* baseline.

    Example:
        >>> majority(["red", "green", "green", "red", "yellow"])
        'red'
    """
    if isinstance(labels, str):
        raise TaskvecError(f"labels={labels!r} is one string: pass a list of labels")
    counts: dict[str, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    if not counts:
        raise TaskvecError("majority() needs at least one label")
    return max(counts, key=lambda k: counts[k])
