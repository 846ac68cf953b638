"""The cross-modal paper's evaluation: baselines, validation layer search, test accuracy.

Terms (paper §3): *spec* is how the task is given (text or image examples), *query* the
modality of the question. ``Base`` puts the examples in the query's context (``xBase`` when their
modality differs from the query's), ``Patch``/``xPatch`` patches their task vector instead;
``No Context`` is the query alone and ``Random`` the majority label among the examples.
Every unit of work can be stored in a folder so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..checks import count, integer
from ..errors import TaskvecError
from ..inputs.metric import is_correct, majority, seed_spread, wilson_interval
from ..inputs.prompts import GENERIC, Prompt, Template, sample_icl_prompts, zero_shot
from ..interventions.run import predict
from ..methods.patching import best_layer, layer_sweep, patch_predict
from ..methods.vectors import TaskVector, extract_icl
from ..models.model import Model
from .store import Store, digest, safe_name

MODALITIES = ("text", "image")


@dataclass(frozen=True)
class Setting:
    """Knobs shared by every number of one experiment (all randomness comes from ``seed``).

    Attributes:
        n_shots: demonstrations per prompt (paper: 5).
        seeds: seeds of the ICL prompts of a task vector.
        seed: seed of the demonstrations drawn for Base/xBase/Random (pooled runs).
        per_seed: ``True`` (the reference's protocol): one vector per seed, each evaluated, the
            baselines drawn per seed, accuracies averaged over seeds and reported with their
            spread; the layer is chosen on the validation accuracy averaged over seeds, then
            tasks. ``False``: the seeds' prompts pooled into one vector, baselines drawn once with
            ``seed`` (less noise, no spread; docs/deviations.md).
        n_val, n_test: cap on validation / test queries per task (None: the whole split; a cap is a
            whole number >= 1).
        batch_size: prompts per forward.
        case_sensitive: the metric's case rule (paper: case-sensitive, except Fig. 8).
        template: prompt template.
        paired: ``True``: text test queries only on the items that have an emoji, the items the
            image test queries cover, so a table that sets text beside image queries compares the
            same items (validation and demonstrations are unchanged). ``False``: every test item.
    """

    n_shots: int = 5
    seeds: tuple[int, ...] = (0,)
    seed: int = 0
    n_val: int | None = None
    n_test: int | None = None
    batch_size: int = 32
    case_sensitive: bool = True
    template: Template = GENERIC
    per_seed: bool = False
    paired: bool = False

    def __post_init__(self) -> None:
        # checked here, before any work: 0 is not "all" (None is), and a seed list becomes a tuple
        count("n_shots", self.n_shots)
        seeds = (self.seeds,) if not isinstance(self.seeds, (tuple, list)) else tuple(self.seeds)
        if not seeds:
            raise TaskvecError("seeds=(): pass at least one seed, e.g. seeds=(0,)")
        object.__setattr__(self, "seeds", tuple(integer("seeds", x) for x in seeds))
        integer("seed", self.seed)
        for name in ("n_val", "n_test"):
            if getattr(self, name) is not None:
                count(name, getattr(self, name), fix="None means the whole split")
        count("batch_size", self.batch_size)
        if not isinstance(self.case_sensitive, bool):
            raise TaskvecError(f"case_sensitive={self.case_sensitive!r}: pass True or False")
        for name in ("per_seed", "paired"):
            if not isinstance(getattr(self, name), bool):
                raise TaskvecError(f"{name}={getattr(self, name)!r}: pass True or False")
        if not isinstance(self.template, Template):
            raise TaskvecError(f"template={self.template!r}: pass a taskvec Template (e.g. taskvec.GENERIC)")

    def key(self) -> str:
        """A digest of every field (the whole template included): result stores are keyed by it.
        (``per_seed=False`` and ``paired=False`` are left out, so results stored before those
        switches existed are still found.)"""
        fields = asdict(self)
        for name in ("per_seed", "paired"):
            if not fields[name]:
                fields.pop(name)
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]

    def runs(self) -> list[tuple[Any, "Setting"]]:
        """``[(seed label, setting of that run)]``: one run per seed with ``per_seed``, else one
        pooled run (label ``"pooled"``)."""
        if not self.per_seed:
            return [("pooled", self)]
        return [(sd, replace(self, seeds=(sd,), seed=sd, per_seed=False)) for sd in self.seeds]


def task_key(task: Any) -> str:
    """The task as a file-name-safe key: its name plus a digest of its content (instruction and
    every item, in order), so results stored for one version of a task file are never reused for
    an edited one.

    Example:
        >>> import taskvec
        >>> task_key(taskvec.get_task("antonym")).startswith("antonym-")
        True
    """
    items = [[it.input, it.output, it.split, it.emoji] for it in task.items]
    return safe_name(task.name, digest({"instruction": task.instruction, "items": items}))


def pairs(task: Any, split: str, modality: str, limit: int | None = None, *,
          emoji_only: bool = False) -> list[tuple[Any, str]]:
    """``(x, y)`` pairs of a task split in one modality (images rendered from the item's emoji);
    the first ``limit`` (a whole number >= 1), or all with ``None``; ``emoji_only`` keeps text
    items that have an emoji."""
    if modality not in MODALITIES:
        raise TaskvecError(f"modality {modality!r}: use 'text' or 'image'")
    if limit is not None:
        count("limit", limit, fix="None means the whole split")
    out = task.pairs(split, modality=modality, emoji_only=emoji_only)
    if not out:
        raise TaskvecError(f"task {task.name!r} has no {modality} items in split {split!r}")
    return out if limit is None else out[:limit]


def queries(task: Any, split: str, modality: str, s: Setting) -> list[tuple[Any, str]]:
    """The query pairs of one split under ``s``: capped by ``n_val``/``n_test``; text test queries
    on the image items only with ``s.paired``."""
    limit = s.n_test if split == "test" else s.n_val
    return pairs(task, split, modality, limit, emoji_only=s.paired and split == "test" and modality == "text")


def with_demos(demo_pairs: Sequence[tuple[Any, str]], query_pairs: Sequence[tuple[Any, str]], s: Setting) -> list[Prompt]:
    """Few-shot prompts: demonstrations (any modality) drawn with ``s.seed``, then the query.

    Demonstrations and queries may differ in modality (xBase). Draw them from another split than
    the queries (the paper: validation demonstrations, test queries); within one split a query's
    own item is never one of its demonstrations (images compare by their pixels, since each
    ``pairs()`` call renders them anew).
    """
    return sample_icl_prompts(demo_pairs, query_pairs, n_shots=s.n_shots, seed=s.seed, template=s.template)


def score(prompts: Sequence[Prompt], predictions: Sequence[str], s: Setting) -> list[bool]:
    return [is_correct(p, q.label or "", case_sensitive=s.case_sensitive) for p, q in zip(predictions, prompts)]


def task_vector(model: Model, task: Any, spec: str, s: Setting, *, split: str = "val") -> TaskVector:
    """The task's vector from ``spec`` examples of ``split`` (paper: the validation items)."""
    p = pairs(task, split, spec, s.n_val)
    return extract_icl(model, p, task=task.name, n_shots=s.n_shots, seeds=s.seeds, template=s.template,
                       batch_size=s.batch_size, progress=False)


def sweep_task(
    model: Model,
    vector: TaskVector,
    task: Any,
    query: str,
    s: Setting,
    *,
    split: str = "val",
    allow_transfer: bool = False,
) -> pd.DataFrame:
    """Patch the vector at every layer into zero-shot ``query``-modality queries of ``split``."""
    qs = zero_shot(queries(task, split, query, s), s.template)
    df = layer_sweep(model, vector, qs, batch_size=s.batch_size, case_sensitive=s.case_sensitive,
                     allow_transfer=allow_transfer, progress=False)
    return df.assign(task=task.name)


def baselines(model: Model, task: Any, spec: str, query: str, s: Setting, *, split: str = "test") -> pd.DataFrame:
    """No Context, Random (majority) and Base/xBase accuracy on ``split`` queries of one task.

    Returns:
        one row per method: ``task, method, spec, query, accuracy, n``.
    """
    q_pairs = queries(task, split, query, s)
    demo_pairs = pairs(task, "val", spec)
    icl = with_demos(demo_pairs, q_pairs, s)
    alone = zero_shot(q_pairs, s.template)
    base_name = "Base" if spec == query else "xBase"
    rows = []
    preds = predict(model, alone, batch_size=s.batch_size, progress=False)
    rows.append(("No Context", "-", score(alone, preds, s)))
    maj = [majority(p.demo_labels) for p in icl]
    rows.append(("Random", spec, score(icl, maj, s)))
    preds = predict(model, icl, batch_size=s.batch_size, progress=False)
    rows.append((base_name, spec, score(icl, preds, s)))
    return pd.DataFrame([dict(task=task.name, method=m, spec=sp, query=query, accuracy=sum(c) / len(c), n=len(c),
                              correct=sum(c)) for m, sp, c in rows])


def transfer_experiment(
    model: Model,
    tasks: Sequence[Any],
    combos: Sequence[tuple[str, str]],
    s: Setting,
    *,
    store: str | Path | None = None,
    source: Model | None = None,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Task-vector patching for several spec→query combinations, with the paper's protocol.

    For each combination: vectors from ``spec`` examples of the validation split (from ``source``
    if given: LLM→VLM transfer), a validation sweep over all layers, one layer chosen by the mean
    validation accuracy over tasks, test accuracy at that layer; plus No Context / Random /
    Base / xBase on the test split.

    Args:
        combos: e.g. ``[("text", "image"), ("image", "image")]``.
        store: folder for resumable partial results (one CSV per task and unit), in a subfolder
            named for the model's weights (:attr:`taskvec.Model.key`) and the setting
            (:meth:`Setting.key`); unit names carry the task's name and a digest of its content
            (:func:`task_key`), so an edited task file is recomputed, not read back.
        source: model to extract vectors from (default: ``model``).

    Returns:
        ``{"summary": task x method accuracies, "sweep": validation accuracy per layer,
        "layers": chosen layer per combination}``.
    """
    from tqdm.auto import tqdm

    if not tasks:
        raise TaskvecError("no tasks given")
    combos = [tuple(c) for c in combos]
    for spec, query in combos:
        if spec not in MODALITIES or query not in MODALITIES:
            raise TaskvecError(f"combo {(spec, query)!r}: spec and query are each 'text' or 'image'")
    src = source or model
    # every unit name is built (file-name safe, keyed by the task's content) before any work
    prefix = () if source is None else ("from", source.key)
    keys = {id(task): task_key(task) for task in tasks}
    st = Store(None if store is None else Path(store) / safe_name(model.key, s.key()))
    runs = s.runs()
    sweeps, summary, chosen = [], [], []
    bar = tqdm(total=len(combos) * len(tasks) * len(runs), desc="transfer", disable=not progress)
    vectors: dict[tuple, TaskVector] = {}

    def vector(task: Any, spec: str, seed: Any, rs: Setting) -> TaskVector:
        key = (keys[id(task)], spec, seed)
        if key not in vectors:
            vectors[key] = task_vector(src, task, spec, rs)
        return vectors[key]

    for spec, query in combos:
        per_combo = []
        for task in tasks:
            for seed, rs in runs:
                tag = () if seed == "pooled" else (f"seed{seed}",)

                def run_sweep(task: Any = task, seed: Any = seed, rs: Setting = rs) -> pd.DataFrame:
                    return sweep_task(model, vector(task, spec, seed, rs), task, query, rs,
                                      allow_transfer=source is not None)

                unit = safe_name("sweep", *prefix, keys[id(task)], spec, "to", query, *tag)
                per_combo.append(st.get_or_run(unit, run_sweep).assign(spec=spec, query=query, seed=str(seed)))
                bar.update()
        combo_df = pd.concat(per_combo, ignore_index=True)
        layer = best_layer(combo_df)  # per task and layer, pooled over seeds (equal sizes: their mean), then tasks
        chosen.append(dict(spec=spec, query=query, layer=layer))
        sweeps.append(combo_df)
        name = ("Patch" if spec == query else "xPatch")
        for task in tasks:
            for seed, rs in runs:
                tag = () if seed == "pooled" else (f"seed{seed}",)

                def run_test(task: Any = task, seed: Any = seed, rs: Setting = rs, layer: int = layer) -> pd.DataFrame:
                    qs = zero_shot(queries(task, "test", query, rs), rs.template)
                    preds = patch_predict(model, vector(task, spec, seed, rs), qs, layer, batch_size=rs.batch_size,
                                          progress=False, allow_transfer=source is not None)
                    c = score(qs, preds, rs)
                    return pd.DataFrame([dict(task=task.name, method=name, spec=spec, query=query,
                                              accuracy=sum(c) / len(c), n=len(c), correct=sum(c), layer=layer)])

                unit = safe_name("test", *prefix, keys[id(task)], spec, "to", query, f"L{layer}", *tag)
                summary.append(st.get_or_run(unit, run_test).assign(seed=str(seed)))
                if source is None:
                    unit = safe_name("baselines", keys[id(task)], spec, "to", query, *tag)
                    summary.append(st.get_or_run(unit, lambda task=task, rs=rs: baselines(model, task, spec, query, rs))
                                   .assign(seed=str(seed)))
    bar.close()
    per_run = pd.concat(summary, ignore_index=True)
    per_run = per_run.drop_duplicates(subset=["task", "method", "spec", "query", "seed"], keep="first")
    return {"summary": summarise(per_run), "per_seed": per_run, "sweep": pd.concat(sweeps, ignore_index=True),
            "layers": pd.DataFrame(chosen)}


def transfer_plan(model: Model, tasks: Sequence[Any], combos: Sequence[tuple[str, str]], s: Setting, *,
                  source: Model | None = None) -> pd.DataFrame:
    """The forward passes :func:`transfer_experiment` runs from scratch, counted by kind, so a
    script can say how long it will take before it starts (nothing is run or rendered).

    Returns:
        one row per ``(model, prompt)`` kind: ``model`` (``"target"`` or ``"source"``), ``prompt``
        (``"icl-text"``/``"icl-image"``: a few-shot prompt with text or image demonstrations;
        ``"query-text"``/``"query-image"``: a zero-shot query) and ``forwards``.

    Example:
        >>> import taskvec
        >>> m = taskvec.load("tiny-llama")                                   # doctest: +SKIP
        >>> transfer_plan(m, [taskvec.get_task("antonym")], [("text", "text")],
        ...               Setting(n_val=8, n_test=20)).forwards.sum()        # doctest: +SKIP
        104
    """
    counts: dict[tuple[str, str], int] = {}

    def add(who: str, kind: str, n: int) -> None:
        counts[(who, kind)] = counts.get((who, kind), 0) + n

    def size(task: Any, split: str, modality: str, limit: int | None, emoji_only: bool = False) -> int:
        n = len(task.select(split, modality, emoji_only=emoji_only))
        return n if limit is None else min(n, limit)

    runs = s.runs()
    src = "target" if source is None else "source"
    for spec in dict.fromkeys(spec for spec, _ in combos):  # vectors are extracted once per spec
        for task in tasks:
            for _, rs in runs:
                add(src, f"icl-{spec}", size(task, "val", spec, rs.n_val) * len(rs.seeds))
    for spec, query in combos:
        for task in tasks:
            for _, rs in runs:
                n_test = size(task, "test", query, rs.n_test, rs.paired and query == "text")
                # the sweep: one pass for the cached prefix, then one per layer
                add("target", f"query-{query}", (model.n_layers + 1) * size(task, "val", query, rs.n_val) + n_test)
                if source is None:  # No Context, then Base/xBase (demonstrations of the spec modality)
                    add("target", f"query-{query}", n_test)
                    add("target", f"icl-{spec}", n_test)
    return pd.DataFrame([dict(model=who, prompt=kind, forwards=n) for (who, kind), n in counts.items()])


def summarise(per_run: pd.DataFrame, keys: Sequence[str] = ("task", "method", "spec", "query")) -> pd.DataFrame:
    """One row per ``keys`` (default: task, method, spec, query): the accuracy averaged over seeds,
    with ``n`` (test queries per seed), ``n_seeds``, the per-seed standard deviation ``seed_sd`` and
    its 95% t-interval half-width ``seed_ci``, and a 95% Wilson interval ``ci_low``-``ci_high`` over
    every query of every seed.

    Rows stored before the correct counts were recorded get them back from ``accuracy × n``.
    """
    df = per_run.copy()
    if "correct" not in df.columns:
        df["correct"] = float("nan")
    df["correct"] = df["correct"].fillna((df["accuracy"] * df["n"]).round()).astype(int)
    rows = []
    keys = list(keys)
    for key, g in df.groupby(keys, sort=False):
        mean, sd, half = seed_spread(g["accuracy"].tolist())
        low, high = wilson_interval(int(g["correct"].sum()), int(g["n"].sum()))
        row = dict(zip(keys, key), accuracy=mean, n=int(g["n"].iloc[0]), n_seeds=len(g), seed_sd=sd, seed_ci=half,
                   ci_low=low, ci_high=high)
        if "layer" in g.columns and g["layer"].notna().any():
            row["layer"] = g["layer"].dropna().iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def wide_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Paper-style table: one row per (spec, method, query), one column per task, plus Avg."""
    label = summary.apply(lambda r: f"{r['spec']} ICL {r['method']} ({r['query']} query)" if r["spec"] != "-"
                          else f"No Context ({r['query']} query)", axis=1)
    wide = summary.assign(setting=label).pivot_table(index="setting", columns="task", values="accuracy", sort=False)
    wide["Avg."] = wide.mean(axis=1)
    return wide
