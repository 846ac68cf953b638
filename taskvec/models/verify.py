"""Is a cached model folder what was built? The checks ``taskvec.load`` runs on the embedded
models' cache folders (rule: a damaged cache is rebuilt or refused, never loaded broken): a tokenizer
that round-trips a known sentence, the files against the folder's manifest, and finite weights in a
folder built before manifests existed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .. import cache
from ..errors import TaskvecError

if TYPE_CHECKING:
    from .loading import Embedded


TOKENIZER_PROBE = "The capital of France is Paris."


def tokenizer_problem(tokenizer: Any) -> str | None:
    """Why ``tokenizer`` cannot be the one a model was trained with (``None``: it looks sound).

    It must encode :data:`TOKENIZER_PROBE` into at least two distinct ids, none of them the unknown
    token, that decode back to text containing the probe's words. A tokenizer whose vocabulary file
    is missing (transformers then builds one of a handful of special tokens) fails this.
    """
    try:
        ids = list(tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
        text = tokenizer.decode(ids)
    except Exception as err:  # noqa: BLE001 - any failure to encode is the finding
        return f"it cannot encode text ({type(err).__name__}: {err})"
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(set(ids)) < 2 or (unk is not None and unk in ids) or not all(w in text for w in ("capital", "France", "Paris")):
        return f"it encodes {TOKENIZER_PROBE!r} as {ids[:12]} (decoded: {text!r}) and has {len(tokenizer)} tokens"
    return None


def _cache_problems(folder: Path, *, tokenizer: bool = True) -> list[str]:
    """:func:`taskvec.cache.check_folder`, and for a folder written before manifests existed, a
    check of what can be checked without one (config, tokenizer, safetensors headers and sizes,
    finite weights) after which the folder is adopted (its manifest written)."""
    problems = cache.check_folder(folder)
    if problems != ["no manifest"]:
        return problems
    problems = []
    try:
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        problems.append(f"config.json is missing or not JSON ({type(err).__name__})")
    if tokenizer and not (folder / "tokenizer.json").is_file():
        problems.append("tokenizer.json is missing")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        problems.append("it has no .safetensors weights")
    if not problems:
        problems = _weights_problems(weights)
    if not problems and tokenizer:
        from transformers import AutoTokenizer

        why = tokenizer_problem(AutoTokenizer.from_pretrained(str(folder)))
        if why:
            problems.append(f"its tokenizer is broken: {why}")
    if not problems:
        try:
            cache.write_manifest(folder)
        except OSError:  # read-only cache: checked this way again next time
            pass
    return problems


def _weights_problems(files: list[Path]) -> list[str]:
    """Each safetensors file's header parses, its size is what the header says, and every tensor is finite."""
    from safetensors import safe_open

    for f in files:
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if f.stat().st_size != 8 + n + end:
                return [f"{f.name} has {f.stat().st_size} bytes where its header says {8 + n + end}"]
            with safe_open(str(f), "pt") as st:
                for key in st.keys():
                    t = st.get_tensor(key)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return [f"{f.name}: tensor {key} holds NaN or inf"]
        except Exception as err:  # noqa: BLE001 - any failure to read is damage
            return [f"{f.name} cannot be read ({type(err).__name__}: {str(err)[:80]})"]
    return []


def _ready(target: Path, spec: Embedded, build: Callable[[Path], Any], *, tokenizer: bool = True) -> Path:
    """``target`` once it checks out against its manifest; built (or rebuilt when damaged) by
    ``build(target)``, which writes it atomically (through :func:`taskvec.cache.building`).
    Temporary folders left by killed builds are removed first."""
    cache.clean_stale(target.parent)
    if target.is_dir():
        problems = _cache_problems(target, tokenizer=tokenizer)
        if not problems:
            return target
        damage = "; ".join(problems)
        try:
            spec.locate()  # before removing anything: can it be rebuilt?
        except TaskvecError as err:
            raise TaskvecError(
                f"the cached {spec.name} in {target} is damaged ({damage}) and cannot be rebuilt here: {err}. "
                f"Delete the folder {target}, fix that, and load again"
            ) from err
        print(f"taskvec: the cached {spec.name} in {target} is damaged ({damage}); rebuilding it", file=sys.stderr, flush=True)
        try:
            shutil.rmtree(target)
        except OSError as err:
            raise TaskvecError(
                f"the cached {spec.name} in {target} is damaged ({damage}) and taskvec cannot remove it "
                f"({err.strerror or err}): delete the folder {target} yourself, or set {cache.ENV} to a writable "
                "folder, then load again"
            ) from err
    build(target)
    return target
