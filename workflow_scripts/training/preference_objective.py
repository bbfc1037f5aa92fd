"""An experiment's `preference` settings applied to one batch's log-probs.

The formulas are preference_losses.py's (TRL 1.16's, checked against TRL in
tests/test_preference_losses.py); this module maps the config's `preference:` block and the
collated batch's two answers (preference_logps.py) onto them.
"""
from __future__ import annotations

from typing import Any

from workflow_scripts.common.config import ConfigError
from workflow_scripts.training import preference_losses


def needs_reference(loss: str) -> bool:
    return preference_losses.needs_reference(loss)


def parameters(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "loss"}


def check_spec(spec: dict[str, Any]) -> str | None:
    """None, or what is wrong with the settings, starting with the key."""
    try:
        preference_losses.loss_settings(spec["loss"], parameters(spec))
    except ConfigError as err:
        return str(err)
    return None


def resolved(spec: dict[str, Any]) -> dict[str, Any]:
    """The loss and every parameter it takes, TRL's defaults filled in."""
    return {"loss": spec["loss"], **preference_losses.loss_settings(spec["loss"], parameters(spec))}


def compute(spec: dict[str, Any], first, second, reference=None, label=None, loss_weight=None):
    """(mean loss, metrics) of one batch. `first`/`second` are (summed log-probs, token
    counts) of each row's two answers: chosen and rejected, or a KTO completion and its
    mismatched `kl` answer; `reference` the reference's summed log-probs of both, or None."""
    (logps, tokens), (other, other_tokens) = first, second
    params = parameters(spec)
    if spec["loss"] == "kto":
        return preference_losses.kto_loss(logps, label, reference[0], other.detach(), reference[1],
                                          **params)
    ref_chosen, ref_rejected = reference if reference is not None else (None, None)
    return preference_losses.pairwise_loss(spec["loss"], logps, other, tokens, other_tokens,
                                           ref_chosen, ref_rejected, **params)
