"""Task vectors: extraction from ICL prompts and instructions, ensembles, save/load.

A :class:`TaskVector` is the residual stream at one token, per layer, averaged over many
prompts: ``[n_layers, d_model]``. For ICL it is read at the delimiter of the *last
demonstration* (the ``:`` of its ``A:``), for an instruction at its last token (docs/design.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checks import finite, integer
from ..errors import TaskvecError
from ..inputs.prompts import GENERIC, Template, instruction_prompt, sample_icl_prompts
from ..interventions.files import load_artifact, loading, save_artifact
from ..interventions.residual import ResidualPatch
from ..models.model import Model
from ..sites.collect import read_residuals

FORMAT = "taskvec.TaskVector"
SPECS = ("text-icl", "image-icl", "instruction", "ensemble", "custom")


@dataclass
class TaskVector:
    """A per-layer task vector and what it was made from.

    Attributes:
        vectors: ``[n_layers, d_model]`` float32.
        model_name: the model it was extracted from.
        spec: how the task was specified: ``text-icl``, ``image-icl``, ``instruction``, ``ensemble``.
        task: task name.
        n_prompts: how many prompts were averaged.
        meta: seeds, shots, template, ... (JSON-serialisable).
        rows: ``[n_prompts, n_layers, d_model]`` per-prompt vectors when extracted with
            ``keep=True`` (for t-SNE); not saved.

    Example:
        >>> v = TaskVector(torch.zeros(18, 640), "gemma-3-270m", "text-icl", "country-capital", 30)
        >>> v.n_layers, v.d_model
        (18, 640)
    """

    vectors: torch.Tensor
    model_name: str
    spec: str
    task: str
    n_prompts: int
    meta: dict[str, Any] = field(default_factory=dict)
    rows: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2:
            raise TaskvecError(f"a task vector is [n_layers, d_model]; got shape {tuple(self.vectors.shape)}")
        if self.spec not in SPECS:
            raise TaskvecError(f"spec {self.spec!r} is not one of {SPECS}")
        finite(f"task vector {self.task!r} ({self.spec}, {self.model_name})", self.vectors, where="layer, d_model")

    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def __repr__(self) -> str:
        return (f"TaskVector(task={self.task!r}, spec={self.spec!r}, model={self.model_name!r}, "
                f"[{self.n_layers} x {self.d_model}], n_prompts={self.n_prompts})")

    def _repr_html_(self) -> str:
        norms = self.vectors.norm(dim=-1)
        return (f"<b>TaskVector</b> {self.task} &middot; {self.spec} &middot; {self.model_name} &middot; "
                f"{self.n_layers} layers &times; {self.d_model} &middot; {self.n_prompts} prompts &middot; "
                f"norm {float(norms.min()):.1f}&ndash;{float(norms.max()):.1f}")

    def check_compatible(self, model: Model, *, allow_transfer: bool = False) -> None:
        """Raise unless this vector can be patched into ``model``.

        Same width and layer count are required; another model name (LLM→VLM transfer) needs
        ``allow_transfer=True``; NaN or inf is refused (checked again here: ``vectors`` can be
        changed in place after the vector is made).
        """
        finite(f"task vector {self.task!r} ({self.spec}, {self.model_name})", self.vectors, where="layer, d_model",
               fix="patching it would make every prediction meaningless; extract it again")
        if self.d_model != model.d_model or self.n_layers != model.n_layers:
            raise TaskvecError(
                f"task vector from {self.model_name} is [{self.n_layers} x {self.d_model}] but {model.name} has "
                f"{model.n_layers} layers of width {model.d_model}: extract the vector from this model (or one of "
                "the same shape)"
            )
        if self.model_name != model.name and not allow_transfer:
            raise TaskvecError(
                f"task vector comes from {self.model_name}, not {model.name}: pass allow_transfer=True to patch "
                "across models of the same shape (e.g. base LLM -> VLM)"
            )

    def patch(self, layers: int | Sequence[int], *, mode: str = "replace") -> ResidualPatch:
        """This vector as an intervention: its rows written at the query's delimiter at ``layers``.

        Example:
            >>> taskvec.predict(m, queries, intervention=v.patch(6))[:2]     # doctest: +SKIP
            ['Paris', 'Tokyo']
        """
        return ResidualPatch(self.vectors, [layers] if isinstance(layers, int) else layers, mode)

    def cosine(self, other: "TaskVector") -> torch.Tensor:
        """Per-layer cosine similarity with another vector of the same shape, ``[n_layers]``."""
        if other.vectors.shape != self.vectors.shape:
            raise TaskvecError(f"shapes differ: {tuple(self.vectors.shape)} vs {tuple(other.vectors.shape)}")
        return torch.nn.functional.cosine_similarity(self.vectors, other.vectors, dim=-1)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns the safetensors path.

        ``path`` is kept as given (``"vecs/cc.text"`` writes ``vecs/cc.text.safetensors``); the
        folder is created; a file of another kind there is never replaced; NaN or inf is refused.
        """
        info = dict(model_name=self.model_name, spec=self.spec, task=self.task, n_prompts=self.n_prompts,
                    n_layers=self.n_layers, d_model=self.d_model, meta=self.meta)
        return save_artifact(path, {"vectors": self.vectors}, info, f"{FORMAT}/1", "task vector",
                             where={"vectors": "layer, d_model"})

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None, *, allow_transfer: bool = False) -> "TaskVector":
        """Read a vector written by :meth:`save` (pass either file or the common stem).

        Every problem with the files (missing, corrupt, truncated, another kind of artefact, shapes
        that disagree with the JSON, NaN or inf) raises a :class:`~taskvec.TaskvecError` naming the
        file. With ``model``, a vector of another shape or (without ``allow_transfer``) another
        model is refused too.
        """
        tensors, info = load_artifact(path, FORMAT, "task vector", tensors={"vectors": ("n_layers", "d_model")},
                                      keys=("model_name", "spec", "task", "n_prompts"))
        with loading(path, "task vector"):
            out = cls(tensors["vectors"], str(info["model_name"]), info["spec"], str(info["task"]),
                      info["n_prompts"], info.get("meta", {}))
            if model is not None:
                out.check_compatible(model, allow_transfer=allow_transfer)
        return out


def extract_icl(
    model: Model,
    pairs: Sequence[tuple[Any, str]],
    *,
    task: str = "custom",
    n_shots: int = 5,
    seeds: Sequence[int] = (0,),
    queries: Sequence[tuple[Any, str]] | None = None,
    template: Template = GENERIC,
    batch_size: int = 16,
    progress: bool = True,
    keep: bool = False,
) -> TaskVector:
    """Task vector from few-shot prompts: for every query item (default: every pair) and seed, an
    ``n_shots`` prompt from the other pairs; residual at the last demonstration's delimiter; mean.

    ``x`` of a pair may be a PIL image (image ICL on a VLM): the spec is then ``image-icl``.

    Example:
        >>> v = extract_icl(m, task.pairs("val"), task="country-capital")   # doctest: +SKIP
        >>> v.vectors.shape                                                  # doctest: +SKIP
        torch.Size([18, 640])
    """
    pairs = list(pairs)
    if not pairs:
        raise TaskvecError("pairs=[] is empty: pass the task's (x, y) examples to build demonstrations from")
    if isinstance(seeds, (int, str)) or not list(seeds):
        raise TaskvecError(f"seeds={seeds!r}: pass a non-empty list of whole numbers, e.g. seeds=(0, 1, 2)")
    seeds = [integer(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    queries = list(pairs) if queries is None else list(queries)
    prompts = [p for s in seeds for p in sample_icl_prompts(pairs, queries, n_shots=n_shots, seed=s, template=template)]
    mean, rows = read_residuals(model, prompts, at="last_demo", batch_size=batch_size, progress=progress, keep=keep)
    spec = "image-icl" if any(p.images for p in prompts) else "text-icl"
    return TaskVector(mean, model.name, spec, task, len(prompts),
                      dict(n_shots=n_shots, seeds=list(seeds), template=template.name, n_pairs=len(pairs)), rows=rows)


def extract_instruction(model: Model, instruction: str, *, task: str = "custom") -> TaskVector:
    """Instruction-based task vector: the instruction alone, last token, every layer.

    Example:
        >>> extract_instruction(m, "The capital city of the country:").spec   # doctest: +SKIP
        'instruction'
    """
    mean, _ = read_residuals(model, [instruction_prompt(instruction)], at="last", progress=False)
    return TaskVector(mean, model.name, "instruction", task, 1, dict(instruction=instruction))


def ensemble(*vectors: TaskVector, weights: Sequence[float] | None = None,
             model_name: str | None = None) -> TaskVector:
    """Mean (or weighted mean) of task vectors of one shape, e.g. ``(v_icl + v_inst) / 2``.

    Args:
        weights: one finite number per vector (normalised to sum 1; the sum must not be 0).
        model_name: the model the mix is for; needed only when the vectors come from different
            models (e.g. a VLM's and its base LLM's), so the mix never silently takes one's name.

    Example:
        >>> ensemble(v_icl, v_inst).spec     # doctest: +SKIP
        'ensemble'
    """
    if len(vectors) < 2:
        raise TaskvecError("ensemble() needs at least two task vectors")
    shape = vectors[0].vectors.shape
    if any(v.vectors.shape != shape for v in vectors):
        raise TaskvecError("ensemble() needs vectors of one shape: " + ", ".join(str(tuple(v.vectors.shape)) for v in vectors))
    models = list(dict.fromkeys(v.model_name for v in vectors))
    if model_name is None and len(models) > 1:
        raise TaskvecError(f"ensemble() of vectors from different models {models}: pass model_name= the model the "
                           "mix is for (patching it into another model then needs allow_transfer=True)")
    try:
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(vectors), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TaskvecError(f"weights={weights!r}: pass one number per vector ({len(vectors)})") from None
    if w.dim() != 1 or w.shape[0] != len(vectors):
        raise TaskvecError(f"weights={list(weights or [])!r}: pass one number per vector ({len(vectors)})")
    finite(f"weights={w.tolist()!r}", w, where="vector", fix="pass finite numbers")
    if float(w.sum()) == 0:
        raise TaskvecError(f"weights={w.tolist()!r} sum to 0: pass weights with a non-zero sum")
    stacked = torch.stack([v.vectors.float() for v in vectors])
    mean = (stacked * (w / w.sum()).float()[:, None, None]).sum(0)
    tasks = {v.task for v in vectors}
    meta: dict[str, Any] = dict(parts=[v.spec for v in vectors], weights=w.tolist())
    if len(models) > 1:
        meta["models"] = [v.model_name for v in vectors]
    return TaskVector(mean, model_name if model_name is not None else models[0], "ensemble",
                      tasks.pop() if len(tasks) == 1 else "mixed", sum(v.n_prompts for v in vectors), meta)
