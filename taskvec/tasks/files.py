"""Reading and writing task files (JSON or CSV), with checks that name the file, line and field."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path
from typing import Any, Sequence

from ..checks import count, integer
from ..errors import TaskvecError
from .task import SPLITS, Item, Task

#: Top-level keys a task JSON file may have.
JSON_KEYS = ("name", "instruction", "description", "task_words", "input_words", "items", "notes")
#: Keys of one item.
ITEM_KEYS = ("input", "output", "emoji", "split")
#: CSV columns: the first two are required.
CSV_COLUMNS = ("input", "output", "emoji", "split")
#: Validation items drawn when a file has no splits (fewer if the file is small, see :func:`draw_splits`).
DEFAULT_N_VAL = 30


def load_task(
    path: str | Path,
    *,
    name: str | None = None,
    instruction: str | None = None,
    task_words: Sequence[str] | None = None,
    seed: int = 0,
    n_val: int | None = None,
    check_emoji: bool = True,
) -> Task:
    """Read a task from a JSON file (the built-in schema) or a CSV file.

    CSV files have a header with the columns ``input,output[,emoji][,split]``. When the file has no
    splits, a validation split of ``n_val`` items is drawn with ``random.Random(seed)`` (emoji items
    first, so image demonstrations exist, but at least 40 kept for image test queries: see
    :func:`draw_splits`); the rest is the test split.

    Args:
        path: a ``.json`` or ``.csv`` file.
        name: the task name (default: the file's ``name`` field, else the file stem).
        instruction: the task instruction (overrides the file's).
        task_words: words for the lens *task* phase (override the file's).
        seed: seed of the drawn split (ignored when the file has splits).
        n_val: validation items to draw (default 30, at most a third of the items).
        check_emoji: draw every emoji once with OpenMoji and reject those the font lacks.

    Raises:
        TaskvecError: naming the file, the CSV line or JSON item, and the field at fault.

    Example:
        >>> import taskvec, pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "caps.csv"
        >>> _ = p.write_text("input,output\\nFrance,Paris\\nJapan,Tokyo\\nItaly,Rome\\n")
        >>> t = taskvec.load_task(p, instruction="The capital city of the country:")
        >>> t.name, len(t), sorted(t.sizes()[s] for s in ("val", "test"))
        ('caps', 3, [1, 2])
    """
    if not isinstance(path, (str, Path)):
        raise TaskvecError(f"path={path!r} is a {type(path).__name__}: pass the path of a .json or .csv file")
    seed = integer("seed", seed)
    if n_val is not None:
        n_val = count("n_val", n_val, fix="or None for the default")
    for key, value in (("name", name), ("instruction", instruction)):
        if value is not None and not isinstance(value, str):
            raise TaskvecError(f"{key}={value!r} is a {type(value).__name__}: pass a str (or leave it out)")
    if task_words is not None and (isinstance(task_words, str) or not all(isinstance(w, str) and w
                                                                            for w in task_words)):
        raise TaskvecError(f"task_words={task_words!r}: pass a list of non-empty words, e.g. ['capital', 'city']")
    p = Path(path)
    if not p.is_file():
        raise TaskvecError(f"task file {p} does not exist: pass the path of a .json or .csv file")
    suffix = p.suffix.lower()
    if suffix == ".json":
        meta, rows = _read_json(p)
    elif suffix == ".csv":
        meta, rows = {}, _read_csv(p)
    else:
        raise TaskvecError(f"{p}: unknown task file type {p.suffix!r}: use a .json or .csv file")
    items = _check_rows(p, rows, check_emoji=check_emoji)
    if items and all(it.split == "" for it in items):
        items = draw_splits(items, seed=seed, n_val=n_val)
    return Task(
        name=name or meta.get("name") or p.stem,
        instruction=instruction if instruction is not None else meta.get("instruction", ""),
        items=tuple(items),
        task_words=tuple(task_words if task_words is not None else meta.get("task_words", ())),
        input_words=tuple(meta.get("input_words", (":",))),
        description=meta.get("description", ""),
        source=str(p),
    )


def save_task(task: Task, path: str | Path) -> Path:
    """Write ``task`` as JSON (all fields) or CSV (``input,output,emoji,split``), by the file suffix.

    Example:
        >>> import taskvec, tempfile, pathlib
        >>> t = taskvec.get_task("food-color")
        >>> out = taskvec.tasks.save_task(t, pathlib.Path(tempfile.mkdtemp()) / "fc.json")
        >>> taskvec.load_task(out, check_emoji=False) == t
        True
    """
    p = Path(path)
    if p.suffix.lower() == ".json":
        p.write_text(dumps_task(task), encoding="utf-8")
    elif p.suffix.lower() == ".csv":
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for it in task.items:
                w.writerow([it.input, it.output, it.emoji or "", it.split])
    else:
        raise TaskvecError(f"cannot save a task as {p.name!r}: use a .json or .csv file name")
    return p


def dumps_task(task: Task) -> str:
    """JSON text of a task, one item per line (readable diffs of the data files)."""
    d = task.to_dict()
    items = d.pop("items")
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n" for k, v in d.items())
    lines = ",\n".join("    " + json.dumps(it, ensure_ascii=False) for it in items)
    return f"{{\n{head}  \"items\": [\n{lines}\n  ]\n}}\n"


def draw_splits(items: Sequence[Item], *, seed: int = 0, n_val: int | None = None,
                min_image_test: int = 40) -> list[Item]:
    """Assign ``val``/``test`` deterministically from a shuffle with ``seed``.

    Image demonstrations come from validation items with an emoji, image test queries from test
    items with one, so the emoji items are shared out first: the test split keeps
    ``min_image_test`` of them (or all but 10 when there are fewer than ``min_image_test`` + 10),
    validation takes the rest up to ``n_val``, and text-only items fill both splits up. The result
    is ordered val items, then test items with an emoji, then the text-only test items.

    Example:
        >>> its = [Item(str(i), str(i), "") for i in range(10)]
        >>> [it.split for it in draw_splits(its, seed=1, n_val=3)].count("val")
        3
    """
    n = len(items)
    if n < 2:
        raise TaskvecError(f"a task needs at least 2 items to split into val and test, got {n}")
    seed = integer("seed", seed)
    min_image_test = integer("min_image_test", min_image_test, low=0)
    if n_val is None:
        n_val = min(DEFAULT_N_VAL, max(1, n // 3))
    n_val = count("n_val", n_val, fix=f"at most {n - 1} for {n} items")
    if not 1 <= n_val < n:
        raise TaskvecError(f"n_val={n_val} must be between 1 and {n - 1} for {n} items")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    emoji = [i for i in order if items[i].has_emoji]
    text = [i for i in order if not items[i].has_emoji]
    image_test = min(min_image_test, max(len(emoji) - 10, (len(emoji) + 1) // 2)) if emoji else 0
    n_val_emoji = min(n_val, len(emoji) - image_test)
    n_val_text = n_val - n_val_emoji
    if n_val_text > len(text):  # too few text-only items: validation takes more emoji items
        n_val_emoji += n_val_text - len(text)
        n_val_text = len(text)
    val_ids = emoji[:n_val_emoji] + text[:n_val_text]
    test_ids = emoji[n_val_emoji:] + text[n_val_text:]

    def with_split(i: int, split: str) -> Item:
        return Item(items[i].input, items[i].output, split, items[i].emoji)

    return [with_split(i, "val") for i in val_ids] + [with_split(i, "test") for i in test_ids]


# --- reading ---------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _read_json(p: Path) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    try:  # utf-8-sig: a leading byte-order mark (as some editors write) is not part of the JSON
        data = json.loads(p.read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:
        raise TaskvecError(f"{p}, field {err.args[0]!r}: appears twice in one object, and JSON would silently keep "
                           "only the last one: merge the two into one field") from None
    except json.JSONDecodeError as err:
        raise TaskvecError(f"{p}, line {err.lineno}: not valid JSON ({err.msg}): fix the syntax") from err
    except UnicodeDecodeError as err:
        raise TaskvecError(f"{p}: not UTF-8 text: save the file as UTF-8") from err
    if isinstance(data, list):
        data = {"items": data}
    if not isinstance(data, dict):
        raise TaskvecError(f"{p}: the top level must be an object with an \"items\" list (or the list itself)")
    for k in data:
        if k not in JSON_KEYS:
            raise TaskvecError(f"{p}, field {k!r}: unknown top-level field: use only {', '.join(JSON_KEYS)}")
    if "items" not in data:
        raise TaskvecError(f"{p}, field 'items': missing: add \"items\": [{{\"input\": ..., \"output\": ...}}, ...]")
    if not isinstance(data["items"], list):
        raise TaskvecError(f"{p}, field 'items': must be a list of objects")
    for k in ("name", "instruction", "description"):
        if k in data and not isinstance(data[k], str):
            raise TaskvecError(f"{p}, field {k!r}: must be a string, got {type(data[k]).__name__}")
    for k in ("task_words", "input_words"):
        if k in data and not (isinstance(data[k], list) and all(isinstance(w, str) and w for w in data[k])):
            raise TaskvecError(f"{p}, field {k!r}: must be a list of non-empty strings")
    rows = []
    for i, row in enumerate(data["items"]):
        where = f"item {i}"
        if not isinstance(row, dict):
            raise TaskvecError(f"{p}, {where}: must be an object with \"input\" and \"output\", "
                               f"got {type(row).__name__}")
        for k in row:
            if k not in ITEM_KEYS:
                raise TaskvecError(f"{p}, {where}, field {k!r}: unknown field: use {', '.join(ITEM_KEYS)}")
        for k, v in row.items():
            if v is not None and not isinstance(v, str):
                raise TaskvecError(f"{p}, {where}, field {k!r}: must be a string, got {type(v).__name__}")
        rows.append((where, row))
    return {k: v for k, v in data.items() if k != "items"}, rows


def _read_csv(p: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TaskvecError(f"{p}: not UTF-8 text: save the file as UTF-8") from err
    lines = text.splitlines(keepends=True)
    # strict: a quote left open is an error at the end of the data, not a cell that swallows the
    # rest of the file; the field limit is lifted (and restored) so a long cell is read, not refused
    reader = csv.reader(lines, strict=True)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, min(sys.maxsize, 2**31 - 1)))
    try:
        return _read_csv_rows(p, reader, lines)
    finally:
        csv.field_size_limit(limit)


def _next_row(p: Path, reader: Any, lines: list[str]) -> list[str]:
    start = reader.line_num + 1
    try:
        return next(reader)
    except csv.Error as err:
        end = reader.line_num
        quoted = lines[start - 1].count('"') % 2 == 1 if start <= len(lines) else False
        if quoted or "end of data" in str(err) or "expected after" in str(err):
            raise TaskvecError(
                f"{p}, line {start}: a quoted cell that starts on this line is not closed where it should be "
                f"(the csv reader ran to line {end}: {err}): close the quote, and write a quote inside a cell as "
                "two quotes \"\"") from None
        raise TaskvecError(f"{p}, line {start}: not valid CSV ({err}): fix this line") from None


def _read_csv_rows(p: Path, reader: Any, lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    try:
        header = [h.strip().lower() for h in _next_row(p, reader, lines)]
    except StopIteration:
        raise TaskvecError(f"{p}, line 1: the file is empty: add the header input,output[,emoji][,split]") from None
    for h in header:
        if h not in CSV_COLUMNS:
            raise TaskvecError(f"{p}, line 1, field {h!r}: unknown column: the header must be "
                               "input,output[,emoji][,split]")
    if len(set(header)) != len(header):
        raise TaskvecError(f"{p}, line 1: a column appears twice in the header {','.join(header)}")
    for need in ("input", "output"):
        if need not in header:
            raise TaskvecError(f"{p}, line 1, field {need!r}: missing column: the header must be "
                               "input,output[,emoji][,split]")
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            cells = _next_row(p, reader, lines)
        except StopIteration:
            break
        where = f"line {start}" if reader.line_num == start else f"line {start} (a quoted cell runs to line " \
                f"{reader.line_num})"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise TaskvecError(f"{p}, {where}: {len(cells)} cells but the header has {len(header)} "
                               f"columns ({','.join(header)}): quote cells that contain commas")
        rows.append((where, dict(zip(header, cells))))
    return rows


def _check_rows(p: Path, rows: list[tuple[str, dict[str, Any]]], *, check_emoji: bool) -> list[Item]:
    if not rows:
        raise TaskvecError(f"{p}: the task has no items: add at least two input/output rows")
    items, seen = [], {}
    for where, row in rows:
        vals = {}
        for k in ("input", "output"):
            v = row.get(k)
            if v is None:
                raise TaskvecError(f"{p}, {where}, field {k!r}: missing: every item needs an {k}")
            vals[k] = _check_text(p, where, k, v)
        emoji = (row.get("emoji") or "").strip()
        if emoji:
            _check_emoji(p, where, emoji, render=check_emoji)
        split = (row.get("split") or "").strip().lower()
        if split and split not in SPLITS:
            raise TaskvecError(f"{p}, {where}, field 'split': {split!r} is not a split: use 'val' or 'test' "
                               "(or leave the split out everywhere to draw one)")
        if vals["input"] in seen:
            raise TaskvecError(f"{p}, {where}, field 'input': {vals['input']!r} already appears at "
                               f"{seen[vals['input']]}: inputs must be unique")
        seen[vals["input"]] = where
        items.append(Item(vals["input"], vals["output"], split, emoji or None))
    with_split = [bool(it.split) for it in items]
    if any(with_split) and not all(with_split):
        where = rows[with_split.index(False)][0]
        raise TaskvecError(f"{p}, {where}, field 'split': missing while other items have one: give every "
                           "item a split, or none (a split is then drawn from seed=)")
    return items


def _check_text(p: Path, where: str, field: str, v: str) -> str:
    s = v.strip()
    if not s:
        raise TaskvecError(f"{p}, {where}, field {field!r}: empty: give every item a non-empty {field}")
    if "\n" in s or "\r" in s:
        raise TaskvecError(f"{p}, {where}, field {field!r}: contains a line break, which the Q:/A: template "
                           "uses between examples: put it on one line")
    from ..inputs.prompts import IMAGE

    if IMAGE in s:
        raise TaskvecError(f"{p}, {where}, field {field!r}: contains {IMAGE!r}, taskvec's image placeholder, which "
                           "a prompt would read as an image: give images in the 'emoji' field, and rephrase the text")
    if "A:" in s:
        raise TaskvecError(f"{p}, {where}, field {field!r}: contains 'A:', the template's answer marker, which "
                           "would add a delimiter: rephrase it")
    return s


def _check_emoji(p: Path, where: str, emoji: str, *, render: bool) -> None:
    if len(emoji) > 16 or any(c.isspace() or (c.isascii() and c.isalnum()) for c in emoji):
        raise TaskvecError(f"{p}, {where}, field 'emoji': {emoji!r} is not an emoji: give the emoji character "
                           "itself (e.g. 🐺, or a flag's two regional indicators 🇫🇷), or leave it empty")
    if render:
        from ..inputs.render import render_emoji

        try:
            render_emoji(emoji, 32)
        except TaskvecError as err:
            raise TaskvecError(f"{p}, {where}, field 'emoji': OpenMoji cannot draw {emoji!r} ({err}): pick an "
                               "emoji the font covers, or leave it empty") from None
