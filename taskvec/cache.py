"""Where taskvec keeps converted weights and other derived files (never inside the repository), how a
folder there is built, and how it is checked before it is used.

A folder is built in a temporary sibling ``<name>.tmp<pid>`` and renamed into place at the end, so a
half-written folder is never used. The build records every file it wrote (size, modification time,
sha256) in ``taskvec_cache.json``; :func:`check_folder` compares the folder against it. An
interrupted build removes its temporary folder (on errors, Ctrl-C and SIGTERM), and a temporary
folder left by a killed process (SIGKILL, power loss) is removed by the next build in that folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import TaskvecError

#: The environment variable that moves the cache.
ENV = "TASKVEC_CACHE"
#: The file, written last inside a built folder, that lists what the build wrote.
MANIFEST = "taskvec_cache.json"
#: The file inside a temporary build folder that names the process building it.
OWNER = "taskvec_building.json"
#: A temporary build folder untouched for this long is removed even if its process may be alive
#: elsewhere (another machine or container sharing the cache).
STALE_AFTER_S = 24 * 3600

_TMP = re.compile(r"\.tmp(\d+)$")
_NEED: dict[Path, int] = {}


def _root() -> tuple[Path, str]:
    """The cache root and a phrase saying where it came from (for error messages)."""
    root = os.environ.get(ENV)
    if root:
        return Path(root).expanduser(), f"{ENV}={root}"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskvec"
    return base, f"the default cache folder {base} ({ENV} is not set)"


def _where() -> str:
    return _root()[1]


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the taskvec cache.

    The root is ``$TASKVEC_CACHE`` if set, else ``$XDG_CACHE_HOME/taskvec``, else ``~/.cache/taskvec``.
    A root that cannot be used (a file, a read-only disk) raises a :class:`TaskvecError` that names
    ``TASKVEC_CACHE``.

    Example:
        >>> cache_dir("models").name
        'models'
    """
    base, where = _root()
    path = base.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in [base, *base.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None or isinstance(err, (NotADirectoryError, FileExistsError)):
            why = f"{blocker or base} is a file, not a folder"
        else:
            why = f"{path} cannot be created ({err.strerror or err})"
        raise TaskvecError(
            f"the taskvec cache cannot be used: {why}; the cache is {where}. "
            f"Set {ENV} to a writable folder, e.g. export {ENV}=$HOME/taskvec-cache"
        ) from err
    return path


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 16 MiB blocks (about 2 s per GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_manifest(folder: str | Path, **facts: Any) -> dict[str, Any]:
    """Record every file of ``folder`` (size, modification time, sha256) in its ``taskvec_cache.json``.

    ``facts`` (e.g. ``vocab=262144``) are stored beside the files for the caller's own checks.
    """
    folder = Path(folder)
    files = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name not in (MANIFEST, OWNER):
            st = f.stat()
            files[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(f)}
    data = {"format": "taskvec-cache/1", "files": files, **facts}
    _write_json(folder / MANIFEST, data)
    return data


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``taskvec_cache.json``, or ``None`` when it has none (a folder built before
    manifests existed) or it cannot be read."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def check_folder(folder: str | Path) -> list[str]:
    """What differs between ``folder`` and what its build wrote (an empty list: nothing).

    Always checked (costs a ``stat`` per file): every recorded file is there with its size, and no
    other file was added. A file whose modification time changed since the build (it was written
    to, or copied without keeping times) is read in full and its sha256 compared; when it matches,
    the new time is recorded so the next check is cheap again. Not caught: bytes changed in place
    with the modification time put back (``touch -d``), or decay of the disk itself.
    A folder without a manifest returns ``["no manifest"]``.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return ["no manifest"] if not (folder / MANIFEST).exists() else [f"{MANIFEST} is unreadable"]
    problems, touched = [], []
    for name, rec in manifest["files"].items():
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if st.st_size != rec["size"]:
            problems.append(f"{name} has {st.st_size} bytes where {rec['size']} were written")
        elif st.st_mtime_ns != rec["mtime_ns"]:
            touched.append((name, path, st))
    extra = sorted(f.name for f in folder.iterdir()
                   if f.name not in manifest["files"] and not f.name.startswith((MANIFEST, OWNER, ".")))
    problems += [f"{name} was not written by taskvec" for name in extra]
    if problems:
        return problems
    for name, path, st in touched:
        if sha256_file(path) != manifest["files"][name]["sha256"]:
            problems.append(f"{name} was modified after it was written (its sha256 differs)")
        else:
            manifest["files"][name]["mtime_ns"] = st.st_mtime_ns
    if touched and not problems:
        with contextlib.suppress(OSError):  # a read-only cache: check again next time
            _write_json(folder / MANIFEST, manifest)
    return problems


def no_space(err: BaseException) -> bool:
    """Whether ``err`` (an ``OSError``, or a safetensors/tokenizers error wrapping one) is a full disk."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def _no_space_error(folder: Path, what: str, need: int | None) -> TaskvecError:
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    needs = f"it needs about {need / 1e9:.2f} GB" if need else "it needs more room"
    has = f" and {free / 1e9:.2f} GB are free there" if free is not None else ""
    return TaskvecError(
        f"not enough disk space to write {what} into {folder.parent}: {needs}{has} (the cache is {_where()}). "
        f"Free some space, or set {ENV} to a folder on a disk with room, e.g. export {ENV}=/big/disk/taskvec"
    )


def require_space(folder: str | Path, need_bytes: int, what: str) -> None:
    """Raise a :class:`TaskvecError` before writing when ``folder``'s disk has less than
    ``need_bytes`` free; the message gives the size and the ``TASKVEC_CACHE`` override."""
    folder = Path(folder)
    _NEED[folder] = need_bytes
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        return
    if free < need_bytes:
        raise _no_space_error(folder, what, need_bytes)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        return True
    return True


def clean_stale(parent: str | Path) -> list[Path]:
    """Remove temporary build folders in ``parent`` whose process is gone; return what was removed.

    A folder is stale when its owner file names this machine and a process that no longer runs
    (a folder written before owner files existed counts as this machine's), or when it has not
    changed for :data:`STALE_AFTER_S` seconds.
    """
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP.search(entry.name)
        if not match or not entry.is_dir() or int(match.group(1)) == os.getpid():
            continue
        try:
            owner = json.loads((entry / OWNER).read_text())
        except (OSError, ValueError):
            owner = {"host": socket.gethostname(), "pid": int(match.group(1))}
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:
            continue
        here = owner.get("host") == socket.gethostname()
        if (here and not _pid_alive(int(owner.get("pid", match.group(1))))) or age > STALE_AFTER_S:
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


@contextlib.contextmanager
def _removed_on_sigterm(tmp: Path) -> Iterator[None]:
    """While the block runs in the main thread, a SIGTERM first removes ``tmp``, then does what it
    would have done (the previous handler, or the default: end the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_term:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def building(target: str | Path, what: str, **facts: Any) -> Iterator[Path]:
    """Build the folder ``target`` atomically: yield an empty temporary sibling to write into.

    When the block ends normally the manifest (see :func:`write_manifest`, with ``facts``) is
    written and the folder renamed to ``target`` (if another process finished first, its folder is
    kept when it checks out). When the block fails, is interrupted (Ctrl-C, SIGTERM) or the disk
    fills, the temporary folder is removed; a full disk raises a :class:`TaskvecError` with the
    size needed and the ``TASKVEC_CACHE`` override. Stale temporary folders of dead processes are
    removed first (:func:`clean_stale`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            tmp.mkdir()
            (tmp / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        except OSError as err:
            if no_space(err):
                raise _no_space_error(tmp, what, None) from err
            raise TaskvecError(f"cannot write {what} into {target.parent}: {err.strerror or err} "
                               f"(the cache is {_where()}). Set {ENV} to a writable folder") from err
        with _removed_on_sigterm(tmp):
            yield tmp
            (tmp / OWNER).unlink()
            write_manifest(tmp, **facts)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first (or a damaged folder is in the way)
            if target.is_dir() and not check_folder(target):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, TaskvecError) and no_space(err):
            raise _no_space_error(tmp, what, _NEED.get(tmp)) from err
        raise
    finally:
        _NEED.pop(tmp, None)
