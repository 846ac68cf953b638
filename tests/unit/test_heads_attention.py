"""Head splitting, ICL trials and the shared REINFORCE utilities on toy rewards (no model)."""

import pytest
import torch

import taskvec
from taskvec.sites.heads import merge_heads, split_heads
from taskvec.methods.reinforce import BernoulliPolicy, CategoricalPolicy, normalized_advantages, reinforce
from taskvec.inputs.trials import icl_trials


def test_split_merge_roundtrip():
    x = torch.randn(2, 3, 8)
    assert split_heads(x, 4).shape == (2, 3, 4, 2)
    assert torch.equal(merge_heads(split_heads(x, 4)), x)
    with pytest.raises(taskvec.TaskvecError, match="multiple"):
        split_heads(x, 3)


def test_trials_pair_each_context_with_its_query(capitals):
    ctx, alone = icl_trials(capitals, 25, n_shots=3, seed=1)
    assert len(ctx) == len(alone) == 25
    assert all(c.text.endswith(a.text) and c.label == a.label for c, a in zip(ctx, alone))
    assert {a.label for a in alone[:10]} == {y for _, y in capitals}  # every pair once before repeats
    with pytest.raises(taskvec.TaskvecError, match="more pairs"):
        icl_trials(capitals[:3], 5, n_shots=3)


def test_reinforce_bernoulli_converges_on_a_toy_reward():
    good = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    pol = BernoulliPolicy((6,), init_p=0.27)
    hist = reinforce(pol, lambda s, _: -(s ^ good).float().sum(1), steps=80, n_samples=16, progress=False)
    assert torch.equal(pol.mode(), good)
    assert hist.task_loss.iloc[-10:].mean() < hist.task_loss.iloc[:10].mean() - 1
    assert hist.entropy.iloc[-1] < hist.entropy.iloc[0] and hist.concentration.iloc[-1] > 0.9


def test_reinforce_categorical_converges_on_a_toy_reward():
    best = torch.tensor([3, 0, 5])
    pol = CategoricalPolicy(3, 8)
    hist = reinforce(pol, lambda s, _: (s == best).float().sum(1), steps=80, n_samples=16, progress=False)
    assert torch.equal(pol.mode(), best)
    assert hist.concentration.iloc[-1] > 0.8 > hist.concentration.iloc[0]
    assert hist.task_loss.iloc[-10:].mean() < hist.task_loss.iloc[:10].mean()


def test_reinforce_rejects_bad_settings():
    with pytest.raises(taskvec.TaskvecError, match="at least two"):
        normalized_advantages(torch.tensor([1.0]))
    with pytest.raises(taskvec.TaskvecError, match="init_p"):
        BernoulliPolicy((2,), init_p=1.0)
    with pytest.raises(taskvec.TaskvecError, match="reward function returned"):
        reinforce(BernoulliPolicy((2,)), lambda s, _: torch.zeros(3), steps=1, n_samples=4, progress=False)
