"""The layer contract: a lower layer of taskvec never imports a higher one (docs/architecture.md).

Every import in every module counts, including imports inside functions (lazy imports are still
dependencies). The facade ``taskvec/__init__.py`` re-exports from every layer and is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "taskvec"

#: low to high; a module may import its own layer and the layers before it
LAYERS = [
    ("taskvec.errors", "taskvec.cache", "taskvec.checks", "taskvec.outputs"),
    ("taskvec.inputs",),
    ("taskvec.tasks",),
    ("taskvec.embedded",),
    ("taskvec.models",),
    ("taskvec.sites",),
    ("taskvec.interventions",),
    ("taskvec.methods",),
    ("taskvec.experiments",),
    ("taskvec.cli",),
]


def rank(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in a file (or in ``source`` as if it were that
    file), relative ones resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from .pkg import module` imports the module pkg.module
            out += [(node.lineno, f"{target}.{a.name}" if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).exists()
                     or (PACKAGE.parent / (f"{target}.{a.name}".replace(".", "/") + ".py")).exists() else target)
                    for a in node.names]
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    assert [module_name(p) for p in MODULES if rank(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_higher_layer(path):
    me = rank(module_name(path))
    bad = []
    for line, target in imports(path):
        if target == "taskvec":
            bad.append(f"line {line}: imports the facade 'taskvec' (import from the module that defines the name)")
        elif target.startswith(("vlm_recipe", "analyses")):
            bad.append(f"line {line}: imports {target}, which is not part of the installed package")
        elif target.startswith("taskvec."):
            theirs = rank(target)
            if theirs is not None and theirs > me:
                bad.append(f"line {line}: {target} is in layer {theirs}, above this module's layer {me}")
    assert not bad, f"{module_name(path)}:\n" + "\n".join(bad)


def test_the_contract_catches_an_upward_import():
    """The check itself: a lazy, relative import of a higher layer is found and ranked above."""
    found = [target for _, target in imports(PACKAGE / "inputs" / "prompts.py",
                                            "def f():\n    from ..methods.lens import lens\n")]
    assert found == ["taskvec.methods.lens"]
    assert rank("taskvec.methods.lens") > rank("taskvec.inputs.prompts")
