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


class PeakCUDA:
    """Peak memory that torch's CUDA allocator hands out while the ``with`` block runs
    (``torch.cuda.max_memory_allocated``, reset at entry): ``start`` and ``peak`` in bytes,
    ``peak_mb`` and ``above_start_mb`` in MiB. Tensors only: the CUDA context and the allocator's
    cached but unused blocks are not counted. Synchronises the device at entry and exit."""

    def __init__(self, device: object = None) -> None:
        self.device = device

    def __enter__(self) -> PeakCUDA:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of repeated timings: the order
    statistics ``(x_(k), x_(n+1-k))`` with the largest ``k`` whose coverage ``1 - 2 P(Bin(n, 1/2) < k)``
    is at least ``level``; with too few repeats for ``level``, the range (min, max).

    Returns:
        ``(low, high, coverage)``.

    Example:
        >>> median_interval([3.0, 1.0, 2.0, 5.0, 4.0])   # 5 repeats: the range covers 94%
        (1.0, 5.0, 0.9375)
    """
    from math import comb

    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)
