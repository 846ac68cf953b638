"""examples/ holds numbered notebooks (running them is the slow tier's tests/slow/test_notebooks.py)."""

from pathlib import Path


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "examples/ should hold the notebooks"
    assert all(p.name[:2].isdigit() and p.name[2] == "_" for p in NOTEBOOKS), [p.name for p in NOTEBOOKS]
