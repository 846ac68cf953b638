"""Resumable results: a folder of CSV files, one per unit of work."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd


class Store:
    """A folder of CSV files, one per unit of work, so long sweeps resume after an interruption.

    Example:
        >>> st = Store(None)          # no folder: compute every time
        >>> st.get_or_run("a", lambda: pd.DataFrame({"x": [1]})).x.tolist()
        [1]
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get_or_run(self, name: str, run: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        if self.folder is None:
            return run()
        path = self.folder / f"{name}.csv"
        if path.exists():
            return pd.read_csv(path, keep_default_na=False)
        df = run()
        tmp = path.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(path)
        return df
