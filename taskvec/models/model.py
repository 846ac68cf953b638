"""`Model`: a loaded transformers model, its nnsight wrapper, its processor and its architecture row."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..checks import count, integer
from ..errors import TaskvecError
from ..inputs.positions import delimiter_positions, marker_ids
from ..inputs.prompts import GENERIC, IMAGE, Prompt, Template, prompt_list
from ..inputs.render import to_rgb
from .architectures import Architecture, resolve


def module_placement(module: Any) -> tuple[torch.device, torch.dtype]:
    """Where a module computes: ``(device, dtype)`` of its first parameter, or, for a module that
    accelerate offloads (weights on the meta device until its forward), its hook's execution
    device. Quantized weights report their compute dtype, not their storage dtype.
    """
    hook = getattr(module, "_hf_hook", None)
    params = list(module.parameters())
    dtype = next((p.dtype for p in params if p.dtype.is_floating_point), torch.float32)
    compute = getattr(module, "compute_dtype", None)
    if isinstance(compute, torch.dtype):
        dtype = compute
    device = getattr(hook, "execution_device", None)
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    return torch.device(device) if not isinstance(device, torch.device) else device, dtype


def _chunk_logits(model: "Model", hidden: torch.Tensor, chunk: int) -> Any:
    """Float32 full-vocabulary logits of ``chunk`` rows of ``hidden`` at a time (no grad)."""
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            yield model.unembed(hidden[start : start + chunk]).float()


def _top_tokens(model: "Model", hidden: torch.Tensor, top_k: int,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    values, ids, lse = [], [], []
    for logits in _chunk_logits(model, hidden, chunk):
        v, i = logits.topk(top_k, dim=-1)
        values.append(v.cpu())
        ids.append(i.cpu())
        lse.append(torch.logsumexp(logits, dim=-1).cpu())
    return torch.cat(values), torch.cat(ids), torch.cat(lse)


def _token_probs(model: "Model", hidden: torch.Tensor, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([torch.softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu()
                      for logits in _chunk_logits(model, hidden, chunk)])


@dataclass
class Batch:
    """Processed inputs for a list of prompts, padded on the left.

    Attributes:
        inputs: what the model's forward takes (``input_ids`` ``[batch, seq]``, ``attention_mask``,
            ``pixel_values``, ...).
        prompts: the prompts, in batch order.
    """

    inputs: dict[str, torch.Tensor]
    prompts: list[Prompt]
    #: token positions already resolved for this batch (``at`` -> ``[batch]`` long), filled by
    #: :func:`taskvec.sites.positions.resolve` so a layer sweep finds delimiters once per batch
    positions: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Model:
    """A model ready for taskvec: transformers module, nnsight wrapper, preprocessors, adapter row.

    Use :func:`taskvec.load` to build one. Module access goes through the architecture row, so
    the same code runs on Gemma-3, LLaVA, Idefics2, Qwen2-VL or Fuyu.

    Attributes:
        name: what it was loaded from.
        hf: the transformers model (``torch.nn.Module``).
        nn: the ``nnsight.TransformersModel`` wrapping ``hf``; trace through it.
        tokenizer: the tokenizer (for a VLM, the processor's tokenizer).
        processor: the multimodal processor, or ``None`` for a text-only model.
        arch: the :class:`~taskvec.models.architectures.Architecture` row.
        remote: ``False`` (run here), ``True`` (run on NDIF through nnsight's remote execution) or
            ``"local"`` (nnsight's offline simulation of NDIF: each request is serialised and
            deserialised as the server would, then run here). See :meth:`request`.
        weights: what exactly was loaded: an embedded model's built folder (its name carries a
            digest of the shipped files), a local folder's absolute path with a digest of its files, or the hub id with its
            revision. See :attr:`key`.

    Example:
        >>> m = taskvec.load("gemma-3-270m")      # doctest: +SKIP
        >>> m.n_layers, m.d_model, m.n_heads, m.d_head  # doctest: +SKIP
        (18, 640, 4, 256)
    """

    name: str
    hf: Any
    nn: Any
    tokenizer: Any
    processor: Any
    arch: Architecture
    remote: bool | str = False
    weights: str = ""
    chat: Template | None = None
    _marker_cache: dict = field(default_factory=dict, repr=False)
    #: > 0 while :meth:`request` runs: traces opened inside are part of its one request
    _in_request: int = field(default=0, repr=False)

    # --- a remote request ships the model by reference, never by value ------------------------
    def __getstate__(self) -> dict[str, Any]:
        """What a remote request serialises: everything but ``hf``, which is ``nn``'s module.

        nnsight references a module by id only once its envoy has been pickled; ``hf`` comes first
        in the fields, so a request's first payload carried the whole transformers model by value
        (25.7 MB for the tiny Llama, against 81 kB after) and, unpickled, imported what its modules
        import (e.g. ``kernels``) inside the request, where that import fails.
        """
        state = self.__dict__.copy()
        state["hf"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.hf = self.nn._module  # the server's own module (nnsight resolves the envoy by id)

    # --- shape facts -------------------------------------------------------------------------
    @property
    def text_config(self) -> Any:
        return self.hf.config.get_text_config()

    @property
    def n_layers(self) -> int:
        return len(resolve(self.hf, self.arch.layers))

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def d_head(self) -> int:
        hd = getattr(self.text_config, "head_dim", None)
        return int(hd) if hd else self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        """How many tokens the model scores (the unembedding's rows): the largest ``top_k``."""
        head = resolve(self.hf, self.arch.lm_head)
        weight = getattr(head, "weight", None)
        if weight is not None:
            return int(weight.shape[0])
        return int(self.text_config.vocab_size)

    @property
    def is_vlm(self) -> bool:
        return self.arch.is_vlm

    @property
    def device(self) -> torch.device:
        """The first parameter's device. With ``device_map`` layers live on several devices: every
        write goes to the device of the activation it meets, never to this one."""
        return next(self.hf.parameters()).device

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype floating inputs (pixels, image patches) are given in: the input embedding's
        (float32 where it is not a floating type, e.g. quantized storage)."""
        weight = getattr(self.hf.get_input_embeddings(), "weight", None)
        return weight.dtype if weight is not None and weight.dtype.is_floating_point else torch.float32

    @property
    def max_length(self) -> int | None:
        return getattr(self.text_config, "max_position_embeddings", None)

    @property
    def key(self) -> str:
        """These weights, as a file-name-safe string: resumable stores are keyed by it, so results
        saved for one set of weights (e.g. before the embedded VLM was retrained) are never reused
        for another.

        Example:
            >>> taskvec.load("gemma-3-270m-vlm").key                    # doctest: +SKIP
            'gemma-3-270m-vlm-v1-1c97621214'
        """
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.weights or self.name).strip("_")

    def __repr__(self) -> str:
        kind = "VLM" if self.is_vlm else "LLM"
        return (
            f"Model({self.name!r}, {type(self.hf).__name__}, {kind}, layers={self.n_layers}, "
            f"d_model={self.d_model}, heads={self.n_heads}x{self.d_head})"
        )

    # --- modules (plain or traced) ------------------------------------------------------------
    def layers(self, traced: bool = True) -> Any:
        """The text decoder layers: nnsight envoys if ``traced`` else plain modules."""
        return resolve(self.nn if traced else self.hf, self.arch.layers)

    def layer(self, index: int, traced: bool = True) -> Any:
        """One decoder layer; ``index`` is 0-based and checked."""
        return self.layers(traced)[self.check_layer(index)]

    def head_input(self, index: int) -> Any:
        """Envoy of layer ``index``'s attention output projection; its ``.input`` is ``[b, s, H*Dh]``."""
        return resolve(self.layer(index), self.arch.out_proj)

    def check_layer(self, index: int, name: str = "layer") -> int:
        """Return ``index`` if it names a decoder layer (negative counts from the end), else raise.

        Integers only (numpy and torch integers count): ``"3"``, ``2.5`` or ``True`` is refused,
        with a message naming ``name``, the value and the layers the model has.
        """
        n = self.n_layers
        try:
            index = integer(name, index)
        except TaskvecError:
            raise TaskvecError(f"{name}={index!r} is not an integer (a str, float or bool is never a layer): pass a "
                               f"layer index in 0..{n - 1} ({self.name} has {n} layers)") from None
        if not -n <= index < n:
            raise TaskvecError(f"{name}={index} is out of range: {self.name} has layers 0..{n - 1} "
                               f"(or -{n}..-1 from the end)")
        return index % n

    def check_layers(self, layers: int | Sequence[int] | None, name: str = "layers") -> list[int]:
        """The one layer-list check: ``None`` is every layer, one integer is that layer, a list is
        its layers; returned 0-based, sorted (forward order, as nnsight reads them), without repeats.

        Integers only (numpy and torch integers count): ``"12"``, ``2.5`` or ``True`` is refused.
        """
        if layers is None:
            return list(range(self.n_layers))
        n = self.n_layers
        fix = f"pass a layer index in 0..{n - 1}, a list of them, or None for every layer"
        if isinstance(layers, (str, bytes)):
            raise TaskvecError(f"{name}={layers!r} is a string, not a layer: {fix}")
        if getattr(layers, "ndim", None) == 0 or not hasattr(layers, "__iter__"):
            return [self.check_layer(layers, name)]
        chosen = list(layers)
        if not chosen:
            raise TaskvecError(f"{name}={layers!r} names no layer: {fix}")
        return sorted({self.check_layer(layer, f"{name}[{i}]") for i, layer in enumerate(chosen)})

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of residual-stream vectors: final norm, unembedding, soft-capping if configured.

        Args:
            hidden: ``[..., d_model]``, on any device and in any dtype (it goes to the final
                norm's device and dtype first).

        Returns:
            ``[..., vocab]`` logits, exactly as the model's last layer would give them, on the
            unembedding's device. Reads the weights: on a remote model call it inside
            :meth:`request` (see :meth:`top_tokens`).
        """
        norm = resolve(self.hf, self.arch.norm)
        device, dtype = module_placement(norm)
        logits = resolve(self.hf, self.arch.lm_head)(norm(hidden.to(device=device, dtype=dtype)))
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @staticmethod
    def residual(output: Any) -> torch.Tensor:
        """The hidden-state tensor of a decoder layer's output (some layers return a tuple)."""
        return output[0] if isinstance(output, tuple) else output

    # --- inputs --------------------------------------------------------------------------------
    def image_token(self) -> str:
        """The text the processor expands into one image's embeddings."""
        tok = self.arch.image_token
        if tok is None:
            raise TaskvecError(f"{self.name} is a text-only model: it cannot take image prompts; load a VLM")
        if tok.startswith("processor:"):
            return getattr(self.processor, tok.split(":", 1)[1])
        return tok

    def encode(self, prompts: Sequence[Prompt | str]) -> Batch:
        """Tokenize (and for images, process) prompts into one left-padded batch.

        Example:
            >>> b = m.encode(["Q:France\\nA:", "Q:Peru\\nA:"])   # doctest: +SKIP
            >>> b.input_ids.shape                              # doctest: +SKIP
            torch.Size([2, 7])
        """
        prompts = prompt_list(prompts)
        images = [[to_rgb(im) for im in p.images] for p in prompts]
        texts = [p.text for p in prompts]
        if any(images):
            limit = self.arch.max_images_per_prompt
            for i, ims in enumerate(images):
                if limit is not None and len(ims) > limit:
                    raise TaskvecError(
                        f"prompt {i} has {len(ims)} images but {type(self.processor).__name__} takes at most {limit} "
                        f"per prompt: use text demonstrations with an image query (xBase), or a VLM that takes "
                        "several images (Idefics2, LLaVA, Qwen2-VL, ...)"
                    )
            img_tok = self.image_token()
            texts = [t.replace(IMAGE, img_tok) for t in texts]
            if self.arch.images_per_prompt_nested:
                imgs: Any = images
            else:
                imgs = [im for ims in images for im in ims]
            if not all(images) and self.arch.images_per_prompt_nested:
                raise TaskvecError(
                    "this processor needs every prompt in a batch to have images, or none: batch image and "
                    "text-only prompts separately"
                )
            enc = self.processor(text=texts, images=imgs, padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        # image tensors in the model's dtype: most VLMs cast their pixels themselves, Fuyu's patch
        # embedding does not (a bf16 model would meet float32 patches)
        dtype = self.input_dtype
        inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        limit = self.max_length
        if limit and inputs["input_ids"].shape[1] > limit:
            raise TaskvecError(
                f"a prompt has {inputs['input_ids'].shape[1]} tokens, more than {self.name}'s context of {limit}: "
                "use fewer or shorter demonstrations"
            )
        return Batch(inputs=inputs, prompts=prompts)

    def delimiters(self, batch: Batch, template: Template | None = None) -> list[list[int]]:
        """Positions (in processed tokens) of every answer-marker delimiter, per prompt.

        The last entry of each list is the query's delimiter; the one before it is the last
        demonstration's (where the paper reads task vectors).
        """
        if template is None:
            template = self._batch_template(batch.prompts)
        key = (template.query, template.marker)
        if key not in self._marker_cache:
            self._marker_cache[key] = marker_ids(self.tokenizer, template)
        return delimiter_positions(batch.input_ids, self._marker_cache[key], [p.n_markers for p in batch.prompts])

    @staticmethod
    def _batch_template(prompts: Sequence[Prompt]) -> Template:
        """The one template a batch's delimiters are found with; free text and mixed templates are refused."""
        for i, p in enumerate(prompts):
            if p.template is None:
                raise TaskvecError(
                    f"prompt {i} ({p.text[:40]!r}) is free text (a str or Prompt(text)), so it has no marked query "
                    "or demonstration: build queries with taskvec.icl_prompt([], x) (or taskvec.zero_shot(pairs)) "
                    "and few-shot prompts with taskvec.icl_prompt(demos, x)"
                )
        first = prompts[0].template
        assert first is not None
        for i, p in enumerate(prompts):
            t = p.template
            assert t is not None
            if (t.query, t.marker) != (first.query, first.marker):
                raise TaskvecError(
                    f"prompts 0 and {i} of one batch use different templates ({first.name!r}, marker "
                    f"{first.marker!r}; {t.name!r}, marker {t.marker!r}): a batch is read with one template; build "
                    "every prompt with the same template= or run them separately"
                )
        return first or GENERIC

    def position(self, batch: Batch, position: int) -> torch.Tensor:
        """Absolute index, per prompt, of a position counted on each prompt's own tokens.

        ``-1`` is each prompt's last token whatever the padding; ``0`` its first real token.
        Returns a ``[batch]`` long tensor; raises if a prompt is shorter than asked.
        """
        position = integer("position", position, fix="pass a token index such as -1 (the last token)")
        mask = batch.inputs.get("attention_mask")
        ids = batch.input_ids
        if mask is None:
            mask = torch.ones_like(ids)
        lengths = mask.sum(dim=1)
        out = []
        for i, n in enumerate(lengths.tolist()):
            if not -n <= position < n:
                raise TaskvecError(f"position={position} is outside prompt {i}, which has {n} tokens: pass a position "
                                   f"in -{n}..{n - 1} (-1 is the last token)")
            real = mask[i].nonzero().flatten()
            out.append(int(real[position]))
        return torch.tensor(out, dtype=torch.long)

    # --- tracing -------------------------------------------------------------------------------
    def trace_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """Keyword arguments for ``nn.trace``/``nn.generate`` (adds ``remote=`` when set, except
        inside a :meth:`request`, whose traces are part of the one remote job)."""
        if self.remote and not self._in_request:
            kwargs.setdefault("remote", self.remote)
        return kwargs

    def request(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, as one request to NDIF when the model is remote.

        Locally this is a plain call. On a remote model (``remote=True`` or ``"local"``) the call
        runs in one nnsight session: every trace ``fn`` opens, and the plain torch code between
        them (e.g. decoding with the unembedding), runs on the server, and the return value comes
        back. ``fn`` must therefore use only what the server has (torch, numpy, transformers,
        einops, nnsight and taskvec's own code, which :func:`taskvec.load` registers to ship by
        value): no pandas, tqdm or plotly. Nested requests are one request.

        Example:
            >>> m = taskvec.load("gemma-3-270m", remote="local")                          # doctest: +SKIP
            >>> m.request(lambda: m.unembed(torch.zeros(640)).argmax()).item()            # doctest: +SKIP
            2
        """
        if not self.remote or self._in_request:
            return fn(*args, **kwargs)
        import nnsight

        self._in_request += 1
        try:
            with self.nn.session(remote=self.remote):
                result = nnsight.save(fn(*args, **kwargs))
        finally:
            self._in_request -= 1
        return result

    def top_tokens(self, hidden: torch.Tensor, top_k: int,
                   chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode residual-stream vectors to their ``top_k`` tokens (one request on a remote model).

        Args:
            hidden: ``[n, d_model]``.
            chunk: rows decoded at once (full-vocabulary logits exist for ``chunk`` rows at a time).

        Returns:
            ``(logits [n, top_k], ids [n, top_k], logsumexp [n])``, float32 / long, on the CPU.
            Full-vocabulary logits exist only for these ``n`` rows, on the model's side.
        """
        return self.request(_top_tokens, self, hidden, top_k, chunk)

    def token_probs(self, hidden: torch.Tensor, ids: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Probabilities of tokens ``ids`` ``[k]`` for residual vectors ``hidden`` ``[n, d_model]``:
        ``[n, k]`` float32 on the CPU (one request on a remote model)."""
        return self.request(_token_probs, self, hidden, ids, chunk)

    def trace(self, batch: Batch | None = None, **kwargs: Any) -> Any:
        """nnsight tracer for one forward over a processed batch: ``with m.trace(batch): ...``.

        Returns nnsight's own tracer (nnsight reads the ``with`` block's source, so it cannot be
        wrapped in another context manager). Extra keywords go to the model's forward
        (e.g. ``logits_to_keep=1``) or to nnsight (``remote=True``). Without ``batch``, use
        ``tracer.invoke(...)`` blocks inside.
        """
        args = () if batch is None else (dict(batch.inputs),)
        return self.nn.trace(*args, **self.trace_kwargs(**kwargs))

    def generate(self, batch: Batch, max_new_tokens: int = 1, **kwargs: Any) -> Any:
        """nnsight generation tracer, greedy by default: ``with m.generate(batch, 4) as tr:``.

        Interventions in the block apply to the first forward (the prompt) unless written per
        step with ``tr.iter``; ``tr.result`` holds prompt + new ids.
        """
        max_new_tokens = count("max_new_tokens", max_new_tokens, fix="the number of tokens to generate")
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("min_new_tokens", max_new_tokens)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is not None:
            kwargs.setdefault("pad_token_id", pad)
        # nnsight's `generate` decides "with block or direct call" from its caller's frame, which
        # here would be this method; open the trace with the undecorated method instead, so the
        # caller's `with` block is the one captured (at __enter__), exactly as for `trace`.
        run = type(self.nn).generate.__wrapped__.__get__(self.nn)
        return self.nn.trace(dict(batch.inputs), fn=run, max_new_tokens=max_new_tokens,
                             **self.trace_kwargs(**kwargs))
