"""GRPO math against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from align.grpo import group_advantages, group_stats, kl_k3, policy_loss

NAN = float("nan")


def test_group_advantages_by_hand():
    # group 1: [1, 0, 0, 1] -> mean 0.5, unbiased std sqrt(4*0.25/3) = sqrt(1/3)
    # group 2: [2, 2, 2, 2] -> no spread -> 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4, eps=0.0)
    s = math.sqrt(1 / 3)
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    assert group_stats(r, 4) == {"frac_zero_std": 0.5, "none_frac": 0.0}


def test_group_advantages_eps_and_no_scale():
    r = torch.tensor([3.0, 1.0])  # mean 2, unbiased std sqrt(2)
    assert group_advantages(r, 2, eps=0.1).tolist() == pytest.approx(
        [1 / (math.sqrt(2) + 0.1), -1 / (math.sqrt(2) + 0.1)]
    )
    assert group_advantages(r, 2, scale=False).tolist() == pytest.approx([1.0, -1.0])


def test_none_rewards_are_excluded():
    # group [1, None, 0, 0]: valid [1, 0, 0] -> mean 1/3, std sqrt(((2/3)^2 + 2*(1/3)^2)/2) = sqrt(1/3)
    r = torch.tensor([1.0, NAN, 0.0, 0.0, NAN, NAN, NAN, 5.0])
    adv = group_advantages(r, 4, eps=0.0)
    s = math.sqrt(1 / 3)
    assert adv.tolist() == pytest.approx([(2 / 3) / s, 0.0, (-1 / 3) / s, (-1 / 3) / s, 0, 0, 0, 0], rel=1e-6)
    assert not torch.isnan(adv).any()
    stats = group_stats(r, 4)
    assert stats["frac_zero_std"] == 0.5  # the second group has a single valid reward
    assert stats["none_frac"] == pytest.approx(4 / 8)


def test_group_advantages_bad_shapes():
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="must be 1-D"):
        group_advantages(torch.zeros(2, 2), 2)


def test_kl_k3_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -1.5])
    # d = ref - logp = [0, 1, -1]; k3 = e^d - d - 1
    expected = [0.0, math.e - 2.0, math.exp(-1) + 1 - 1]
    assert kl_k3(logp, ref).tolist() == pytest.approx(expected)
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def _case():
    # two sequences, T = 3; the second has one padding token
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.3, 0.6, 0.9]]))
    old = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.3, 0.3, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.5], [0.3, 0.6, 0.9]]))
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, ref, adv, mask


def _by_hand(clip_eps=0.2, beta=0.1):
    # ratios: seq0 [1, 2, 1], seq1 [1, 2, (3: padded)]
    # seq0, A=+1: per token max(-r, -clip(r)) = [-1, -1.2, -1]
    # seq1, A=-2: max(2r, 2 clip(r)) = [2, 4, 6]  (clip active on the 2nd token? 2*2=4 > 2*1.2 -> pg1 wins)
    pg = [[-1.0, -1.2, -1.0], [2.0, 4.0, 6.0]]
    # kl: d = ref - logp; seq0 [ln .5, 0, 0] -> [0.5 - ln .5 - 1, 0, 0]; seq1 all 0
    k = 0.5 - math.log(0.5) - 1.0
    kl = [[k, 0.0, 0.0], [0.0, 0.0, 0.0]]
    tok = [[pg[b][t] + beta * kl[b][t] for t in range(3)] for b in range(2)]
    return pg, kl, tok


def test_policy_loss_aggregations_by_hand():
    logp, old, ref, adv, mask = _case()
    pg, kl, tok = _by_hand()
    real = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    token_mean = sum(tok[b][t] for b, t in real) / 5
    seq_mean = ((tok[0][0] + tok[0][1] + tok[0][2]) / 3 + (tok[1][0] + tok[1][1]) / 2) / 2
    sum_norm = sum(tok[b][t] for b, t in real) / (2 * 3)

    loss, m = policy_loss(logp, old, ref, adv, mask, 0.2, 0.1, "token-mean")
    assert loss.item() == pytest.approx(token_mean, rel=1e-5)
    loss, _ = policy_loss(logp, old, ref, adv, mask, 0.2, 0.1, "seq-mean-token-mean")
    assert loss.item() == pytest.approx(seq_mean, rel=1e-5)
    loss, _ = policy_loss(logp, old, ref, adv, mask, 0.2, 0.1, "seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx(sum_norm, rel=1e-5)
    loss, _ = policy_loss(logp, old, ref, adv, mask, 0.2, 0.1, "seq-mean-token-sum-norm", max_tokens=10)
    assert loss.item() == pytest.approx(sum(tok[b][t] for b, t in real) / 20, rel=1e-5)

    # metrics: clip active only at (0, 1) among real tokens -> 1/5; ratio mean (1+2+1+1+2)/5
    assert m["clip_frac"] == pytest.approx(1 / 5)
    assert m["ratio_mean"] == pytest.approx(7 / 5)
    assert m["ratio_max"] == pytest.approx(2.0)
    assert m["kl"] == pytest.approx(k := (0.5 - math.log(0.5) - 1.0) / 5) and k > 0
    assert m["pg_loss"] == pytest.approx(sum(pg[b][t] for b, t in real) / 5)


def test_policy_loss_gradient_and_beta_zero():
    logp, old, ref, adv, mask = _case()
    logp = logp.clone().requires_grad_(True)
    loss, m = policy_loss(logp, old, None, adv, mask, 0.2, 0.0, "token-mean")
    loss.backward()
    # d/dlogp of -A*r is -A*r where unclipped, 0 where the clipped branch is taken, 0 on padding
    # seq0 (A=1): [-1*1, 0 (clipped at 1.2), -1*1] / 5; seq1 (A=-2): [2*1, 2*2, 0] / 5
    assert logp.grad.flatten().tolist() == pytest.approx([-0.2, 0.0, -0.2, 0.4, 0.8, 0.0])
    assert m["kl"] == 0.0
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, old, None, adv, mask, 0.2, 0.1)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        policy_loss(logp, old, ref, adv, mask, 0.2, 0.0, "mean")


def test_on_policy_loss_equals_minus_mean_advantage():
    # first PPO epoch: logp == old_logp -> ratio 1, loss = -mean(A) under seq-mean-token-mean
    logp = torch.randn(4, 5)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    mask = torch.ones(4, 5)
    loss, m = policy_loss(logp, logp, logp, adv, mask, 0.2, 0.04)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert m["clip_frac"] == 0.0 and m["kl"] == pytest.approx(0.0, abs=1e-7)
