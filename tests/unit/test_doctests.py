"""The examples in taskvec's docstrings run (doctest), one test per module.

The modules are found by walking the package, so a module added or moved is checked without
editing this file. Examples that need a model are marked ``# doctest: +SKIP`` and stay skipped:
the unit tier builds no model (tests/unit/conftest.py).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import taskvec

# a package that fails to import is still listed (its test fails on the import); only its submodules are not
MODULES = ["taskvec", *sorted(m.name for m in pkgutil.walk_packages(taskvec.__path__, "taskvec.", onerror=lambda name: None))]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
