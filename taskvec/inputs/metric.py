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


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (``z=1.96``) Wilson score interval of an accuracy of ``correct`` out of ``n`` queries.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or 1, which is
    where small test sets put many of the paper's cells.

    Example:
        >>> [round(x, 3) for x in wilson_interval(7, 10)]
        [0.397, 0.892]
        >>> wilson_interval(0, 7)[0]
        0.0
    """
    if n <= 0:
        raise TaskvecError(f"n={n}: an interval needs at least one query")
    if not 0 <= correct <= n:
        raise TaskvecError(f"correct={correct} is outside 0..n={n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, standard deviation, half-width of the 95% t-interval)`` of per-seed accuracies
    (``0.0`` spread for one seed).

    Example:
        >>> [round(x, 3) for x in seed_spread([0.5, 0.6, 0.7])]
        [0.6, 0.1, 0.248]
    """
    vals = [float(v) for v in values]
    if not vals:
        raise TaskvecError("no per-seed values given")
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return mean, 0.0, 0.0
    sd = (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5
    # two-sided 97.5% t quantiles for 1..9 degrees of freedom, then the normal's
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}.get(n - 1, 1.96)
    return mean, sd, t * sd / n ** 0.5
