"""The unit tier builds no model.

While a test here is set up, run or torn down, constructing any transformers model (which is what
``taskvec.load``, ``from_pretrained``, ``from_config`` and ``build_tiny`` all end in) raises, and
the shared ``gemma`` fixture is refused, so a test that needs a model fails here instead of slowly
turning the tier into a model tier: move it to tests/tiny or tests/embedded.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import transformers

ADVICE = "tests/unit builds no model: move this test to tests/tiny (tiny random instances) or tests/embedded"


def _refuse(self, *args, **kwargs):
    raise RuntimeError(f"{ADVICE} (it built a {type(self).__name__})")


@contextmanager
def _no_model():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.PreTrainedModel, "__init__", _refuse)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _no_model():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _no_model():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _no_model():
        return (yield)


@pytest.fixture
def gemma():
    pytest.fail(f"{ADVICE} (it asked for the gemma fixture)")
