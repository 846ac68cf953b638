"""Shared fixtures (the real embedded Gemma-3-270m, loaded once per test session) and the tiers.

Every test lives in one tier folder, fastest first: ``unit`` (no model at all, the whole tier under
a minute), ``tiny`` (tiny random instances of every architecture), ``embedded`` (Gemma-3-270m and
the embedded VLM), ``slow`` (analyses, notebooks, training: minutes each), then ``gpu`` (the same
operations on CUDA, tiny models again; every test skips where no CUDA device is, see
tests/gpu/conftest.py and scripts/gpu-check). Each test is marked with its folder's name, so
``-m unit`` or ``-m "not slow"`` select by tier, and the suite runs the tiers in that order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import taskvec

TIERS = ("unit", "tiny", "embedded", "slow", "gpu")
HERE = Path(__file__).resolve().parent


def _tier(item: pytest.Item) -> str | None:
    """The tier folder ``item`` lives in; None for a file outside tests/ (e.g. given on the command line)."""
    try:
        return Path(item.path).resolve().relative_to(HERE).parts[0]
    except ValueError:
        return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier and run the tiers fastest first; a test outside a tier folder,
    or marked with another tier than its folder's, is an error (it would escape ``-m`` selection)."""
    wrong = []
    for item in items:
        tier = _tier(item)
        if tier is None:
            continue
        if tier not in TIERS:
            wrong.append(f"{item.nodeid}: not in a tier folder ({', '.join(f'tests/{t}/' for t in TIERS)})")
            continue
        other = [t for t in TIERS if t != tier and item.get_closest_marker(t)]
        if other:
            wrong.append(f"{item.nodeid}: marked {other[0]!r} but lives in tests/{tier}/")
        item.add_marker(tier)
    if wrong:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(wrong))
    items.sort(key=lambda item: TIERS.index(_tier(item)) if _tier(item) in TIERS else len(TIERS))


@pytest.fixture(scope="session")
def gemma() -> taskvec.Model:
    """The embedded default LLM (converted once into the user cache, then loaded in seconds)."""
    return taskvec.load("gemma-3-270m")


CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
    ("Germany", "Berlin"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
]


@pytest.fixture
def capitals() -> list[tuple[str, str]]:
    return list(CAPITALS)
