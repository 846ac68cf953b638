"""The benchmarks' one peak-memory sampler: resident memory (RSS) read from /proc every few ms in a
thread while a block runs. ``ru_maxrss`` cannot serve: it keeps the peak of model loading."""

from __future__ import annotations

import os
import threading


def rss_bytes() -> int:
    """This process's resident memory now, in bytes (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while the ``with`` block runs: ``start`` and ``peak`` in bytes,
    ``above_start_mb`` the peak above the level at entry, in MiB."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2**20
