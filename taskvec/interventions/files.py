"""One file format for every artefact: ``<name>.safetensors`` (tensors) beside ``<name>.json``
(a ``format`` tag and what the tensors mean), written atomically.

``save("vecs/cc.text")`` writes ``vecs/cc.text.safetensors`` and ``vecs/cc.text.json``: a
name's dots are kept (only a trailing ``.safetensors`` or ``.json`` is taken as the suffix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import TaskvecError

SUFFIXES = (".safetensors", ".json")


def stem(path: str | Path) -> Path:
    """The common name of an artefact's two files.

    Example:
        >>> str(stem("vecs/cc.text.safetensors")), str(stem("vecs/cc.text"))
        ('vecs/cc.text', 'vecs/cc.text')
    """
    path = Path(path)
    return path.with_suffix("") if path.suffix in SUFFIXES else path


def paths(path: str | Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)``."""
    s = stem(path)
    return s.with_name(s.name + ".safetensors"), s.with_name(s.name + ".json")


def _replace_atomically(target: Path, write: Any) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any], fmt: str) -> Path:
    """Write the tensors and ``info`` (plus ``format=fmt``); returns the safetensors path."""
    from safetensors.torch import save_file

    st, js = paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    _replace_atomically(st, lambda tmp: save_file(tensors, str(tmp)))
    text = json.dumps({"format": fmt, **info}, indent=2)
    _replace_atomically(js, lambda tmp: tmp.write_text(text))
    return st


def load_artifact(path: str | Path, fmt: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_artifact` wrote, checking both files exist and the format tag.

    Args:
        fmt: the expected tag's kind, e.g. ``"taskvec.TaskVector"`` (any version ``/N``).
        what: how to name the artefact in errors (``"task vector"``).
    """
    from safetensors.torch import load_file

    st, js = paths(path)
    for f in (st, js):
        if not f.exists():
            raise TaskvecError(f"cannot load the {what}: {f} is missing (save() writes both .safetensors and .json)")
    info = json.loads(js.read_text())
    tag = str(info.get("format", ""))
    if tag.split("/")[0] != fmt:
        raise TaskvecError(f"{js} holds {tag or 'no taskvec format tag'}, not a {what} ({fmt}): load it with the "
                           "class that saved it")
    return load_file(str(st)), info
