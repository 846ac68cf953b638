"""analyses/ is a package with one shared layer: every script runs as ``python -m analyses.<name>``,
imports only the underscore modules (``analyses._common``, ``analyses.benchmarks._measure``) of
the package, never another script, and never edits ``sys.path``. No model is loaded here."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANALYSES = ROOT / "analyses"
FILES = sorted(p for p in ANALYSES.rglob("*.py") if "results" not in p.relative_to(ANALYSES).parts)
#: every module name a file under analyses/ could be imported by if its folder were put on sys.path
BARE_NAMES = {p.stem for p in FILES}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, function-level imports included;
    ``from analyses import x`` counts as importing ``analyses.x``."""
    tree = ast.parse(text, filename=str(path))
    package = module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            out.append((node.lineno, base))
            if base.split(".")[0] == "analyses":
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def problems(path: Path, text: str | None = None) -> list[str]:
    """What breaks the layout in the file at ``path`` (or in ``text`` read as that file)."""
    found = []
    text = path.read_text() if text is None else text
    if "sys.path" in text:
        found.append("mentions sys.path")
    for line, name in imported_modules(path, text):
        top = name.split(".")[0]
        if top in BARE_NAMES and top != "analyses":
            found.append(f"line {line}: imports {name!r} by bare name (works only with analyses/ on sys.path)")
        elif top == "analyses":
            parts = name.split(".")
            target = ROOT.joinpath(*parts)
            is_module = target.with_suffix(".py").is_file()
            # importing a script (a module whose own name has no leading underscore) is not allowed
            if is_module and not parts[-1].startswith("_"):
                found.append(f"line {line}: imports the script {name!r}; shared code belongs in an underscore module")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ANALYSES).as_posix())
def test_script_imports_only_the_shared_layer(path):
    assert not problems(path), "\n".join(problems(path))


def test_the_checker_catches_what_it_should():
    """The checker itself: a bare-name import, a script import and a sys.path edit are caught; the
    shared modules pass."""
    bad = ANALYSES / "table6_template.py"
    src = ("import sys\nsys.path.insert(0, '.')\nfrom table3_cross_modal import paper_rows\n"
           "from analyses.fig3_phases import main\nfrom analyses import table3_cross_modal\n"
           "from . import fig3_phases\nfrom analyses._common import write_json\n"
           "from analyses.benchmarks._measure import PeakRSS\nfrom ._common import RESULTS\n")
    found = problems(bad, src)
    assert found[0] == "mentions sys.path"
    assert len(found) == 5, found  # sys.path, table3 bare, fig3 absolute, table3 via package, fig3 relative
    assert not any("_common" in f or "_measure" in f for f in found)


def test_every_script_is_a_module_of_the_package_and_results_name_it():
    """``python -m analyses.<name>`` finds every script from the repository root (without importing
    taskvec), and write_json's ``written_by`` names the script's path under -m."""
    names = [module_name(p) for p in FILES if not p.name.startswith("_")]
    code = (
        "import importlib.util, json, sys\n"
        f"names = {names!r}\n"
        "missing = [n for n in names if importlib.util.find_spec(n) is None]\n"
        "sys.argv[0] = sys.argv[1]\n"
        "from analyses._common import script_name\n"
        "print(json.dumps({'missing': missing, 'written_by': script_name()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ANALYSES / "benchmarks" / "bench_lens.py")], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["missing"] == []
    assert res["written_by"] == "analyses/benchmarks/bench_lens.py"
    assert (ANALYSES / "__init__.py").is_file() and (ANALYSES / "benchmarks" / "__init__.py").is_file()
