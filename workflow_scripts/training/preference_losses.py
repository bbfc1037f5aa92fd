"""Preference losses (DPO and kin) on per-answer log-probs, with TRL 1.16's formulas and metrics.

Pure tensor functions: the trainer hands in, per batch, each answer's log-prob summed over its
answer tokens (prompt and padding excluded) and its answer-token count, for the policy and,
where the loss needs one, the reference (read from the cached reference artifact). Every
tensor made here is made on the device of the log-probs it meets. docs/training.md,
"Preference losses", gives each formula in words; tests/test_preference_losses.py checks each
loss and metric against TRL 1.16's own trainer code on the same batch.

- `pairwise_loss`: dpo (sigmoid), ipo, hinge, robust, orpo, simpo.
- `kto_loss`: unpaired completions labelled desirable or undesirable.
- `loss_settings`: the config check (which keys each loss takes, their defaults and ranges).

Metrics are 0-dim detached tensors (no device sync; `.item()` them when logging), batch means
under TRL's names. Which log-probs `logps/*` holds follows the TRL trainer of each loss: sums
over answer tokens for DPOTrainer's losses and KTOTrainer, per-token means for ORPOTrainer and
CPOTrainer's SimPO (whose rewards are β times those means).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from workflow_scripts.common.config import ConfigError


@dataclass(frozen=True)
class LossSpec:
    """What one `loss:` takes: whether it reads reference log-probs, and each parameter it
    accepts with its default (TRL 1.16's default for the trainer that implements it)."""
    needs_reference: bool
    defaults: Mapping[str, float]
    trl: str  # the TRL 1.16 trainer and setting it equals


_SFT = {"sft_weight": 0.0}
LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(True, {"beta": 0.1, **_SFT}, "DPOTrainer, loss_type=['sigmoid']"),
    "ipo": LossSpec(True, {"beta": 0.1, **_SFT}, "DPOTrainer, loss_type=['ipo']"),
    "hinge": LossSpec(True, {"beta": 0.1, **_SFT}, "DPOTrainer, loss_type=['hinge']"),
    "robust": LossSpec(True, {"beta": 0.1, "label_smoothing": 0.0, **_SFT},
                       "DPOTrainer, loss_type=['robust']"),
    "orpo": LossSpec(False, {"beta": 0.1}, "ORPOTrainer (trl.experimental.orpo)"),
    "simpo": LossSpec(False, {"beta": 0.1, "gamma": 0.5, "label_smoothing": 0.0, **_SFT},
                      "CPOTrainer, loss_type='simpo', cpo_alpha=sft_weight "
                      "(trl.experimental.cpo)"),
    "kto": LossSpec(True, {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
                    "KTOTrainer, loss_type='kto'"),
}
PAIRWISE_LOSSES = tuple(name for name in LOSSES if name != "kto")
ALL_PARAMETERS = frozenset(key for spec in LOSSES.values() for key in spec.defaults)
# Allowed range of each parameter: (low, high, low inclusive, high inclusive).
_RANGES = {
    "beta": (0.0, math.inf, False, False),  # IPO divides by it, SimPO divides gamma by it
    "gamma": (0.0, math.inf, True, False),
    "label_smoothing": (0.0, 0.5, True, False),  # robust divides by 1 - 2ε
    "sft_weight": (0.0, math.inf, True, False),
    "desirable_weight": (0.0, math.inf, False, False),
    "undesirable_weight": (0.0, math.inf, False, False),
}


def needs_reference(loss: str) -> bool:
    """Whether `loss` reads reference log-probs (dpo, ipo, hinge, robust, kto) or not
    (orpo, simpo)."""
    return _spec(loss, "loss").needs_reference


def loss_settings(loss: str, settings: Mapping[str, Any], where: str = "") -> dict[str, float]:
    """The loss's parameters with defaults filled in; a ConfigError naming the key for an
    unknown loss, a key the loss does not take (e.g. `gamma` on dpo) or a value out of range.
    `where` prefixes key names in messages (e.g. "experiments.dpo-b01")."""
    prefix = f"{where}." if where else ""
    spec = _spec(loss, f"{prefix}loss")
    resolved = dict(spec.defaults)
    for key, value in settings.items():
        if key not in spec.defaults:
            raise ConfigError(f"{prefix}{key}: loss {loss!r} takes no {key!r} "
                              f"(it takes {', '.join(sorted(spec.defaults))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{prefix}{key}: expected a number, got {value!r}")
        low, high, low_ok, high_ok = _RANGES[key]
        if not ((low <= value if low_ok else low < value) and (value <= high if high_ok else value < high)):
            raise ConfigError(f"{prefix}{key}: {value!r} is outside {'[' if low_ok else '('}"
                              f"{low}, {high}{']' if high_ok else ')'}")
        resolved[key] = float(value)
    return resolved


def _spec(loss: str, key: str) -> LossSpec:
    if loss not in LOSSES:
        raise ConfigError(f"{key}: unknown preference loss {loss!r} (one of {', '.join(LOSSES)})")
    return LOSSES[loss]


def pairwise_loss(
    loss: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_tokens: Tensor | Sequence[int],
    rejected_tokens: Tensor | Sequence[int],
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    chosen_nll: Tensor | None = None,
    **settings: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The batch's mean loss and TRL's metrics for one pairwise loss.

    Log-probs are [B] sums over each answer's tokens; token counts are [B] answer-token counts.
    `chosen_nll` is the NLL term for ORPO and for `sft_weight` (a scalar, or [B] values that are
    averaged); when None it is the chosen answers' token-weighted mean NLL, -Σ logps⁺ / Σ
    tokens⁺, which is what DPOTrainer's "sft" loss and CPOTrainer's NLL compute. ORPOTrainer's
    NLL also counts the chosen prompt's tokens: pass it to match that.
    """
    if loss not in PAIRWISE_LOSSES:
        raise ValueError(f"pairwise_loss: {loss!r} is not a pairwise loss "
                         f"(one of {', '.join(PAIRWISE_LOSSES)}; kto has kto_loss)")
    params = loss_settings(loss, settings)
    has_reference = (reference_chosen_logps is not None, reference_rejected_logps is not None)
    if LOSSES[loss].needs_reference and not all(has_reference):
        raise ValueError(f"pairwise_loss: {loss} needs reference_chosen_logps and "
                         "reference_rejected_logps")
    if not LOSSES[loss].needs_reference and any(has_reference):
        raise ValueError(f"pairwise_loss: {loss} is reference-free; got reference log-probs")
    chosen, rejected = _wide(policy_chosen_logps), _wide(policy_rejected_logps)
    n_chosen, n_rejected = _counts(chosen_tokens, chosen), _counts(rejected_tokens, chosen)
    nll = (_wide(chosen_nll).mean() if chosen_nll is not None
           else -chosen.sum() / n_chosen.sum())
    if loss == "orpo":
        return _orpo(chosen / n_chosen, rejected / n_rejected, nll, params["beta"])
    if loss == "simpo":
        return _simpo(chosen / n_chosen, rejected / n_rejected, nll, params)
    chosen_ratio = chosen - _wide(reference_chosen_logps)
    rejected_ratio = rejected - _wide(reference_rejected_logps)
    per_pair = _reference_per_pair(loss, chosen_ratio, rejected_ratio, n_chosen, n_rejected, params)
    total = per_pair.mean() + params["sft_weight"] * nll
    beta = params["beta"]
    return total, _pair_metrics(beta * chosen_ratio, beta * rejected_ratio, chosen, rejected)


def _reference_per_pair(loss: str, chosen_ratio: Tensor, rejected_ratio: Tensor,
                        n_chosen: Tensor, n_rejected: Tensor, params: dict) -> Tensor:
    """DPOTrainer's per-pair losses on the log-ratios log πθ(y) − log πref(y)."""
    beta = params["beta"]
    margin = beta * (chosen_ratio - rejected_ratio)
    if loss == "dpo":
        return -F.logsigmoid(margin)
    if loss == "hinge":
        return torch.relu(1 - margin)
    if loss == "ipo":  # per-token averaged log-ratios, as TRL (confirmed with IPO's authors)
        return (chosen_ratio / n_chosen - rejected_ratio / n_rejected - 1 / (2 * beta)) ** 2
    eps = params["label_smoothing"]  # robust: ε is the chance that a pair's label is flipped
    return (-(1 - eps) * F.logsigmoid(margin) + eps * F.logsigmoid(-margin)) / (1 - 2 * eps)


def _orpo(chosen_mean: Tensor, rejected_mean: Tensor, nll: Tensor,
          beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO: NLL − β·mean log σ(log-odds⁺ − log-odds⁻) on per-token mean log-probs ℓ̄, with
    log-odds(ℓ̄) = ℓ̄ − log(1 − e^ℓ̄)."""
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    ratio = F.logsigmoid(log_odds)
    metrics = _pair_metrics(beta * chosen_mean, beta * rejected_mean, chosen_mean, rejected_mean)
    metrics.update({"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(),
                    "log_odds_chosen": log_odds.detach().mean()})
    return nll - beta * ratio.mean(), metrics


def _simpo(chosen_mean: Tensor, rejected_mean: Tensor, nll: Tensor,
           params: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO: −log σ(β(ℓ̄⁺ − ℓ̄⁻) − γ), label-smoothed as CPOTrainer, plus sft_weight·NLL."""
    beta, eps, weight = params["beta"], params["label_smoothing"], params["sft_weight"]
    margin = beta * (chosen_mean - rejected_mean) - params["gamma"]
    per_pair = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    # CPOTrainer logs nll_loss 0 when it does not use it (cpo_alpha = 0)
    nll = nll if weight else torch.zeros_like(nll)
    metrics = _pair_metrics(beta * chosen_mean, beta * rejected_mean, chosen_mean, rejected_mean)
    metrics["nll_loss"] = nll.detach()
    return per_pair.mean() + weight * nll, metrics


def _pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, chosen_logps: Tensor,
                  rejected_logps: Tensor) -> dict[str, Tensor]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def kto_loss(
    policy_logps: Tensor,
    desirable: Tensor | Sequence[bool],
    reference_logps: Tensor,
    policy_kl_logps: Tensor,
    reference_kl_logps: Tensor,
    **settings: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO on unpaired completions: the batch's mean loss and KTOTrainer's metrics.

    `policy_logps`/`reference_logps` are [N] sums over each completion's tokens; `desirable`
    [N] its label. The KL estimate z = max(0, mean(policy_kl_logps − reference_kl_logps)) comes
    from mismatched completions (prompt i with another record's completion), as KTOTrainer,
    without gradient. Desirable: w_d·(1 − σ(β(r − z))), undesirable: w_u·(1 − σ(β(z − r))),
    r = log πθ − log πref. Metrics for a class absent from the batch are left out, as TRL does;
    KTOTrainer logs no rewards/accuracies. Under several processes KTOTrainer averages z over
    them first; here z is this batch's.
    """
    params = loss_settings("kto", settings)
    beta = params["beta"]
    policy = _wide(policy_logps)
    ratio = policy - _wide(reference_logps)
    kl = (_wide(policy_kl_logps) - _wide(reference_kl_logps)).mean().detach().clamp(min=0)
    label = torch.as_tensor(desirable, dtype=torch.bool, device=policy.device)
    per_item = torch.where(label, params["desirable_weight"] * (1 - torch.sigmoid(beta * (ratio - kl))),
                           params["undesirable_weight"] * (1 - torch.sigmoid(beta * (kl - ratio))))
    n_desirable = int(desirable.sum()) if isinstance(desirable, Tensor) else int(sum(map(bool, desirable)))
    metrics = {"kl": kl}
    rewards = beta * ratio.detach()
    for name, mask, count in (("chosen", label, n_desirable),
                              ("rejected", ~label, len(label) - n_desirable)):
        if count:
            metrics[f"rewards/{name}"] = torch.where(mask, rewards, 0).sum() / count
            metrics[f"logps/{name}"] = torch.where(mask, policy.detach(), 0).sum() / count
    if 0 < n_desirable < len(label):
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return per_item.mean(), metrics


def _wide(values: Tensor) -> Tensor:
    """float32 at least: the loss of half-precision log-probs is computed in float32."""
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _counts(tokens: Tensor | Sequence[int], like: Tensor) -> Tensor:
    """Answer-token counts as `like`'s dtype on its device, at least 1 (as TRL's IPO)."""
    return torch.as_tensor(tokens, device=like.device).to(like.dtype).clamp(min=1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, stable on both sides of −log 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
