"""The :class:`Task` and :class:`Item` types: a task's items, fixed splits, pairs and lens categories."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..checks import integer
from ..errors import TaskvecError

#: The splits an item can belong to; ``"all"`` selects both.
SPLITS = ("val", "test")
#: The modalities :meth:`Task.pairs` can produce.
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class Item:
    """One example of a task.

    Attributes:
        input: the query text, e.g. ``"France"``.
        output: the expected answer, e.g. ``"Paris"``.
        split: ``"val"`` (demonstrations, layer choice) or ``"test"`` (reported numbers).
        emoji: the OpenMoji emoji that depicts the input (a flag is its two regional-indicator
            characters), or ``None`` for a text-only item.

    Example:
        >>> Item("France", "Paris", "val", "🇫🇷").has_emoji
        True
    """

    input: str
    output: str
    split: str
    emoji: str | None = None

    @property
    def has_emoji(self) -> bool:
        return bool(self.emoji)


@dataclass(frozen=True)
class Task:
    """A task: an instruction, items with fixed splits, and the logit-lens category words.

    Attributes:
        name: e.g. ``"country-capital"``.
        instruction: the instruction text (the paper's instruction-based task vector reads its last token).
        items: all items, validation items first; the order is fixed by the data file.
        task_words: words that summarise the task ("capital", "city"), the lens *task* phase.
        input_words: the lens *input* phase tokens, by default the delimiter ``":"``.
        description: one line about the data.
        source: where the task was read from (a built-in file or a user path).

    Example:
        >>> import taskvec
        >>> t = taskvec.get_task("country-capital")
        >>> t.instruction, len(t.pairs("val")), len(t.pairs("test"))
        ('The capital city of the country:', 30, 100)
    """

    name: str
    instruction: str
    items: tuple[Item, ...]
    task_words: tuple[str, ...] = ()
    input_words: tuple[str, ...] = (":",)
    description: str = ""
    source: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        s = self.sizes()
        return (f"Task({self.name!r}: {s['all']} items, val {s['val']}, test {s['test']}, "
                f"{s['with_emoji']} with emoji)")

    def select(self, split: str = "all", modality: str = "text", *, emoji_only: bool = False) -> list[Item]:
        """The items of ``split`` usable in ``modality`` (image: only items with an emoji), in file order.

        Example:
            >>> import taskvec
            >>> taskvec.get_task("animal-young").select("val")[0].split
            'val'
        """
        _check_split(split)
        _check_modality(modality)
        need_emoji = emoji_only or modality == "image"
        return [it for it in self.items
                if (split == "all" or it.split == split) and (it.has_emoji or not need_emoji)]

    def pairs(self, split: str, modality: str = "text", *, image_size: int = 224,
              emoji_only: bool = False) -> list[tuple[Any, str]]:
        """``(x, y)`` pairs of one split, ready for :func:`taskvec.sample_icl_prompts`.

        Args:
            split: ``"val"``, ``"test"`` or ``"all"``.
            modality: ``"text"`` (x is the input string) or ``"image"`` (x is a PIL RGB image of the
                item's OpenMoji emoji, ``image_size`` pixels square; items without emoji are left out).
            image_size: width and height of rendered images.
            emoji_only: with ``modality="text"``, keep only items that have an emoji, so text and image
                queries cover the same items.

        Returns:
            a list of ``(x, y)``; images are drawn anew on every call (about 1 ms each).

        Example:
            >>> import taskvec
            >>> taskvec.get_task("country-capital").pairs("val")[:1]   # doctest: +SKIP
            [('Peru', 'Lima')]
            >>> x, y = taskvec.get_task("country-capital").pairs("val", "image", image_size=64)[0]
            >>> x.size
            (64, 64)
        """
        if modality == "image":
            integer("image_size", image_size, low=8, fix="pixels per side; the paper uses 224")
        items = self.select(split, modality, emoji_only=emoji_only)
        if modality == "text":
            return [(it.input, it.output) for it in items]
        from ..inputs.render import render_emoji

        return [(render_emoji(it.emoji, image_size), it.output) for it in items]  # type: ignore[arg-type]

    def labels(self, split: str = "all") -> list[str]:
        """The distinct outputs of ``split``, in order of first appearance.

        Example:
            >>> import taskvec
            >>> "Euro" in taskvec.get_task("country-currency").labels()
            True
        """
        return list(dict.fromkeys(it.output for it in self.select(split)))

    def phase_categories(self) -> dict[str, list[str]]:
        """Token categories of the paper's three phases, for :meth:`taskvec.LensResult.phases`.

        Returns:
            ``{"input": [":"], "task": task summary words, "answer": the distinct labels}``.

        Example:
            >>> import taskvec
            >>> cats = taskvec.get_task("country-capital").phase_categories()
            >>> cats["input"], cats["task"][:2], "Paris" in cats["answer"]
            ([':'], ['capital', 'city'], True)
        """
        if not self.task_words:
            raise TaskvecError(
                f"task {self.name!r} has no task words for the lens task phase: add \"task_words\" "
                "(e.g. [\"capital\", \"city\"]) to its JSON file, or pass task_words= to load_task"
            )
        return {"input": list(self.input_words), "task": list(self.task_words), "answer": self.labels()}

    def sizes(self) -> dict[str, int]:
        """Item counts: ``all``, ``val``, ``test``, ``with_emoji``, ``val_emoji``, ``test_emoji``.

        Example:
            >>> import taskvec
            >>> taskvec.get_task("country-capital").sizes()["with_emoji"]
            130
        """
        val = [it for it in self.items if it.split == "val"]
        test = [it for it in self.items if it.split == "test"]
        return {
            "all": len(self.items), "val": len(val), "test": len(test),
            "with_emoji": sum(it.has_emoji for it in self.items),
            "val_emoji": sum(it.has_emoji for it in val), "test_emoji": sum(it.has_emoji for it in test),
        }

    def to_dict(self) -> dict[str, Any]:
        """The task in the JSON file schema (see :mod:`taskvec.tasks`)."""
        items = []
        for it in self.items:
            d = {"input": it.input, "output": it.output}
            if it.emoji:
                d["emoji"] = it.emoji
            d["split"] = it.split
            items.append(d)
        out: dict[str, Any] = {"name": self.name, "instruction": self.instruction}
        if self.description:
            out["description"] = self.description
        out["task_words"] = list(self.task_words)
        if tuple(self.input_words) != (":",):
            out["input_words"] = list(self.input_words)
        out["items"] = items
        return out


def _check_split(split: str) -> None:
    if not isinstance(split, str) or split not in (*SPLITS, "all"):
        raise TaskvecError(f"split {split!r} does not exist: use 'val', 'test' or 'all'")


def _check_modality(modality: str) -> None:
    if not isinstance(modality, str) or modality not in MODALITIES:
        raise TaskvecError(f"modality {modality!r} is not supported: use 'text' or 'image'")
