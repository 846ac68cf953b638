"""What every ``fit_*`` returns: the fitted intervention and how it was found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class Fit:
    """A fitted intervention (MTV, STV, MimIC, ...) plus its search or training record.

    Attributes:
        intervention: what to use at inference (a :class:`~taskvec.HeadIntervention`,
            :class:`~taskvec.MimIC`, ...): ``fit.intervention.predict(m, queries)``.
        history: one row per search or training step (a DataFrame: ``step, ...``).
        timings: seconds per stage (e.g. ``means``, ``location_search``, ``selection``).
        details: method-specific tables and tensors (candidates, deltas, bank, probabilities).

    ``intervention, history = fit`` also works (what ``fit_mimic`` returned before it returned a
    :class:`Fit`).

    Example:
        >>> fit = taskvec.fit_mtv(m, pairs)                  # doctest: +SKIP
        >>> fit.intervention.predict(m, queries)[:2]          # doctest: +SKIP
        ['Paris', 'Tokyo']
    """

    intervention: Any
    history: Any
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.intervention, self.history))

    def __repr__(self) -> str:
        secs = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        return f"Fit({self.intervention!r}, steps={len(self.history)}, {secs})"

    def _repr_html_(self) -> str:
        """In Jupyter: the intervention (its chosen heads, if any) and the time each stage took."""
        iv = self.intervention
        if hasattr(iv, "heads"):
            heads = ", ".join(f"L{a}H{b}" for a, b in iv.heads()[:24])
            more = " ..." if iv.n_selected > 24 else ""
            what = f"<b>{iv.method}</b> {iv.model_name} &middot; {iv.n_selected} heads: {heads}{more}"
        else:
            what = iv._repr_html_() if hasattr(iv, "_repr_html_") else repr(iv)
        secs = " &middot; ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return f"{what}<br>{len(self.history)} steps &middot; {secs}"


#: the name MTV's and STV's result had before every fit returned one type
HeadFit = Fit
