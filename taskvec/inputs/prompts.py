"""Prompts: the generic Q/A template, the model's chat template, ICL and instruction prompts.

A :class:`Prompt` is text plus the images it refers to. Images are written into the text as the
sentinel :data:`IMAGE`; :meth:`taskvec.Model.encode` swaps it for the architecture's own image
token, so the processor can expand it into however many embeddings the model uses. Positions are
never computed here: they come from the processed ``input_ids`` (see :mod:`taskvec.inputs.positions`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..checks import count, integer
from ..errors import TaskvecError

#: Stands for one image inside a prompt's text; replaced by the model's image token at encode time.
IMAGE = "<taskvec:image>"


@dataclass(frozen=True)
class Template:
    """How demonstrations and the query are written.

    Attributes:
        name: short name, used in result tables.
        demo: format of one demonstration, with ``{x}`` and ``{y}``.
        query: format of the query, with ``{x}``; it ends with the answer marker.
        marker: the answer marker; its last token is the *delimiter* (the paper's ``:`` of ``A:``).
        prefix: text put once before everything (e.g. a system turn); usually empty.

    Example:
        >>> GENERIC.demo.format(x="France", y="Paris") + GENERIC.query.format(x="Japan")
        'Q:France\\nA:Paris\\n\\nQ:Japan\\nA:'
    """

    name: str
    demo: str
    query: str
    marker: str
    prefix: str = ""

    def __post_init__(self) -> None:
        for key in ("name", "demo", "query", "marker", "prefix"):
            if not isinstance(getattr(self, key), str):
                raise TaskvecError(f"Template {key}={getattr(self, key)!r} is a {type(getattr(self, key)).__name__}: "
                                   "pass a str")
        if not self.marker:
            raise TaskvecError(f"template {self.name!r}: marker='' is empty: pass the answer marker, e.g. 'A:'")
        if not self.query.endswith(self.marker):
            raise TaskvecError(
                f"template {self.name!r}: the query format {self.query!r} must end with the answer marker "
                f"{self.marker!r}, since the delimiter is the marker's last token"
            )
        if "{y}" in self.query or "{x}" not in self.query or "{y}" not in self.demo:
            raise TaskvecError(f"template {self.name!r}: demo needs {{x}} and {{y}}, query needs {{x}} only")


#: The generic template of Todd et al. (2024), used by the cross-modal paper: no space after ``:``.
GENERIC = Template(name="generic", demo="Q:{x}\nA:{y}\n\n", query="Q:{x}\nA:", marker="A:")


@dataclass(frozen=True)
class Prompt:
    """One prompt: text (with :data:`IMAGE` sentinels) and its images, in order.

    Attributes:
        text: the prompt text.
        images: PIL images, one per :data:`IMAGE` in ``text``.
        n_demos: demonstrations in the prompt (0 for a zero-shot query or an instruction).
        has_query: the prompt ends with a query's answer marker.
        label: the expected answer of the query, if known.
        template: the template the prompt was written with (``None`` for free text).
        demo_labels: the demonstrations' answers (for the *Random*/majority baseline).

    Example:
        >>> Prompt("Q:France\\nA:").n_images
        0
    """

    text: str
    images: tuple = ()
    n_demos: int = 0
    has_query: bool = False
    label: str | None = None
    template: Template | None = None
    demo_labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TaskvecError(f"Prompt text={self.text!r} is a {type(self.text).__name__}: pass the prompt's text "
                               "as a str")
        if isinstance(self.images, (str, bytes)) or not isinstance(self.images, Sequence):
            raise TaskvecError(f"Prompt images={self.images!r}: pass a tuple of PIL images, one per taskvec.IMAGE")
        object.__setattr__(self, "images", tuple(self.images))
        for i, im in enumerate(self.images):
            if not _is_image(im):
                raise TaskvecError(
                    f"Prompt images[{i}]={im!r} is a {type(im).__name__}, not a PIL image: open a file with "
                    "PIL.Image.open(path) and pass the image itself"
                )
        if self.text.count(IMAGE) != len(self.images):
            raise TaskvecError(
                f"prompt has {self.text.count(IMAGE)} image placeholders but {len(self.images)} images: "
                "pass one image per taskvec.IMAGE in the text"
            )

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_markers(self) -> int:
        """How many answer markers the prompt should contain."""
        return self.n_demos + int(self.has_query)


def _is_image(x: Any) -> bool:
    from .render import is_image

    return is_image(x)


def _slot(x: Any, name: str = "input") -> tuple[str, tuple]:
    if _is_image(x):
        return IMAGE, (x,)
    if not isinstance(x, str):
        raise TaskvecError(f"{name}={x!r} is a {type(x).__name__}: an example input must be a string or a PIL image")
    if IMAGE in x:
        raise TaskvecError(f"{name}={x!r} contains the text {IMAGE!r}, taskvec's image placeholder: pass the PIL "
                           "image itself as the input, or rephrase the text")
    return x, ()


def _answer(y: Any, name: str) -> str:
    if not isinstance(y, str):
        raise TaskvecError(f"{name}={y!r} is a {type(y).__name__}: an answer must be a string")
    return y


def _pair(pair: Any, name: str) -> tuple[Any, str]:
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise TaskvecError(f"{name}={pair!r}: each example must be an (input, answer) pair, e.g. ('France', 'Paris')")
    return pair[0], _answer(pair[1], f"{name} answer")


def _pairs(pairs: Any, name: str) -> list[tuple[Any, str]]:
    if isinstance(pairs, (str, bytes, Prompt)) or not isinstance(pairs, Sequence):
        raise TaskvecError(f"{name}={pairs!r}: pass a list of (input, answer) pairs, e.g. [('France', 'Paris')]")
    return [_pair(p, f"{name}[{i}]") for i, p in enumerate(pairs)]


def _template(template: Any) -> Template:
    if not isinstance(template, Template):
        raise TaskvecError(f"template={template!r}: pass a taskvec.Template (taskvec.GENERIC or "
                           "taskvec.chat_template(tokenizer))")
    return template


def prompt_list(prompts: Any, name: str = "prompts") -> list[Prompt]:
    """The one check of a list of prompts at a public function's boundary: a non-empty list of
    strings or :class:`Prompt` objects (strings become free-text prompts).

    Example:
        >>> [p.text for p in prompt_list(["Q:France\\nA:"])]
        ['Q:France\\nA:']
        >>> prompt_list("Q:France\\nA:")
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: prompts='Q:France\\nA:' is one prompt: pass a list of prompts, e.g. [prompt]
    """
    if isinstance(prompts, (str, Prompt)):
        raise TaskvecError(f"{name}={prompts!r} is one prompt: pass a list of prompts, e.g. [prompt]")
    if prompts is None or isinstance(prompts, bytes) or not hasattr(prompts, "__iter__"):
        raise TaskvecError(f"{name}={prompts!r}: pass a list of prompts (strings or taskvec.Prompt objects)")
    out = list(prompts)
    if not out:
        raise TaskvecError(f"no prompts given: {name}=[] is empty: pass at least one prompt")
    for i, p in enumerate(out):
        if not isinstance(p, (str, Prompt)):
            raise TaskvecError(f"{name}[{i}]={p!r} is a {type(p).__name__}: pass strings or taskvec.Prompt objects "
                               "(build them with taskvec.icl_prompt or taskvec.zero_shot)")
    return [Prompt(p) if isinstance(p, str) else p for p in out]


def icl_prompt(
    demos: Sequence[tuple[Any, str]],
    query: Any | None,
    *,
    label: str | None = None,
    template: Template = GENERIC,
) -> Prompt:
    """Build a few-shot prompt: demonstrations then (optionally) a query.

    Args:
        demos: ``(x, y)`` pairs; ``x`` is a string or a PIL image.
        query: the query input (string or PIL image), or ``None`` for demonstrations only.
        label: the query's expected answer, kept on the prompt for scoring.
        template: :data:`GENERIC` (default) or :func:`chat_template` of a model.

    Example:
        >>> p = icl_prompt([("France", "Paris"), ("Japan", "Tokyo")], "Italy", label="Rome")
        >>> p.text
        'Q:France\\nA:Paris\\n\\nQ:Japan\\nA:Tokyo\\n\\nQ:Italy\\nA:'
        >>> p.n_markers
        3
    """
    template = _template(template)
    demos = _pairs(demos, "demos")
    if label is not None:
        _answer(label, "label")
    parts, images = [template.prefix], []
    for i, (x, y) in enumerate(demos):
        xs, im = _slot(x, f"demos[{i}] input")
        parts.append(template.demo.format(x=xs, y=y))
        images.extend(im)
    if query is not None:
        qs, im = _slot(query, "query")
        parts.append(template.query.format(x=qs))
        images.extend(im)
    return Prompt(
        text="".join(parts),
        images=tuple(images),
        n_demos=len(demos),
        has_query=query is not None,
        label=label,
        template=template,
        demo_labels=tuple(y for _, y in demos),
    )


def instruction_prompt(instruction: str) -> Prompt:
    """The instruction alone (the paper's instruction-based task vector reads its last token).

    Example:
        >>> instruction_prompt("The capital city of the country:").text
        'The capital city of the country:'
    """
    if not isinstance(instruction, str):
        raise TaskvecError(f"instruction={instruction!r} is a {type(instruction).__name__}: pass the task's "
                           "instruction text as a str (e.g. task.instruction)")
    if not instruction.strip():
        raise TaskvecError("instruction='' is empty: pass the task's instruction text (e.g. task.instruction)")
    return Prompt(text=instruction)


def sample_icl_prompts(
    items: Sequence[tuple[Any, str]],
    queries: Sequence[tuple[Any, str]],
    *,
    n_shots: int = 5,
    seed: int = 0,
    template: Template = GENERIC,
) -> list[Prompt]:
    """For each query, an ``n_shots`` prompt whose demonstrations are drawn from ``items``.

    A query is never its own demonstration (items with the same input are excluded). Draws come
    from ``random.Random(seed)``, so the same call returns the same prompts.

    Example:
        >>> pairs = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")]
        >>> ps = sample_icl_prompts(pairs, pairs[:2], n_shots=2, seed=1)
        >>> [p.label for p in ps], [p.n_demos for p in ps]
        (['Paris', 'Tokyo'], [2, 2])
    """
    n_shots = count("n_shots", n_shots, fix="for query-only prompts use taskvec.zero_shot")
    seed = integer("seed", seed)
    template = _template(template)
    items, queries = _pairs(items, "items"), _pairs(queries, "queries")
    rng = random.Random(seed)
    prompts = []
    for qx, qy in queries:
        pool = [it for it in items if not _same_input(it[0], qx)]
        if len(pool) < n_shots:
            raise TaskvecError(
                f"asked for {n_shots} demonstrations but only {len(pool)} items differ from the query: "
                "lower n_shots or pass more items"
            )
        prompts.append(icl_prompt(rng.sample(pool, n_shots), qx, label=qy, template=template))
    return prompts


def zero_shot(pairs: Sequence[tuple[Any, str]], template: Template = GENERIC) -> list[Prompt]:
    """Query-only prompts (``Q:{x}\\nA:`` with the generic template), one per pair, labelled with ``y``.

    Example:
        >>> [p.text for p in zero_shot([("France", "Paris")])], zero_shot([("France", "Paris")])[0].label
        (['Q:France\\nA:'], 'Paris')
    """
    return [icl_prompt([], x, label=y, template=template) for x, y in _pairs(pairs, "pairs")]


def _same_input(a: Any, b: Any) -> bool:
    """Whether two inputs are the same item: equal strings, or images with the same pixels (a task's
    images are rendered anew on every ``pairs()`` call, so the same item is a different object)."""
    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if all(hasattr(x, "tobytes") and hasattr(x, "size") and hasattr(x, "mode") for x in (a, b)):
        return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
    return False


def chat_template(tokenizer: Any, *, system: str | None = None) -> Template:
    """The model's own chat template as a :class:`Template` (user turn = x, assistant turn = y).

    The marker is the template's generation prompt (e.g. ``<start_of_turn>model\\n`` for Gemma),
    so the delimiter is its last token. The tokenizer adds its BOS itself, so the template's
    leading BOS is dropped.

    Example:
        >>> import taskvec
        >>> m = taskvec.load("gemma-3-270m")                  # doctest: +SKIP
        >>> chat_template(m.tokenizer).marker                  # doctest: +SKIP
        '<start_of_turn>model\\n'
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TaskvecError(
            "this tokenizer has no chat template: use taskvec.GENERIC, or set tokenizer.chat_template first"
        )
    A, B, C, D = ("\x02%s\x02" % c for c in "ABCD")
    sys = [{"role": "system", "content": system}] if system else []

    def render(*turns: str, gen: bool = False) -> str:
        roles = ["user", "assistant"]
        msgs = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
        return tokenizer.apply_chat_template(sys + msgs, tokenize=False, add_generation_prompt=gen)

    def escape(s: str) -> str:
        return s.replace("{", "{{").replace("}", "}}")

    first = render(A, B)
    two, with_query = render(A, B, C, D), render(A, B, C, gen=True)
    if not (two.startswith(first) and with_query.startswith(first)):
        raise TaskvecError("the chat template does not render turns incrementally; write a taskvec.Template by hand")
    demo = escape(two[len(first):]).replace(C, "{x}").replace(D, "{y}")
    query = escape(with_query[len(first):]).replace(C, "{x}")
    marker = render(C, gen=True)[len(render(C)):]
    first_demo = demo.format(x=A, y=B)
    if not marker or not first.endswith(first_demo):
        raise TaskvecError("could not read a demonstration format and an answer marker from this chat template")
    prefix = first[: len(first) - len(first_demo)]
    bos = getattr(tokenizer, "bos_token", None) or ""
    if bos and prefix.startswith(bos):
        prefix = prefix[len(bos):]
    return Template(name="chat", demo=demo, query=query, marker=marker, prefix=prefix)


#: Gemma's turn format, for Gemma checkpoints whose tokenizer carries no chat template (the GGUF one).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = 'user' %}{% endif %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
