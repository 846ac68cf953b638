"""REINFORCE with normalised advantages, shared by MTV (Bernoulli over heads) and STV (categorical
over pre-clustered vectors).

Each step samples ``n`` actions from the policy, asks a reward function for ``[n]`` rewards,
normalises them to advantages ``(r - mean) / (std + eps)`` and takes one Adam step on
``-mean(advantage * log_prob(action))`` (docs/design.md §3-4).
"""

from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import TaskvecError


def normalized_advantages(rewards: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """``(r - mean(r)) / (std(r) + eps)`` over a ``[n]`` batch of rewards.

    Example:
        >>> normalized_advantages(torch.tensor([1.0, 2.0, 3.0])).round(decimals=3)
        tensor([-0.9990,  0.0000,  0.9990])
    """
    if rewards.dim() != 1 or rewards.numel() < 2:
        raise TaskvecError("REINFORCE needs a [n] vector of at least two rewards per step: sample n >= 2 actions")
    r = rewards.detach().float()
    return (r - r.mean()) / (r.std() + eps)


def first_token_reward(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reward = minus the cross-entropy of the first answer token, ``[n]``.

    Args:
        logits: ``[n, vocab]`` next-token logits.
        targets: ``[n]`` answer token ids.

    Example:
        >>> first_token_reward(torch.tensor([[0.0, 10.0]]), torch.tensor([1])).item() > -0.01
        True
    """
    return -torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="none")


class BernoulliPolicy(torch.nn.Module):
    """One independent Bernoulli per cell (e.g. per (layer, head)): which cells to intervene on.

    Args:
        shape: e.g. ``(n_layers, n_heads)``.
        init_p: initial probability of every cell (MTV: 0.27).

    Example:
        >>> pol = BernoulliPolicy((18, 4))
        >>> pol.sample(32, torch.Generator().manual_seed(0)).shape
        torch.Size([32, 18, 4])
    """

    def __init__(self, shape: tuple[int, ...], init_p: float = 0.27) -> None:
        super().__init__()
        if not 0 < init_p < 1:
            raise TaskvecError(f"init_p={init_p}: a probability strictly between 0 and 1 is needed")
        self.logits = torch.nn.Parameter(torch.full(shape, math.log(init_p / (1 - init_p))))

    def probs(self) -> torch.Tensor:
        """Probability of every cell, ``shape``."""
        return torch.sigmoid(self.logits.detach())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, *shape]`` bool samples."""
        p = torch.sigmoid(self.logits.detach()).expand(n, *self.logits.shape)
        return torch.bernoulli(p, generator=generator).bool()

    def log_prob(self, samples: torch.Tensor) -> torch.Tensor:
        """Log-probability of each sample, ``[n]`` (differentiable)."""
        lp = -torch.nn.functional.binary_cross_entropy_with_logits(
            self.logits.expand_as(samples), samples.float(), reduction="none")
        return lp.flatten(1).sum(1)

    def entropy(self) -> float:
        """Mean per-cell entropy in nats (log 2 = undecided, 0 = certain)."""
        p = self.probs().clamp(1e-7, 1 - 1e-7)
        return float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())

    def concentration(self) -> float:
        """Mean over cells of ``max(p, 1 - p)``: 0.5 undecided, 1 certain."""
        p = self.probs()
        return float(torch.maximum(p, 1 - p).mean())

    def mode(self) -> torch.Tensor:
        """The most likely sample (cells with ``p > 0.5``), ``shape`` bool."""
        return self.probs() > 0.5


class CategoricalPolicy(torch.nn.Module):
    """One independent categorical per slot over ``n_choices`` options (STV: per head, its clusters).

    Example:
        >>> pol = CategoricalPolicy(20, 8)
        >>> pol.sample(32, torch.Generator().manual_seed(0)).shape
        torch.Size([32, 20])
    """

    def __init__(self, n_slots: int, n_choices: int) -> None:
        super().__init__()
        if n_slots < 1 or n_choices < 1:
            raise TaskvecError(f"a categorical policy needs >= 1 slot and >= 1 choice, got {n_slots} x {n_choices}")
        self.logits = torch.nn.Parameter(torch.zeros(n_slots, n_choices))

    def probs(self) -> torch.Tensor:
        """``[n_slots, n_choices]`` probabilities."""
        return torch.softmax(self.logits.detach(), -1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, n_slots]`` long choices."""
        return torch.multinomial(self.probs(), n, replacement=True, generator=generator).T.contiguous()

    def log_prob(self, samples: torch.Tensor) -> torch.Tensor:
        """Log-probability of each sample, ``[n]`` (differentiable)."""
        logp = torch.log_softmax(self.logits, -1)  # [K, M]
        return logp.gather(1, samples.T).T.sum(1)

    def entropy(self) -> float:
        """Mean per-slot entropy in nats (``log n_choices`` = uniform)."""
        p = self.probs()
        return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())

    def concentration(self) -> float:
        """Mean over slots of the largest choice probability: ``1/n_choices`` uniform, 1 certain."""
        return float(self.probs().max(-1).values.mean())

    def mode(self) -> torch.Tensor:
        """The argmax choice of every slot, ``[n_slots]`` long."""
        return self.probs().argmax(-1)


RewardFn = Callable[[torch.Tensor, int], torch.Tensor]


def reinforce(
    policy: BernoulliPolicy | CategoricalPolicy,
    reward_fn: RewardFn,
    *,
    steps: int,
    n_samples: int,
    lr: float = 0.1,
    seed: int = 0,
    desc: str = "REINFORCE",
    progress: bool = True,
) -> pd.DataFrame:
    """Train a policy with REINFORCE and normalised advantages (Adam).

    Args:
        policy: a :class:`BernoulliPolicy` or :class:`CategoricalPolicy`.
        reward_fn: ``(samples [n, ...], step) -> rewards [n]`` (higher is better).
        steps: optimisation steps.
        n_samples: actions sampled per step.
        lr: Adam learning rate (MTV: 0.1).
        seed: seed of the action sampler.

    Returns:
        history, one row per step: ``step, task_loss`` (minus the mean reward: what should fall),
        ``reward_max, surrogate`` (the policy-gradient objective), ``entropy, concentration``.

    Example:
        >>> pol = BernoulliPolicy((3,), init_p=0.5)
        >>> h = reinforce(pol, lambda s, _: s[:, 0].float() - s[:, 1].float(), steps=60, n_samples=16, progress=False)
        >>> pol.mode().tolist()[:2]
        [True, False]
    """
    if steps < 1:
        raise TaskvecError(f"steps={steps}: REINFORCE needs at least one step")
    if n_samples < 2:
        raise TaskvecError(f"n_samples={n_samples}: normalised advantages need at least two samples per step")
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        samples = policy.sample(n_samples, gen)
        rewards = reward_fn(samples, step).detach().float().cpu()
        if rewards.shape != (n_samples,):
            raise TaskvecError(f"the reward function returned shape {tuple(rewards.shape)}, expected ({n_samples},)")
        adv = normalized_advantages(rewards)
        surrogate = -(adv * policy.log_prob(samples)).mean()
        opt.zero_grad()
        surrogate.backward()
        opt.step()
        rows.append(dict(step=step, task_loss=float(-rewards.mean()), reward_max=float(rewards.max()),
                         surrogate=float(surrogate.detach()), entropy=policy.entropy(),
                         concentration=policy.concentration()))
    return pd.DataFrame(rows)
