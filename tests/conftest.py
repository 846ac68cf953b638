"""Shared fixtures: the real embedded Gemma-3-270m, loaded once per test session."""

from __future__ import annotations

import pytest

import taskvec


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
