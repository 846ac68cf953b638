"""MimIC (Jiang et al. 2025): learned per-head shifts with a query-dependent magnitude, trained
to mimic in-context learning (docs/design.md §5).

For every layer and head, after attention and before the output projection::

    out_h = Attn_h(q, K, V) + μ_h(q) · v_h,   μ = Z1 / (Z1 + Z2) = sigmoid(log Z1 − log Z2)
    log Z2 = logsumexp_j(q·k_j · scaling)     (the real keys, mask and soft-capping)
    log Z1 = w_h · q + b_h                    (stands in for the absent demonstrations' keys)

``v``, ``w`` (``[n_layers, n_heads, d_head]``) and ``b`` (``[n_layers, n_heads]``) are the only
trainable parameters (37k for Gemma-3-270m). It is an nnsight intervention: the query and logits
come from :func:`taskvec.sites.attention.attention_logits` (the model's own norms, rotary embedding,
mask), the shift is written into the output projection's input; gradients flow through the trace
into the parameters (the model's weights are frozen while training).

Training (:func:`taskvec.fit_mimic`, in :mod:`taskvec.methods.mimic`): the teacher is the frozen model on ``k`` demonstrations + query +
answer; the student is the shifted model on query + answer; loss =
``0.5 · CE(answer tokens) + 1.0 · MSE(per-layer hidden states on the query+answer tokens)``;
AdamW with a cosine schedule.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checks import count, finite, integer
from ..errors import TaskvecError
from ..inputs.prompts import Prompt
from ..models.model import Batch, Model
from ..sites.attention import attention_logits, check_supported
from ..sites.heads import merge_heads
from ..sites.residual import mlp_output
from .files import load_artifact, loading, save_artifact
from .run import batch_logits, generate, predict

FORMAT = "taskvec.MimIC"


class MimIC(torch.nn.Module):
    """Per-head learnable shifts with query-dependent magnitude, for one model shape.

    Args:
        n_layers: the model's decoder layers (use :meth:`for_model` to read the shape off a model).
        n_heads: attention heads per layer.
        d_head: width of one head.
        layers: decoder layers that get a shift (default: all).
        model_name: provenance, checked on load.

    Attributes:
        shift: ``v``, ``[len(layers), n_heads, d_head]``.
        gate_w: ``w``, ``[len(layers), n_heads, d_head]``.
        gate_b: ``b``, ``[len(layers), n_heads]``.

    Example:
        >>> mim = MimIC(18, 4, 256)
        >>> mim.n_parameters
        36936
    """

    #: the intervention protocol: it shifts every token, and each generated one too
    at = "every"
    every_step = True

    def __init__(self, n_layers: int, n_heads: int, d_head: int, *, layers: Sequence[int] | None = None,
                 model_name: str = "", meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        n_layers, n_heads, d_head = count("n_layers", n_layers), count("n_heads", n_heads), count("d_head", d_head)
        self.n_layers, self.n_heads, self.d_head = n_layers, n_heads, d_head
        self.layers = check_layers(layers, n_layers)
        n = len(self.layers)
        self.shift = torch.nn.Parameter(torch.zeros(n, n_heads, d_head))
        self.gate_w = torch.nn.Parameter(torch.zeros(n, n_heads, d_head))
        self.gate_b = torch.nn.Parameter(torch.zeros(n, n_heads))
        self.model_name = model_name
        self.meta = dict(meta or {})

    @classmethod
    def for_model(cls, model: Model, layers: Sequence[int] | None = None) -> "MimIC":
        """Zero-initialised MimIC for ``model`` (it leaves the model's outputs unchanged).

        Example:
            >>> MimIC.for_model(m).n_parameters     # doctest: +SKIP
            36936
        """
        check_supported(model)
        return cls(model.n_layers, model.n_heads, model.d_head, layers=layers, model_name=model.name)

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters())

    def __repr__(self) -> str:
        return (f"MimIC(model={self.model_name!r}, layers={len(self.layers)}/{self.n_layers}, "
                f"heads={self.n_heads}x{self.d_head}, parameters={self.n_parameters})")

    def _repr_html_(self) -> str:
        return (f"<b>MimIC</b> {self.model_name} &middot; {len(self.layers)}/{self.n_layers} layers &middot; "
                f"{self.n_heads} heads &times; {self.d_head} &middot; {self.n_parameters:,} parameters")

    def check(self, model: Model) -> None:
        """Raise unless ``model`` has this MimIC's layer, head and head-size counts."""
        mine, theirs = (self.n_layers, self.n_heads, self.d_head), (model.n_layers, model.n_heads, model.d_head)
        if mine != theirs:
            raise TaskvecError(
                f"this MimIC was built for (layers, heads, d_head) = {mine} ({self.model_name}), but {model.name} "
                f"has {theirs}: train one on this model"
            )
        self._check_finite()

    def _check_finite(self) -> None:
        """Raise, naming the layer and head, if a parameter holds NaN or inf."""
        for name, p in (("shift", self.shift), ("gate_w", self.gate_w), ("gate_b", self.gate_b)):
            for i, layer in enumerate(self.layers):
                finite(f"this MimIC's {name} at layer {layer}", p[i].detach(),
                       where="head, d_head" if p.dim() == 3 else "head",
                       fix="it would make every prediction meaningless; train it again (a lower learning rate "
                           "may help)")

    # --- the intervention -----------------------------------------------------------------------
    def magnitude(self, index: int, query: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``μ`` for the ``index``-th shifted layer, ``[batch, n_heads, q_len]``.

        Args:
            query: ``[batch, n_heads, q_len, d_head]`` (after norm and rotary embedding).
            scores: ``[batch, n_heads, q_len, kv_len]`` masked attention logits.
        """
        log_z2 = scores.float().logsumexp(-1)
        # the parameters stay where they were made (the CPU): each use meets its layer's device
        w, b = self.gate_w[index].to(query.device), self.gate_b[index].to(query.device)
        log_z1 = torch.einsum("bhqd,hd->bhq", query.float(), w) + b[None, :, None]
        mu = torch.sigmoid(log_z1 - log_z2)
        return torch.where(torch.isfinite(log_z2), mu, torch.zeros_like(mu))  # fully masked rows (padding)

    def apply(self, model: Model, rows: Any = None, pos: Any = None, *, hidden: list | None = None,
              site: str = "resid") -> None:
        """Inside a trace: shift every chosen layer's head outputs at every position.

        Args:
            rows: ignored (MimIC writes at every token; the runner passes ``None``).
            pos: ignored, likewise.
            hidden: if given (an ``nnsight.save([])`` list), one state per decoder layer is
                appended, in layer order: ``[batch, seq, d_model]``.
            site: which state ``hidden`` collects: ``"resid"`` (each layer's output) or ``"mlp"``
                (each layer's feed-forward output, what the reference aligns).
        """
        index = {layer: i for i, layer in enumerate(self.layers)}
        for layer in range(model.n_layers):
            if layer in index:
                i = index[layer]
                a = attention_logits(model, layer)
                mu = self.magnitude(i, a.query, a.scores)                       # [b, H, q]
                shift = mu.transpose(1, 2)[..., None] * self.shift[i].to(mu.device)  # [b, q, H, Dh]
                a.envoy.input = a.heads + merge_heads(shift).to(a.heads.dtype)
            if hidden is not None:
                hidden.append(mlp_output(model, layer) if site == "mlp" else model.residual(model.layers()[layer].output))
            elif layer >= self.layers[-1]:
                break

    check_compatible = check

    def logits(self, model: Model, batch: Batch) -> torch.Tensor:
        """Next-token logits ``[batch, vocab]`` of the shifted model."""
        self.check(model)
        return batch_logits(model, batch, self)

    def predict(self, model: Model, prompts: Sequence[Prompt], *, batch_size: int = 32, progress: bool = True) -> list[str]:
        """Greedy first token of each (zero-shot) prompt with the shifts.

        Example:
            >>> mim.predict(m, [taskvec.icl_prompt([], "Kenya")])     # doctest: +SKIP
            ['Nairobi']
        """
        return predict(model, prompts, intervention=self, batch_size=batch_size, progress=progress, desc="mimic")

    def generate(self, model: Model, prompts: Sequence[Prompt], *, max_new_tokens: int = 8) -> list[str]:
        """Greedy continuation with the shifts at every prompt and generated token (keys from the cache)."""
        return generate(model, prompts, intervention=self, max_new_tokens=max_new_tokens)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (v, w, b) and ``<path>.json``; returns the safetensors path.

        ``path`` is kept as given; a file of another kind there is never replaced; NaN or inf is refused.
        """
        info = dict(model_name=self.model_name, n_layers=self.n_layers, n_heads=self.n_heads, d_head=self.d_head,
                    layers=self.layers, n_parameters=self.n_parameters, meta=self.meta)
        self._check_finite()
        return save_artifact(path, {k: v.float() for k, v in self.state_dict().items()}, info, f"{FORMAT}/1",
                             "MimIC parameters")

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> "MimIC":
        """Read what :meth:`save` wrote; with ``model``, refuse one of another shape.

        Every problem with the files (missing, corrupt, truncated, another kind of artefact, shapes
        that disagree with the JSON, layers out of range, NaN or inf) raises a
        :class:`~taskvec.TaskvecError` naming the file.

        Example:
            >>> mim2 = MimIC.load("runs/capital-mimic", m)    # doctest: +SKIP
        """
        shifted = ("n_shifted_layers", "n_heads", "d_head")
        tensors, info = load_artifact(path, FORMAT, "MimIC parameters", keys=("n_layers", "n_heads", "d_head", "layers"),
                                      tensors={"shift": shifted, "gate_w": shifted, "gate_b": shifted[:2]})
        with loading(path, "MimIC parameters"):
            out = cls(info["n_layers"], info["n_heads"], info["d_head"], layers=info["layers"],
                      model_name=str(info.get("model_name", "")), meta=info.get("meta", {}))
            if len(out.layers) != tensors["shift"].shape[0] or len(info["layers"]) != len(out.layers):
                raise TaskvecError(f"the JSON lists layers {info['layers']} but the tensors hold "
                                   f"{tensors['shift'].shape[0]} shifted layers: the two files do not belong "
                                   "together; save it again")
            out.load_state_dict({k: tensors[k] for k in ("shift", "gate_w", "gate_b")})
            if model is not None:
                out.check(model)
        return out


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """MimIC's layers: ``None`` is every layer; else one or a list of whole numbers in ``-n_layers..n_layers-1``
    (negative counts from the end), returned 0-based and sorted. Nothing is wrapped or truncated.

    Example:
        >>> check_layers([-1, 0], 4)
        [0, 3]
        >>> check_layers([99], 4)
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: layers[0]=99 is out of range: pass a whole number in -4..3 (the model has 4 layers; ...
    """
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (str, bytes)):
        raise TaskvecError(f"layers={layers!r} is a string: pass a list of layer indices (or None for every layer)")
    one = isinstance(layers, numbers.Number) or getattr(layers, "ndim", None) == 0
    chosen = [layers] if one else list(layers)
    if not chosen:
        raise TaskvecError("MimIC needs at least one layer: pass layers=None for all")
    fix = f"the model has {n_layers} layers; negative ones count from the end"
    return sorted({integer(f"layers[{i}]", x, low=-n_layers, high=n_layers - 1, fix=fix) % n_layers
                   for i, x in enumerate(chosen)})
