"""Where taskvec keeps converted weights and other derived files (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the taskvec cache.

    The root is ``$TASKVEC_CACHE`` if set, else ``$XDG_CACHE_HOME/taskvec``, else ``~/.cache/taskvec``.

    Example:
        >>> cache_dir("models").name
        'models'
    """
    root = os.environ.get("TASKVEC_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskvec"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
