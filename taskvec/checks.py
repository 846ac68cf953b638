"""The one argument check: every public function checks its arguments here, at the boundary,
before any work, and the message names the argument, the value and the fix.

Example:
    >>> count("n_shots", 5)
    5
    >>> count("n_shots", -1)
    Traceback (most recent call last):
    ...
    taskvec.errors.TaskvecError: n_shots=-1: pass a whole number >= 1
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

from .errors import TaskvecError


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None, fix: str = "") -> int:
    """``value`` as an ``int`` if it is a whole number (numpy/torch integers count; bool, str and
    float do not) within ``[low, high]``, else raise naming ``name``.

    Example:
        >>> integer("top_k", 3, low=1)
        3
        >>> integer("layer", "12")
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: layer='12' is not a whole number: pass an int
    """
    if hasattr(value, "ndim") and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TaskvecError(f"{name}={value!r} is not a whole number: {fix or 'pass an int'}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in {low}..{high}")
        raise TaskvecError(f"{name}={value} is out of range: pass a whole number {span}" + (f" ({fix})" if fix else ""))
    return value


def count(name: str, value: Any, *, low: int = 1, fix: str = "") -> int:
    """A count: a whole number ``>= low`` (default 1).

    Example:
        >>> count("batch_size", 0)
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: batch_size=0: pass a whole number >= 1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise TaskvecError(f"{name}={value!r}: pass a whole number >= {low}" + (f" ({fix})" if fix else ""))
    return int(value)


def one_of(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else raise listing them.

    Example:
        >>> one_of("mode", "multiply", ("replace", "add"))
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: mode='multiply': use one of ('replace', 'add')
    """
    if isinstance(value, bool) or value not in tuple(choices):
        raise TaskvecError(f"{name}={value!r}: use one of {tuple(choices)}")
    return value


def finite(name: str, tensor: Any, *, where: str = "", fix: str = "") -> Any:
    """``tensor`` if every entry is finite, else raise naming the first place (index) with NaN or inf.

    ``where`` names the dimensions (``"layer, head, d_head"``), ``fix`` replaces the default advice.

    Example:
        >>> import torch
        >>> finite("vector", torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), where="layer, d")
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: vector holds NaN or inf (first at layer, d = (1, 0)): it would make every prediction meaningless; rebuild it from finite values
    """
    import torch

    if not torch.is_tensor(tensor) or not tensor.is_floating_point():
        return tensor
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        place = f" (first at {where + ' = ' if where else 'index '}{first})"
        raise TaskvecError(f"{name} holds NaN or inf{place}: "
                           + (fix or "it would make every prediction meaningless; rebuild it from finite values"))
    return tensor
