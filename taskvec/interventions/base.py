"""The one intervention protocol every method implements.

An intervention changes a forward pass from inside an nnsight trace. It says *where* it writes
(``at``: a position of :mod:`taskvec.sites.positions`, or ``"every"`` for every token) and
whether it also writes on each generated token (``every_step``), checks that a model has its
shape (``check``) and writes (``apply``). The runner (:mod:`taskvec.interventions.run`) does the
rest, the same way for all of them: encode, trace, last-token logits, greedy decode, generate.

========================  ==================  =========  ==========  ========================
intervention              site                at         every_step  made by
========================  ==================  =========  ==========  ========================
``ResidualPatch``         residual stream     ``query``  no          task vectors, patching
``HeadIntervention``      head outputs        ``last``   yes         MTV, STV
``MimIC``                 head outputs        ``every``  yes         MimIC
========================  ==================  =========  ==========  ========================
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..models.model import Model


@runtime_checkable
class Intervention(Protocol):
    """What the runner needs of an intervention.

    Attributes:
        at: where in the prompt it writes: ``"last"``, ``"query"``, ``"last_demo"``, an int, or
            ``"every"`` (every token: ``apply`` gets ``rows=None, pos=None``).
        every_step: during generation, also write at each new token (at ``pos=-1``).
    """

    at: str | int
    every_step: bool

    def check(self, model: Model) -> None:
        """Raise a :class:`~taskvec.errors.TaskvecError` unless ``model`` has the shape this
        intervention was made for."""

    def apply(self, model: Model, rows: Any, pos: Any) -> None:
        """Inside a trace: write at ``(rows, pos)`` (``[n]`` rows and ``[n]`` token positions, or
        a slice and an int), in forward (layer) order. Every tensor written goes to the device
        and dtype of the activation it meets."""
