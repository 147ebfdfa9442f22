"""GRPO math as pure tensor functions: group-normalised advantages, the k3 KL estimator, the clipped loss.

Shapes: B sequences (= prompts x group size G), T completion tokens (right-padded; ``mask_BT`` marks
real tokens). Nothing here touches models, devices or Ray.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS: tuple[str, ...] = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def _grouped(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards_B.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B*G,), got shape {tuple(rewards_B.shape)}")
    if group_size < 1 or rewards_B.numel() % group_size:
        raise ValueError(f"{rewards_B.numel()} rewards do not split into groups of {group_size}")
    return rewards_B.view(-1, group_size)


def _group_mean_std(rewards_NG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, unbiased std and valid count per group, ignoring NaN (= a ``None`` reward)."""
    valid_NG = ~torch.isnan(rewards_NG)
    n_N = valid_NG.sum(dim=1)
    filled_NG = torch.where(valid_NG, rewards_NG, torch.zeros_like(rewards_NG))
    mean_N = filled_NG.sum(dim=1) / n_N.clamp(min=1)
    sq_NG = torch.where(valid_NG, (rewards_NG - mean_N[:, None]) ** 2, torch.zeros_like(rewards_NG))
    std_N = (sq_NG.sum(dim=1) / (n_N - 1).clamp(min=1)).sqrt()
    std_N = torch.where(n_N >= 2, std_N, torch.zeros_like(std_N))
    return mean_N, std_N, n_N


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
    """GRPO advantages ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within each group.

    Args:
        rewards: ``(B*G,)`` float rewards, groups contiguous; NaN stands for a ``None`` reward.
        group_size: G, completions per prompt.
        eps: added to the std.
        scale: divide by the std (GRPO); ``False`` only centres (Dr. GRPO).

    Returns:
        ``(B*G,)`` advantages. NaN rewards are excluded from their group's mean and (unbiased) std
        and get advantage 0; a group whose valid rewards do not vary (or has fewer than 2) gets 0.
    """
    rewards_NG = _grouped(rewards.float(), group_size)
    mean_N, std_N, _ = _group_mean_std(rewards_NG)
    adv_NG = rewards_NG - mean_N[:, None]
    if scale:
        adv_NG = adv_NG / (std_N[:, None] + eps)
    flat_N = std_N <= 1e-8 * mean_N.abs().clamp(min=1.0)
    adv_NG = torch.where(flat_N[:, None] | torch.isnan(rewards_NG), torch.zeros_like(adv_NG), adv_NG)
    return adv_NG.reshape(-1)


def group_stats(rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """Per-batch counts that go with :func:`group_advantages`.

    ``frac_zero_std``: fraction of groups that get advantage 0 everywhere (no spread);
    ``none_frac``: fraction of rewards that are NaN (``None``).
    """
    rewards_NG = _grouped(rewards.float(), group_size)
    mean_N, std_N, _ = _group_mean_std(rewards_NG)
    flat_N = std_N <= 1e-8 * mean_N.abs().clamp(min=1.0)
    return {
        "frac_zero_std": flat_N.float().mean().item(),
        "none_frac": torch.isnan(rewards_NG).float().mean().item(),
    }


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): ``exp(ref - logp) - (ref - logp) - 1``.

    Unbiased for samples drawn from pi_theta, and never negative. Any shape; elementwise.
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask == 1`` (0 when the mask is empty)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    beta: float,
    aggregation: Aggregation = "seq-mean-token-mean",
    *,
    clip_eps_high: float | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective, negated for minimisation.

    Per token: ``max(-A*ratio, -A*clip(ratio, 1-eps, 1+eps_high)) + beta * kl_k3(logp, ref_logp)``
    with ``ratio = exp(logp - old_logp)``.

    Args:
        logp: ``(B, T)`` log-probs of the sampled tokens under the policy being trained.
        old_logp: ``(B, T)`` the same under the policy that sampled them (detached).
        ref_logp: ``(B, T)`` the same under the reference model, or None when ``beta == 0``.
        advantages: ``(B,)`` one advantage per sequence (shared by its tokens).
        mask: ``(B, T)`` 1 for completion tokens, 0 for padding.
        clip_eps: lower clip range (and upper unless ``clip_eps_high`` is given).
        beta: weight of the KL penalty.
        aggregation: how token losses become a scalar:
            ``seq-mean-token-mean`` (the paper's GRPO: mean over each sequence's tokens, then over
            sequences), ``token-mean`` (mean over all tokens of the batch),
            ``seq-mean-token-sum-norm`` (Dr. GRPO: token sum divided by ``B * max_tokens``).
        max_tokens: the constant of Dr. GRPO's normaliser; defaults to ``T``.

    Returns:
        The scalar loss and metrics: ``pg_loss``, ``kl``, ``clip_frac``, ``ratio_mean``, ``ratio_max``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask_BT = mask.to(logp.dtype)
    adv_B1 = advantages.to(logp.dtype).reshape(-1, 1)
    ratio_BT = torch.exp(logp - old_logp)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    pg1_BT = -adv_B1 * ratio_BT
    pg2_BT = -adv_B1 * torch.clamp(ratio_BT, 1.0 - clip_eps, 1.0 + high)
    pg_BT = torch.maximum(pg1_BT, pg2_BT)
    loss_BT = pg_BT
    kl_BT = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl_BT = kl_k3(logp, ref_logp)
        loss_BT = pg_BT + beta * kl_BT

    if aggregation == "token-mean":
        loss = masked_mean(loss_BT, mask_BT)
    elif aggregation == "seq-mean-token-mean":
        seq_B = (loss_BT * mask_BT).sum(dim=1) / mask_BT.sum(dim=1).clamp(min=1.0)
        loss = seq_B.mean()
    else:
        norm = float(max_tokens if max_tokens is not None else mask_BT.shape[1])
        loss = (loss_BT * mask_BT).sum() / (mask_BT.shape[0] * norm)

    with torch.no_grad():
        n_tokens = mask_BT.sum().clamp(min=1.0)
        metrics = {
            "pg_loss": masked_mean(pg_BT, mask_BT).item(),
            "kl": masked_mean(kl_BT, mask_BT).item() if kl_BT is not None else 0.0,
            "clip_frac": ((pg2_BT > pg1_BT).to(logp.dtype) * mask_BT).sum().div(n_tokens).item(),
            "ratio_mean": masked_mean(ratio_BT, mask_BT).item(),
            "ratio_max": (
                ratio_BT.masked_fill(mask_BT == 0, float("-inf")).max().item() if mask_BT.any() else 0.0
            ),
        }
    return loss, metrics
