"""Built-in tasks (the cross-modal paper's six, plus text-only function-vector tasks) and user tasks.

Use::

    import taskvec
    task = taskvec.get_task("country-capital")
    task.instruction                       # 'The capital city of the country:'
    task.pairs("val")                      # [(input, output), ...], 30 fixed validation items
    task.pairs("test", modality="image")   # [(PIL image of the emoji, output), ...]
    task.phase_categories()                # {"input": [":"], "task": [...], "answer": [...]}
    mine = taskvec.load_task("my_task.csv")

Task file schema (JSON, UTF-8; the built-in files in ``taskvec/tasks/data/`` use it)::

    {
      "name": "country-capital",                     # optional, default: the file stem
      "instruction": "The capital city of the country:",   # optional, default ""
      "description": "one line about the data",      # optional
      "task_words": ["capital", "city"],             # optional: lens "task" phase words
      "input_words": [":"],                          # optional, default [":"]
      "notes": "free text",                          # optional, ignored
      "items": [                                     # required (a bare list of items also works)
        {"input": "France", "output": "Paris", "emoji": "🇫🇷", "split": "val"},
        {"input": "Japan", "output": "Tokyo", "split": "test"}
      ]
    }

Each item has ``input`` and ``output`` (non-empty, one line, without the answer marker ``A:``),
an optional ``emoji`` (an emoji OpenMoji can draw; the image modality uses only items with one)
and an optional ``split`` (``"val"`` or ``"test"``; give it on every item or on none: without
splits, :func:`load_task` draws a validation split from its ``seed``). Inputs must be unique.
A CSV file has a header ``input,output[,emoji][,split]`` and one item per line. Errors name the
file, the CSV line or JSON item index, and the field.

Images: OpenMoji, the open-source emoji and icon project, licensed CC BY-SA 4.0.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import TaskvecError
from .files import draw_splits, dumps_task, load_task, save_task
from .task import MODALITIES, SPLITS, Item, Task

DATA_DIR = Path(__file__).resolve().parent / "data"

#: The cross-modal paper's six tasks (Luo, Darrell & Bar), in the paper's order.
PAPER_TASKS: tuple[str, ...] = (
    "country-capital", "country-currency", "animal-latin", "animal-young", "food-color", "food-flavor",
)
#: Text-only tasks of the function-vector kind (Todd et al.), for LLM studies.
TEXT_TASKS: tuple[str, ...] = (
    "antonym", "english-french", "english-spanish", "present-past", "singular-plural", "capitalize", "next-item",
)


def list_tasks() -> list[str]:
    """Names of the built-in tasks: :data:`PAPER_TASKS` then :data:`TEXT_TASKS`.

    Example:
        >>> list_tasks()[:2]
        ['country-capital', 'country-currency']
    """
    return [*PAPER_TASKS, *TEXT_TASKS]


def get_task(name: str) -> Task:
    """A built-in task by name (see :func:`list_tasks`); use :func:`load_task` for your own files.

    Example:
        >>> t = get_task("animal-latin")
        >>> t.instruction
        "The scientific name of the animal's species in latin:"
    """
    if not isinstance(name, str):
        raise TaskvecError(f"name={name!r} is a {type(name).__name__}: pass a task name such as 'country-capital' "
                           "(see taskvec.list_tasks())")
    if name not in list_tasks():
        hint = " (a file? use taskvec.load_task(path))" if name.endswith((".json", ".csv")) else ""
        raise TaskvecError(f"unknown task {name!r}{hint}: built-in tasks are {', '.join(list_tasks())}")
    return _builtin(name)


@lru_cache(maxsize=None)
def _builtin(name: str) -> Task:  # a Task is immutable, so sharing one instance is safe
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        raise TaskvecError(f"the data file of built-in task {name!r} is missing ({path}): reinstall taskvec")
    return load_task(path, check_emoji=False)


__all__ = [
    "DATA_DIR", "draw_splits", "dumps_task", "get_task", "Item", "list_tasks", "load_task", "MODALITIES",
    "PAPER_TASKS", "save_task", "SPLITS", "Task", "TEXT_TASKS",
]
