"""What the GPU tier's test modules share (the fixtures are in conftest.py)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

import taskvec

#: where the tier runs the models under test: "cuda" (the tier's point) or "cpu" (a dry run)
DEVICE = os.environ.get("TASKVEC_GPU_TIER_DEVICE", "cuda")

#: share of queries on which two runs that should agree (CUDA vs CPU, bf16 vs fp32) must predict the
#: same first token
AGREEMENT = 0.9

#: a random tiny model's top-1 logit often beats the second by a hair (median 0.1 standard deviations
#: of the query's logits, some by 0.001), and bf16 rounding moves logits by ~0.03 of one: a bf16
#: prediction whose float32 logit is within TIE standard deviations of the float32 top-1 is a near-tie,
#: counted as agreeing. A broken half-precision path predicts tokens several deviations below.
TIE = 0.1

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
         ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Norway", "Oslo"), ("Chile", "Santiago"),
         ("Cuba", "Havana"), ("Greece", "Athens")]
QUERIES = [("Germany", "Berlin"), ("Poland", "Warsaw"), ("Brazil", "Brasilia"), ("India", "Delhi"),
           ("China", "Beijing"), ("Mexico", "Mexico"), ("Ghana", "Accra"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
           ("Cyprus", "Nicosia")]


def image(seed: int) -> Image.Image:
    """A random 32x32 RGB image (the tiny vision towers' size)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


def agreement(a: list[str], b: list[str]) -> float:
    """Share of positions where two lists of predictions are equal."""
    assert len(a) == len(b) and a, (a, b)
    return sum(x == y for x, y in zip(a, b)) / len(a)


def logit_agreement(got: torch.Tensor, ref: torch.Tensor, tie: float = TIE) -> float:
    """Share of rows where ``got``'s top-1 token is ``ref``'s top-1, or a near-tie of it: its ``ref``
    logit within ``tie`` standard deviations (of the row's ``ref`` logits) of ``ref``'s maximum."""
    assert got.shape == ref.shape and got.ndim == 2, (got.shape, ref.shape)
    ref = ref.float()
    chosen = ref.gather(1, got.float().argmax(-1, keepdim=True))[:, 0]
    return float(((ref.max(-1).values - chosen) <= tie * ref.std(-1)).float().mean())


def on_cpu(*tensors: torch.Tensor) -> None:
    """Results come back to the CPU whatever device the model runs on."""
    for t in tensors:
        assert t.device.type == "cpu", f"a returned tensor is on {t.device}, not on the CPU"


def devices(m: taskvec.Model) -> set[str]:
    """Device types of the model's parameters (``meta`` for weights accelerate offloads)."""
    return {p.device.type for p in m.hf.parameters()}
