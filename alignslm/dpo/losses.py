"""Preference losses (sigmoid DPO, IPO, robust / label-smoothed DPO) and their standard metrics.

All take per-pair sequence log-probs (summed over the completion tokens) of the policy and the
reference and return per-pair losses, so a caller can average over micro-batches and ranks exactly.

* sigmoid (Rafailov et al. 2023): ``-log sigmoid(beta * (dc - dr))`` with ``d = logp - ref_logp``.
* ipo (Azar et al. 2023): ``((dc / |c| - dr / |r|) - 1 / (2 beta))^2`` -- log-ratios averaged per
  completion token, as TRL does (the IPO authors' normalisation), so beta is length-independent.
* robust (Chowdhury et al. 2024): ``((1-e) l(x) - e l(-x)) / (1 - 2e)`` with ``l = -log sigmoid`` and
  ``x = beta * (dc - dr)``; an unbiased loss under label noise of rate ``e = label_smoothing``.

Metric names are TRL's: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
logps/chosen, logps/rejected, loss (rewards are ``beta * log-ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("sigmoid", "ipo", "robust")


@dataclass
class PreferenceOutput:
    """Per-pair tensors, all ``(B,)``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor  # beta * (logp_c - ref_c), detached
    rejected_rewards: torch.Tensor  # beta * (logp_r - ref_r), detached


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, *, beta: float, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
                    rejected_lengths: torch.Tensor | None = None) -> PreferenceOutput:
    """Per-pair preference losses from ``(B,)`` summed log-probs of policy and reference.

    ``chosen_lengths`` / ``rejected_lengths`` (completion token counts, ``(B,)``) are required by IPO.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = policy_chosen - ref_chosen  # (B,)
    rejected_ratio = policy_rejected - ref_rejected  # (B,)
    x = beta * (chosen_ratio - rejected_ratio)  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(x)
    elif loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
        e = label_smoothing
        losses = (-(1 - e) * F.logsigmoid(x) + e * F.logsigmoid(-x)) / (1 - 2 * e)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo needs chosen_lengths and rejected_lengths (completion token counts)")
        delta = (chosen_ratio / chosen_lengths.clamp(min=1).to(chosen_ratio.dtype)
                 - rejected_ratio / rejected_lengths.clamp(min=1).to(rejected_ratio.dtype))
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss {loss_type!r}; expected one of {', '.join(LOSSES)}")
    return PreferenceOutput(losses=losses, chosen_rewards=(beta * chosen_ratio).detach(),
                            rejected_rewards=(beta * rejected_ratio).detach())


def pair_stats(out: PreferenceOutput, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> torch.Tensor:
    """``(B, 7)`` per-pair statistics whose column means are the standard metrics (see METRIC_NAMES)."""
    c, r = out.chosen_rewards, out.rejected_rewards
    return torch.stack([out.losses.detach(), c, r, (c > r).to(c.dtype), c - r,
                        policy_chosen.detach(), policy_rejected.detach()], dim=1).float()


METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


def metrics_from_stats(stats: torch.Tensor) -> dict[str, float]:
    """Column means of stacked ``pair_stats`` rows -> {metric name: value}."""
    means = stats.double().mean(0).tolist()
    return dict(zip(METRIC_NAMES, means))
