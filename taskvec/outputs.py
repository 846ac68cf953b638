"""Output paths of the command line: checked before any work, and rescued after it.

An option that names an output (``--out``, ``--out-dir``) is checked before the model loads: the
folder is created, and a parent that is a file, a path that is a folder or an unwritable place is
refused. A write that still fails after the work saves the result in the current folder (else the
temp folder) and :class:`OutputRescued` says where, so finished work is never lost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import TaskvecError


def _reason(err: BaseException) -> str:
    return (err.strerror if isinstance(err, OSError) and err.strerror else str(err)) or type(err).__name__


def _writable_folder(folder: Path, option: str, asked: str) -> None:
    """Create ``folder`` (and its parents) and check a file can be created in it; else raise a
    TaskvecError naming the option."""

    fix = f"pass a {option} in a folder you can write to"
    for parent in (folder, *folder.parents):
        try:
            if not (parent.exists() or parent.is_symlink()):
                continue
        except OSError as err:
            raise TaskvecError(f"{option} {asked!r}: cannot look at {parent} ({_reason(err)}): {fix}") from err
        if not parent.is_dir():
            raise TaskvecError(f"{option} {asked!r}: {parent} is a file, not a folder: {fix}")
        break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TaskvecError(f"{option} {asked!r}: cannot create the folder {folder} ({_reason(err)}): {fix}") from err
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".taskvec-write-check-"):
            pass
    except OSError as err:
        raise TaskvecError(f"{option} {asked!r}: cannot write in {folder} ({_reason(err)}): {fix}") from err


def writable_file(path: str | Path, option: str, *, also: Sequence[Path] = (), asked: str | None = None) -> Path:
    """Check, before any work, that the file an option names can be written: its folder is
    created if missing; a parent that is a file, a path that is a folder, or a folder that cannot
    be written is a TaskvecError naming the option. ``also``: more files written beside it;
    ``asked``: the value as typed, for the message (default ``path``).

    Example:
        >>> writable_file("", "--out")
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: --out is empty: pass a file path
    """

    if not str(path).strip():
        raise TaskvecError(f"{option} is empty: pass a file path")
    asked = str(path) if asked is None else asked
    target = Path(path).expanduser()
    _writable_folder(target.parent, option, asked)
    for file in (target, *also):
        if file.is_dir():
            raise TaskvecError(f"{option} {asked!r}: {file} is a folder: pass a file path")
        if file.exists():
            try:
                with open(file, "ab"):  # opened to append nothing: the content is untouched
                    pass
            except OSError as err:
                raise TaskvecError(f"{option} {asked!r}: cannot overwrite {file} ({_reason(err)}): pass another "
                                   f"{option} or make the file writable") from err
    return target


def writable_dir(path: str | Path, option: str) -> Path:
    """Check, before any work, that the folder an option names can be written (created if missing)."""

    asked = str(path)
    if not asked.strip():
        raise TaskvecError(f"{option} is empty: pass a folder")
    folder = Path(path).expanduser()
    _writable_folder(folder, option, asked)
    return folder


class OutputRescued(Exception):
    """The work is done but an output could not be written where asked; it was saved elsewhere
    (``taskvec`` exits with status 1 and says where)."""


def _taken(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def save_outputs(outputs: Sequence[tuple[Path, Callable[[Path], Any]]], *,
                 taken: Callable[[Path], bool] = _taken) -> None:
    """Write each ``(path, write)`` after the work. One that fails is written instead in the current
    folder, else the temp folder, under a name for which ``taken`` is false (``NAME-1.csv``...),
    and :class:`OutputRescued` says where."""
    notes = []
    for target, write in outputs:
        try:
            write(target)
            continue
        except Exception as err:  # noqa: BLE001 - whatever the write raised, the work must not be lost
            failed = err
        if not target.parent.exists():  # the folder was removed during the run: make it again
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                write(target)
                continue
            except Exception:  # noqa: BLE001 - save it elsewhere
                pass
        spare = None
        for folder in dict.fromkeys((Path.cwd(), Path(tempfile.gettempdir()))):
            for i in range(1000):
                stem, suffix = (target.stem, target.suffix) if taken is _taken else (target.name, "")
                candidate = folder / (target.name if i == 0 else f"{stem}-{i}{suffix}")
                if not taken(candidate):
                    break
            try:
                write(candidate)
            except Exception:  # noqa: BLE001 - try the next folder
                continue
            spare = candidate.resolve()
            break
        if spare is None and not isinstance(failed, OSError):
            raise failed  # not a place that cannot be written: a bug, shown as such
        notes.append(f"could not write {target} ({_reason(failed)}); " +
                     (f"saved it as {spare} instead" if spare else
                      "nor a copy in the current folder or the temp folder: this result is lost"))
    if notes:
        raise OutputRescued("; ".join(notes))
