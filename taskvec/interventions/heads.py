"""Head replacement: chosen heads' outputs replaced by fixed vectors at the last token (what MTV
and STV produce), with one value per row for REINFORCE's batched samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checks import finite
from ..errors import TaskvecError
from ..inputs.prompts import Prompt
from ..models.model import Batch, Model
from ..sites.heads import write_heads
from .files import load_artifact, loading, save_artifact
from .run import batch_logits, generate, predict

FORMAT = "taskvec.HeadIntervention"


@dataclass
class HeadIntervention:
    """Replace chosen heads' outputs by fixed vectors at the last token (MTV and STV produce one).

    At inference the query runs zero-shot; at every layer with a chosen head, the head outputs at
    the prompt's last token (and, in :meth:`generate`, at every generated token) are replaced.

    Attributes:
        values: ``[n_layers, n_heads, d_head]`` float32 (rows of unchosen heads are ignored), or
            ``[n, n_layers, n_heads, d_head]``: one set per batch row (REINFORCE's samples).
        mask: ``[n_layers, n_heads]`` bool, the chosen heads (or ``[n, n_layers, n_heads]``).
        model_name: the model the values come from.
        method: ``"mtv"``, ``"stv"`` or anything descriptive.
        meta: JSON-serialisable facts (task, trials, steps, ...).

    Example:
        >>> iv = HeadIntervention(means, mask, "gemma-3-270m", "mtv")     # doctest: +SKIP
        >>> iv.predict(m, [taskvec.icl_prompt([], "Kenya")])              # doctest: +SKIP
        ['Nairobi']
    """

    values: torch.Tensor
    mask: torch.Tensor
    model_name: str
    method: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)
    at: str | int = field(default="last", init=False)
    every_step: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.values.dim() not in (3, 4) or self.mask.shape[-2:] != self.values.shape[-3:-1] or \
                self.mask.dim() not in (2, 3):
            raise TaskvecError(
                f"values must be [n_layers, n_heads, d_head] and mask [n_layers, n_heads] (or with a leading row "
                f"dimension); got {tuple(self.values.shape)} and {tuple(self.mask.shape)}"
            )
        self.mask = self.mask.to(torch.bool)
        self._check_finite()

    def _check_finite(self) -> None:
        where = "row, layer, head, d_head" if self.values.dim() == 4 else "layer, head, d_head"
        finite(f"this {self.method} head intervention", self.values, where=where,
               fix="patching them would make every prediction meaningless; fit it again (or rebuild it from finite "
                   "values)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_layers, n_heads, d_head)``."""
        return tuple(self.values.shape[-3:])  # type: ignore[return-value]

    @property
    def n_selected(self) -> int:
        return int(self.mask.sum())

    def heads(self) -> list[tuple[int, int]]:
        """The chosen ``(layer, head)`` pairs, in layer order."""
        return [(int(a), int(b)) for a, b in self.mask.nonzero().tolist()]

    def __repr__(self) -> str:
        L, H, D = self.shape
        return f"HeadIntervention({self.method}, model={self.model_name!r}, {self.n_selected}/{L * H} heads, d_head={D})"

    def check(self, model: Model) -> None:
        """Raise unless ``model`` has this intervention's layer, head and head-size counts."""
        shape = (model.n_layers, model.n_heads, model.d_head)
        if self.shape != shape:
            raise TaskvecError(
                f"this {self.method} intervention is for heads of shape {self.shape} "
                f"(layers, heads, d_head) from {self.model_name}, but {model.name} has {shape}: fit it on this model"
            )
        self._check_finite()  # again: the values can be changed in place after the intervention is made

    check_compatible = check

    def apply(self, model: Model, rows: Any, pos: Any) -> None:
        """Inside a trace: write the chosen heads at ``(rows, pos)`` in every layer that has one."""
        per_row = self.values.dim() == 4
        active = self.mask.reshape(-1, *self.mask.shape[-2:]).any(0)
        for layer in range(model.n_layers):
            if bool(active[layer].any()):
                values = self.values[:, layer] if per_row else self.values[layer]
                write_heads(model, layer, rows, pos, values, self.mask[..., layer, :])

    # --- the runner, for this intervention ------------------------------------------------------
    def logits(self, model: Model, batch: Batch) -> torch.Tensor:
        """Next-token logits ``[batch, vocab]`` with the intervention at each prompt's last token."""
        self.check(model)
        return batch_logits(model, batch, self)

    def predict(self, model: Model, prompts: Sequence[Prompt], *, batch_size: int = 32, progress: bool = True) -> list[str]:
        """Greedy first token of each (zero-shot) prompt with the intervention."""
        return predict(model, prompts, intervention=self, batch_size=batch_size, progress=progress, desc=self.method)

    def generate(self, model: Model, prompts: Sequence[Prompt], *, max_new_tokens: int = 8) -> list[str]:
        """Greedy continuation; the heads are replaced at the prompt's last token and at every new token.

        Example:
            >>> iv.generate(m, [taskvec.icl_prompt([], "Kenya")], max_new_tokens=3)   # doctest: +SKIP
            ['Nairobi\\n\\n']
        """
        return generate(model, prompts, intervention=self, max_new_tokens=max_new_tokens)

    # --- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (values, mask) and ``<path>.json``; returns the safetensors path.

        ``path`` is kept as given (``"run.v1"`` writes ``run.v1.safetensors``); a file of another
        kind there is never replaced; NaN or inf is refused.
        """
        if self.values.dim() != 3:
            raise TaskvecError("a per-row (REINFORCE batch) head intervention cannot be saved: save a fitted one")
        n_layers, n_heads, d_head = self.shape
        info = dict(method=self.method, model_name=self.model_name, shape=list(self.values.shape), n_layers=n_layers,
                    n_heads=n_heads, d_head=d_head, meta=self.meta)
        return save_artifact(path, {"values": self.values.float(), "mask": self.mask.to(torch.uint8)}, info,
                             f"{FORMAT}/1", "head intervention",
                             where={"values": "layer, head, d_head", "mask": "layer, head"})

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> "HeadIntervention":
        """Read what :meth:`save` wrote; with ``model``, refuse one of another shape.

        Every problem with the files (missing, corrupt, truncated, another kind of artefact, shapes
        that disagree with the JSON, NaN or inf) raises a :class:`~taskvec.TaskvecError` naming the file.
        """
        tensors, info = load_artifact(path, FORMAT, "head intervention", keys=("model_name",),
                                      tensors={"values": ("n_layers", "n_heads", "d_head"),
                                               "mask": ("n_layers", "n_heads")})
        with loading(path, "head intervention"):
            if "shape" in info and info["shape"] != list(tensors["values"].shape):
                raise TaskvecError(f"the JSON says shape={info['shape']} but the values are "
                                   f"{list(tensors['values'].shape)}: the two files do not belong together; save it "
                                   "again")
            out = cls(tensors["values"], tensors["mask"].bool(), str(info["model_name"]),
                      str(info.get("method", "custom")), info.get("meta", {}))
            if model is not None:
                out.check(model)
        return out


def replaced_logits(model: Model, batch: Batch, values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Next-token logits with per-row head replacements at each prompt's last token.

    The workhorse of MTV's and STV's REINFORCE: row ``i`` of the batch gets its own mask and
    values (e.g. 32 copies of one query with 32 sampled masks).

    Args:
        batch: ``n`` prompts.
        values: ``[n_layers, n_heads, d_head]`` (shared) or ``[n, n_layers, n_heads, d_head]``.
        masks: ``[n, n_layers, n_heads]`` bool.

    Returns:
        ``[n, vocab]`` float32 logits.

    Example:
        >>> b = m.encode([q] * 32)                                          # doctest: +SKIP
        >>> replaced_logits(m, b, means, policy.sample(32)).shape           # doctest: +SKIP
        torch.Size([32, 262144])
    """
    n = len(batch)
    if masks.shape != (n, model.n_layers, model.n_heads):
        raise TaskvecError(f"masks must be [{n}, {model.n_layers}, {model.n_heads}], got {tuple(masks.shape)}")
    if values.dim() == 3:
        values = values.unsqueeze(0)
    iv = HeadIntervention(values, masks, model.name, "reinforce")
    return batch_logits(model, batch, iv, at=(torch.arange(n), -1))

