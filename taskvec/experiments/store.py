"""Resumable results: a folder of CSV files, one per unit of work.

A unit ``NAME`` is complete when ``NAME.csv`` and its marker ``NAME.done`` both exist and the
marker's digest matches the CSV: a unit cut short by a kill, truncated or emptied on disk is
recomputed (with a warning), never used. Each process writes through its own temporary file and
renames it, so two processes on one unit both finish. Unit names are checked before the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import warnings
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import TaskvecError

#: Characters allowed in a unit (file) name.
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
#: Longest unit name: leaves room for the temporary suffix within the usual 255-byte file name limit.
MAX_NAME = 160
#: The marker's format tag.
FORMAT = "taskvec.StoreUnit/1"
#: This host, short: temporary files name their host and process so stale ones can be told apart.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]

# --fresh: folders under which this process recomputes units instead of resuming, and the store
# folders it has already cleared (each once, so units computed earlier in this run are reused).
_RECOMPUTE: set[Path] = set()
_CLEARED: set[Path] = set()


def digest(obj: Any, n: int = 10) -> str:
    """A short stable digest of a JSON-able value (what a unit's result depends on).

    Example:
        >>> digest({"a": [1, 2]}) == digest({"a": [1, 2]}) != digest({"a": [2, 1]})
        True
    """
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def safe_name(*parts: Any) -> str:
    """A file-name-safe unit name from ``parts`` joined by ``-``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``; when anything was
    replaced or cut, a digest of the original is appended so that ``caps/v2`` and ``caps_v2`` stay
    apart.

    Example:
        >>> safe_name("sweep", "country-capital", "text")
        'sweep-country-capital-text'
        >>> safe_name("sweep", "caps/v2")
        'sweep-caps_v2-3bec9ac7'
    """
    raw = "-".join(str(p) for p in parts)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).lstrip(".") or "_"
    if name != raw or len(name) > MAX_NAME:
        tag = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{tag}"
    return name


def check_name(name: str) -> str:
    """``name`` if it is a safe unit name (see :func:`safe_name`), else a clear error."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or name.startswith(".") or len(name) > MAX_NAME:
        raise TaskvecError(
            f"result store unit name {name!r} is not a safe file name (letters, digits, '.', '_' and '-', not "
            f"starting with '.', at most {MAX_NAME} characters): build it with "
            f"taskvec.experiments.store.safe_name(...)"
        )
    return name


def recompute_under(root: str | Path) -> None:
    """Make every :class:`Store` this process opens in ``root`` or below start empty (``--fresh``).

    Each store folder is cleared once, when it is first opened, so only the units of the stores a
    run actually uses (e.g. one model and setting) are recomputed; sibling folders stay.
    """
    _RECOMPUTE.add(Path(root).resolve())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class Store:
    """A folder of CSV files, one per unit of work, so long sweeps resume after an interruption.

    Args:
        folder: the store's folder (created), or ``None`` to compute every time.
        fresh: clear this folder's units first (they are recomputed); other folders are untouched.

    Example:
        >>> st = Store(None)          # no folder: compute every time
        >>> st.get_or_run("a", lambda: pd.DataFrame({"x": [1]})).x.tolist()
        [1]
    """

    def __init__(self, folder: str | Path | None, *, fresh: bool = False) -> None:
        self.folder = None if folder is None else Path(folder)
        self._writable: bool | None = None
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TaskvecError(f"cannot create the result store folder {self.folder} ({err.strerror or err}): "
                               "pass a folder you can write to") from None
        if not self.folder.is_dir():
            raise TaskvecError(f"result store {self.folder} is not a folder: pass a folder path")
        here = self.folder.resolve()
        if fresh or (here not in _CLEARED and any(r == here or r in here.parents for r in _RECOMPUTE)):
            self.clear()
            _CLEARED.add(here)
        self._remove_stale_temporaries()

    def __repr__(self) -> str:
        return f"Store({str(self.folder) if self.folder else None!r})"

    # --- files ----------------------------------------------------------------------------------
    def _paths(self, name: str) -> tuple[Path, Path]:
        assert self.folder is not None
        return self.folder / f"{name}.csv", self.folder / f"{name}.done"

    def _temporary(self, name: str, suffix: str) -> Path:
        assert self.folder is not None
        return self.folder / f".{name}{suffix}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp"

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of processes on this host that are gone (killed mid-write)."""
        assert self.folder is not None
        for tmp in self.folder.glob(".*.tmp"):
            parts = tmp.name.split("~")
            if len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit() and not _alive(int(parts[2])):
                tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete this folder's units (temporary files of running processes stay)."""
        if self.folder is None:
            return
        for pattern in ("*.csv", "*.done"):
            for p in self.folder.glob(pattern):
                p.unlink(missing_ok=True)

    def units(self) -> list[str]:
        """Names of the complete units."""
        if self.folder is None:
            return []
        return sorted(p.stem for p in self.folder.glob("*.done") if self._complete(p.stem)[0])

    def _complete(self, name: str) -> tuple[bool, str]:
        """Whether the unit is complete, and if not, why (empty when it is simply absent)."""
        csv, done = self._paths(name)
        if not csv.exists() and not done.exists():
            return False, ""
        if not csv.exists():
            return False, "its CSV is missing"
        if not done.exists():
            return False, "it has no completeness marker (it was cut short, or written by an older taskvec)"
        try:
            marker = json.loads(done.read_text())
            ok = marker.get("format") == FORMAT and marker.get("sha256") == hashlib.sha256(csv.read_bytes()).hexdigest()
        except (OSError, ValueError, AttributeError):
            ok = False
        return (True, "") if ok else (False, "its CSV does not match its completeness marker (truncated or edited)")

    def _check_writable(self) -> None:
        if self._writable:
            return
        assert self.folder is not None
        probe = self._temporary("probe", "")
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise TaskvecError(f"result store {self.folder} is not writable ({err.strerror or err}): results computed "
                               "here could not be saved; pass a folder you can write to") from None
        self._writable = True

    def put(self, name: str, df: pd.DataFrame) -> None:
        """Record ``df`` as the complete unit ``name`` (its CSV and its marker, each written atomically)."""
        csv, done = self._paths(name)
        tmp_csv, tmp_done = self._temporary(name, ".csv"), self._temporary(name, ".done")
        try:
            df.to_csv(tmp_csv, index=False)
            data = tmp_csv.read_bytes()
            tmp_done.write_text(json.dumps({"format": FORMAT, "rows": len(df), "sha256": hashlib.sha256(data).hexdigest()}))
            done.unlink(missing_ok=True)  # the unit is incomplete until both are in place
            os.replace(tmp_csv, csv)
            os.replace(tmp_done, done)
        except OSError as err:
            warnings.warn(f"result store: could not save unit {name!r} in {self.folder} ({err}); the result is "
                          "returned but will be recomputed next time", stacklevel=3)
        finally:
            tmp_csv.unlink(missing_ok=True)
            tmp_done.unlink(missing_ok=True)

    # --- the one entry point --------------------------------------------------------------------
    def get_or_run(self, name: str, run: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """The unit's stored result if it is complete, else ``run()``'s, saved.

        The name is checked and the folder probed for writing before ``run`` starts, so a bad name
        or a read-only folder fails before the work, not after.
        """
        if self.folder is None:
            return run()
        check_name(name)
        complete, why = self._complete(name)
        if complete:
            return pd.read_csv(self._paths(name)[0], keep_default_na=False)
        if why:
            warnings.warn(f"result store: unit {name!r} in {self.folder} is incomplete ({why}): recomputing it",
                          stacklevel=2)
        self._check_writable()
        df = run()
        if not isinstance(df, pd.DataFrame):
            raise TaskvecError(f"result store unit {name!r}: run() returned {type(df).__name__}, not a pandas DataFrame")
        self.put(name, df)
        return df
