"""The docs site builds without warnings (mkdocs --strict: broken links, missing pages and
API-reference entries that no longer exist all fail)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_site_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "api" / "index.html").exists()
    assert "taskvec.extract_icl" in (tmp_path / "site" / "api" / "index.html").read_text()


def test_readme_links_exist():
    import re

    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs|examples|analyses)/[^)#]+)\)", readme):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
