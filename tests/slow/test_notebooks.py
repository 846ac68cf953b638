"""Every notebook in examples/ runs top to bottom (slow tier: CI runs it, so a broken notebook fails CI)."""

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in shown if o.get("output_type") == "error"]
    figures = [o for o in shown if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures or "05" in path.name, "the notebook should show at least one plotly figure inline"
