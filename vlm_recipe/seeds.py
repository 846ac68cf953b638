"""Every random draw of a training run, by name: one seed per stream, all derived from ``TrainConfig.seed``.

The formulas are the ones the shipped weights (v0-v7) were trained with, written inline in the
single ``train()`` this recipe had before it was split into stages; they are kept digit for digit,
so a run draws bit for bit what those runs drew, and a seed stream is never reseeded from what
another stream drew: the batch of step ``i`` of a stage comes from a generator of its own, which is
what lets a run resumed from a checkpoint take the same steps as one that never stopped.

Some streams share a seed: kept on purpose, since the shipped weights were trained with them
(changing any would change every later run's numbers, not its behaviour):

* the read stage's batches use realign's batch stream (3): its seed was written out by hand as
  ``seed * 1_000_003 + 3 * 100_003 + step``, which is what realign's ``draw(3, step)`` computed.
  The two stages draw different things from it (read: classes, then the code noise; realign:
  classes, render indices, jitter), so with the shipped batch of 32 at both, step ``i`` of each
  captions the same classes, no more;
* the initial codes (``+ 5``) and the projector fit's jitter (``+ 7``) use the seeds of vision
  batches 5 and 7;
* at seed 0, the lora stage's plain-text draw (``seed + step``) is vision's batch seed of the same step.

Example:
    >>> s = SeedStreams(0)
    >>> s.batch("read", 4) == s.batch("realign", 4) == 3 * 100_003 + 4
    True
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seed offsets of the caption stages' render pools from the run's seed (far from the eval's held-out seed, 1_000_003).
CAPTION_POOL_SEED = 7_000_001
REALIGN_POOL_SEED = 9_000_011

#: The batch stream of each stage: the batch of step ``i`` is drawn from a generator seeded
#: ``seed * 1_000_003 + stream * 100_003 + i``. ``read`` shares realign's stream (module docstring).
BATCH_STREAMS = {"vision": 0, "align": 1, "lora": 2, "realign": 3, "read": 3}
#: Offsets from ``seed * 7_919`` of the plain-text rows each caption stage draws at a step
#: (``lora``'s draw is ``seed + step`` instead, as it always was: :meth:`SeedStreams.text`).
TEXT_STREAMS = {"read": 30_000, "align": 50_000, "realign": 250_000}
#: Offsets from ``seed * 7_919`` of the synthetic few-shot prompts of the distillation term at a step.
DISTILL_STREAMS = {"read": 70_000, "align": 90_000, "lora": 190_000, "realign": 290_000}


@dataclass(frozen=True)
class SeedStreams:
    """The seeds of one run.

    Attributes:
        seed: ``TrainConfig.seed``.
    """

    seed: int

    @property
    def encoder_pool(self) -> int:
        """The encoder's render pool (:func:`vlm_recipe.data.render_pool`)."""
        return self.seed

    @property
    def caption_pool(self) -> int:
        """The caption stages' own render pool (``caption_renders_per_concept``)."""
        return self.seed + CAPTION_POOL_SEED

    @property
    def realign_pool(self) -> int:
        """The realign stage's render pool (``realign_renders_per_concept``)."""
        return self.seed + REALIGN_POOL_SEED

    @property
    def model_init(self) -> int:
        """torch's global seed when the VLM is built (the encoder's and projector's first weights)."""
        return self.seed

    @property
    def projector_init(self) -> int:
        """The generator of the projection's unit-scale start."""
        return self.seed

    @property
    def lora_init(self) -> int:
        """torch's global seed when the LoRA factors are made."""
        return self.seed + 3

    @property
    def plain_text(self) -> int:
        """torch's global seed when the plain text is sampled from the base LLM."""
        return self.seed

    @property
    def codes_init(self) -> int:
        """The read stage's initial class codes."""
        return self.seed * 1_000_003 + 5

    @property
    def code_fit(self) -> int:
        """The jitter of the renders the projector is fitted on at the end of stage 1."""
        return self.seed * 1_000_003 + 7

    def batch(self, stage: str, step: int) -> int:
        """The generator of stage ``stage``'s batch at ``step`` (classes, renders, jitter, caption formats)."""
        return self.seed * 1_000_003 + BATCH_STREAMS[stage] * 100_003 + step

    def text(self, stage: str, step: int) -> int:
        """The generator of the plain-text rows and scored positions of a caption stage at ``step``."""
        if stage == "lora":
            return self.seed + step
        return self.seed * 7_919 + TEXT_STREAMS[stage] + step

    def distill(self, stage: str, step: int) -> int:
        """The seed of the distillation prompts of a caption stage at ``step`` (:func:`vlm_recipe.distill.icl_distill_loss`)."""
        return self.seed * 7_919 + DISTILL_STREAMS[stage] + step
