"""One file format for every artefact: ``<name>.safetensors`` (tensors) beside ``<name>.json``
(a ``format`` tag, what the tensors mean, and the safetensors file's sha256), written atomically.

``save("vecs/cc.text")`` writes ``vecs/cc.text.safetensors`` and ``vecs/cc.text.json``: a
name's dots are kept (only a trailing ``.safetensors`` or ``.json`` is taken as the suffix).

Saving checks the target first (:func:`check_target`: the folder can be made and written, and no
other kind of file is replaced), refuses NaN or inf, and replaces each file in one rename.
Loading checks everything a file can get wrong and raises a :class:`~taskvec.TaskvecError` naming
the file: missing, not JSON, another kind of artefact or a newer format, missing facts, a
safetensors file that is corrupt, truncated or does not match its JSON (sha256, tensor names and
shapes), NaN or inf. A safetensors file is never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..checks import finite
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


def _kind(fmt: str) -> str:
    """``"taskvec.TaskVector/1"`` -> ``"taskvec.TaskVector"``."""
    return fmt.split("/")[0]


def _read_info(js: Path) -> dict[str, Any] | None:
    """The JSON object in ``js``, or ``None`` if it is not one."""
    try:
        info = json.loads(js.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def _blocking_file(folder: Path) -> Path | None:
    """The first component of ``folder`` (from the root) that exists but is not a folder."""
    for p in [*reversed(folder.parents), folder]:
        if p.exists() and not p.is_dir():
            return p
    return None


def check_target(path: str | Path, fmt: str, what: str) -> tuple[Path, Path]:
    """Check, before any work, that a ``fmt`` artefact can be saved at ``path``; returns its two paths.

    The folder is created if missing; a path component that is a file, a folder that cannot be
    written, or an existing file of another kind at either path (another artefact, model
    weights, any JSON) is refused. An artefact of the same kind is replaced (saving again).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     check_target(Path(tmp) / "vecs" / "cc.text", "taskvec.TaskVector/1", "task vector")[0].name
        'cc.text.safetensors'
    """
    st, js = paths(path)
    folder = st.parent
    blocker = _blocking_file(folder)
    if blocker is not None:
        raise TaskvecError(f"cannot save the {what} to {st}: {blocker} is a file, not a folder: choose another path "
                           "(or move that file)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TaskvecError(f"cannot save the {what} to {st}: cannot create the folder {folder} "
                           f"({e.strerror or e}): choose a folder you can write") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TaskvecError(f"cannot save the {what} to {st}: the folder {folder} is not writable (read-only or no "
                           "permission): choose a folder you can write")
    for f in (st, js):
        if f.exists() and not f.is_file():
            raise TaskvecError(f"cannot save the {what} to {st}: {f} exists and is not a file: choose another name")
    if js.exists():
        info = _read_info(js)
        tag = str(info.get("format", "")) if info else ""
        if _kind(tag) != _kind(fmt):
            held = f"a {_kind(tag)}" if tag.startswith("taskvec.") else "a file that is not a taskvec artefact"
            raise TaskvecError(f"cannot save the {what} to {st}: {js} already holds {held}, and saving would replace "
                               "it: choose another name, or delete it first")
    elif st.exists():
        raise TaskvecError(f"cannot save the {what} to {st}: {st} already exists without a taskvec .json beside it "
                           "(e.g. model weights), and saving would replace it: choose another name, or delete it first")
    return st, js


def _write(target: Path, data: bytes, tmp: Path, what: str) -> None:
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TaskvecError(f"cannot write the {what} to {target}: {e.strerror or e}: choose a folder you can write "
                           "(with free space)") from None


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any], fmt: str,
                  what: str = "", *, where: Mapping[str, str] | None = None) -> Path:
    """Write the tensors and ``info`` (plus ``format=fmt`` and the tensors' ``sha256``); returns the
    safetensors path.

    Both files are written to temporary names first, then renamed into place; nothing is left
    behind on failure.

    Args:
        fmt: the tag, e.g. ``"taskvec.TaskVector/1"``.
        what: how to name the artefact in errors (default: the tag's class name).
        where: per tensor, its dimensions' names (``"layer, d_model"``), for the NaN message.
    """
    from safetensors.torch import save

    what = what or _kind(fmt).split(".")[-1]
    st, js = check_target(path, fmt, what)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, t in tensors.items():
        finite(f"the {what}'s {name!r}", t, where=(where or {}).get(name, ""),
               fix=f"not saved to {st}; rebuild the {what} from finite values")
    data = save(tensors, metadata={"format": fmt})
    text = json.dumps({"format": fmt, **info, "sha256": hashlib.sha256(data).hexdigest()}, indent=2)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmps = [f.with_name(f".{f.name}.{token}.tmp") for f in (st, js)]
    try:
        _write(st, data, tmps[0], what)
        _write(js, text.encode("utf-8"), tmps[1], what)
        for tmp, target in zip(tmps, (st, js)):
            try:
                os.replace(tmp, target)
            except OSError as e:
                raise TaskvecError(f"cannot write the {what} to {target}: {e.strerror or e}: choose a folder you can "
                                   "write") from None
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return st


def _corrupt(what: str, f: Path, problem: str) -> TaskvecError:
    return TaskvecError(f"cannot load the {what}: {f} {problem}: the file is corrupt, truncated or was changed "
                        f"after saving; save the {what} again (or restore both files from a copy)")


def load_artifact(
    path: str | Path,
    fmt: str,
    what: str,
    *,
    tensors: Mapping[str, Sequence[str]] | None = None,
    keys: Sequence[str] = (),
    version: int = 1,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_artifact` wrote, checking everything on the way.

    Args:
        fmt: the expected tag's kind, e.g. ``"taskvec.TaskVector"`` (versions ``/1`` to ``/version``).
        what: how to name the artefact in errors (``"task vector"``).
        tensors: the tensors it must hold, each with its dimensions' names, e.g.
            ``{"vectors": ("n_layers", "d_model")}``. A dimension named like a key of the JSON
            must have that size, and one name has one size across tensors.
        keys: facts the JSON must hold (e.g. ``("model_name",)``).

    Returns:
        ``(tensors, info)``; every floating tensor is finite.

    Raises:
        TaskvecError: naming the file, what is wrong with it and what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    st, js = paths(path)
    if not st.exists() and not js.exists():
        raise TaskvecError(f"cannot load the {what}: {st} and {js} are both missing: check the path (save() writes "
                           "both files)")
    for f in (st, js):
        if not f.is_file():
            raise TaskvecError(f"cannot load the {what}: {f} is missing (save() writes both .safetensors and .json)")
    try:
        info = json.loads(js.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(what, js, f"is not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise TaskvecError(f"cannot load the {what}: {js} holds a JSON {type(info).__name__}, not a taskvec "
                           f"artefact's description: pass the .json that save() wrote beside the .safetensors")
    tag = info.get("format")
    kind, _, number = str(tag).partition("/") if isinstance(tag, str) else ("", "", "")
    if kind != fmt:
        held = f"a {kind}" if kind.startswith("taskvec.") else "no taskvec format tag"
        how = f": load it with taskvec.{kind.split('.')[-1]}.load" if kind.startswith("taskvec.") else ""
        raise TaskvecError(f"cannot load the {what}: {js} holds {held}, not a {what} ({fmt}){how}")
    if not number.isdigit() or not 1 <= int(number) <= version:
        raise TaskvecError(f"cannot load the {what}: {js} is in format {tag}, but this taskvec reads {fmt}/1 to "
                           f"{fmt}/{version}: upgrade taskvec (pip install -U taskvec) or save it again with this one")
    missing = [k for k in keys if k not in info]
    if missing:
        raise TaskvecError(f"cannot load the {what}: {js} lacks {', '.join(map(repr, missing))}: save the {what} "
                           "again, or add the missing facts to the JSON by hand")
    data = st.read_bytes()
    digest = info.get("sha256")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise _corrupt(what, st, f"does not match the sha256 recorded in {js.name} ({len(data)} bytes)")
    try:
        out = load(data)
    except SafetensorError as e:
        raise _corrupt(what, st, f"is not a readable safetensors file ({e})") from None
    for name, dims in (tensors or {}).items():
        if name not in out:
            raise TaskvecError(f"cannot load the {what}: {st} holds the tensors {sorted(out)} but a {what} needs "
                               f"{name!r}: pass a {what}'s files (this is another kind of file, or an incomplete one)")
    sizes: dict[str, tuple[int, str]] = {}
    for name, dims in (tensors or {}).items():
        t = out[name]
        if t.dim() != len(dims):
            raise _corrupt(what, st, f"holds {name!r} of shape {tuple(t.shape)}, not [{', '.join(dims)}]")
        for dim, size in zip(dims, t.shape):
            said = info.get(dim)
            if dim in info and said != size:
                raise _corrupt(what, st, f"holds {name!r} of shape {tuple(t.shape)} ({dim}={size}), but {js.name} "
                                         f"says {dim}={said!r}")
            if dim in sizes and sizes[dim][0] != size:
                raise _corrupt(what, st, f"holds {name!r} with {dim}={size} but {sizes[dim][1]!r} with "
                                         f"{dim}={sizes[dim][0]}")
            sizes.setdefault(dim, (int(size), name))
    for name, t in out.items():
        dims = [d[2:].rstrip("s") if d.startswith("n_") else d for d in (tensors or {}).get(name, ())]
        finite(f"cannot load the {what}: {st}'s {name!r}", t, where=", ".join(dims),
               fix=f"the file is corrupt or was saved from a broken {what}; save a finite one again")
    return out, info


@contextmanager
def loading(path: str | Path, what: str) -> Iterator[None]:
    """Name the file in any :class:`~taskvec.TaskvecError` raised while an artefact is built from it
    (its facts are checked by the class's own constructor and ``check``)."""
    try:
        yield
    except TaskvecError as e:
        text = str(e)
        if str(stem(path)) in text:
            raise
        raise TaskvecError(f"cannot load the {what} from {paths(path)[1]}: {text}") from None
