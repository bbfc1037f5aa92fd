"""Each preference loss and its logged metrics equal TRL 1.16's, computed by TRL's own trainer
code on the same batch of a tiny real model; with the reference equal to the policy every
reward is 0; the config check names the key it refuses.

TRL runs from .venv/trl (scripts/setup.sh --test installs it there with --no-deps, beside the
lock): DPOTrainer._compute_loss and KTOTrainer._compute_loss read the model through TRL's fused
LM head and precomputed reference log-probs; ORPOTrainer and CPOTrainer (SimPO) run their
get_batch_loss_metrics on the model's logits. Each trainer is made with object.__new__ and only
the attributes its loss reads. Our side gets each answer's log-prob summed over its tokens,
computed here per sequence from the same model's full logits (not TRL's batching).
"""
from __future__ import annotations

import itertools
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from workflow_scripts.common.config import ConfigError
from workflow_scripts.training.preference_losses import (
    LOSSES, kto_loss, loss_settings, needs_reference, pairwise_loss)

REPO = Path(__file__).resolve().parent.parent
TRL_SITE = REPO / ".venv" / "trl"
VOCAB = 40
# What TRL logs from the model's logits or token counts, which the losses do not see.
TRL_MODEL_METRICS = {"entropy", "num_tokens", "logits/chosen", "logits/rejected",
                     "mean_token_accuracy"}
# TRL computes log-probs in float32 (its fused head, ORPO's odds ratio); ours are float64.
TOLERANCE = {"rtol": 2e-5, "atol": 2e-5}


@pytest.fixture(scope="module")
def trl():
    if not (TRL_SITE / "trl").is_dir():
        pytest.skip(f"TRL is not installed in {TRL_SITE}: scripts/setup.sh --test installs it "
                    "(pip install --no-deps --target .venv/trl trl==1.16.0)")
    sys.path.insert(0, str(TRL_SITE))
    import trl as trl_module
    assert trl_module.__version__ == "1.16.0", trl_module.__version__
    return trl_module


@pytest.fixture(scope="module")
def accelerator(trl):
    """A real single-process Accelerator (TRL's gathers are identities there); its global
    state is reset afterwards so that later tests start clean."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def model(trl):
    """A one-layer Qwen2 with spread-out logits, in float64, with TRL's fused LM head added
    (its plain forward, which ORPO and CPO call, is unchanged)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         initializer_range=0.3)
    lm = Qwen2ForCausalLM(config).to(torch.float64)
    add_fused_lm_head(lm, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return lm


@dataclass
class Pairs:
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]


def random_pairs(seed: int, count: int = 5) -> Pairs:
    gen = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high + 1, (1,), generator=gen))
        return torch.randint(1, VOCAB, (length,), generator=gen).tolist()
    return Pairs([tokens(2, 4) for _ in range(count)], [tokens(1, 6) for _ in range(count)],
                 [tokens(1, 6) for _ in range(count)])


def answer_logps(model, prompts, answers) -> tuple[torch.Tensor, torch.Tensor]:
    """Each answer's log-prob summed over its tokens and its token count, one sequence at a
    time from the model's full logits."""
    sums = []
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers):
            ids = torch.tensor([prompt + answer])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            sums.append(logps.gather(-1, ids[0, 1:, None])[len(prompt) - 1:, 0].sum())
    return torch.stack(sums), torch.tensor([len(a) for a in answers])


def sequence_nll(model, prompts, answers) -> torch.Tensor:
    """ORPOTrainer's NLL: token-weighted over every predicted token, prompt included."""
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers):
            ids = torch.tensor([prompt + answer])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            total -= logps.gather(-1, ids[0, 1:, None]).sum()
            count += ids.size(1) - 1
    return total / count


def padded(prompts, answers, answer_only_labels=False) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and the answer mask (or labels) of prompt + answer."""
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    answer_mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        ids[row, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        attention[row, :len(prompt) + len(answer)] = 1
        answer_mask[row, len(prompt):len(prompt) + len(answer)] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": answer_mask}


def trainer(cls, accelerator, **attributes):
    """A TRL trainer object with only the attributes its loss code reads."""
    obj = object.__new__(cls)
    obj.__dict__.update(accelerator=accelerator, aux_loss_enabled=False, **attributes)
    return obj


def last_metrics(trainer_obj) -> dict[str, float]:
    return {k: v[-1] for k, v in trainer_obj._metrics["train"].items() if k not in TRL_MODEL_METRICS}


def assert_same(ours: tuple[torch.Tensor, dict], loss_trl: torch.Tensor, metrics_trl: dict):
    loss, metrics = ours
    assert set(metrics) == set(metrics_trl) - TRL_MODEL_METRICS
    assert loss.item() == pytest.approx(float(loss_trl), rel=TOLERANCE["rtol"], abs=TOLERANCE["atol"])
    for key, value in metrics.items():
        assert value.item() == pytest.approx(metrics_trl[key], **{
            "rel": TOLERANCE["rtol"], "abs": TOLERANCE["atol"]}), key


@pytest.fixture(scope="module")
def pairs(model) -> dict:
    """Five pairs, the policy's answer log-probs and a reference's (the policy's plus noise of
    a few nats, so that rewards take both signs)."""
    data = random_pairs(7)
    chosen, n_chosen = answer_logps(model, data.prompts, data.chosen)
    rejected, n_rejected = answer_logps(model, data.prompts, data.rejected)
    gen = torch.Generator().manual_seed(3)
    return {"data": data, "chosen": chosen, "rejected": rejected, "n_chosen": n_chosen,
            "n_rejected": n_rejected,
            "ref_chosen": chosen + 3 * torch.randn(len(chosen), generator=gen, dtype=torch.float64),
            "ref_rejected": rejected + 3 * torch.randn(len(chosen), generator=gen, dtype=torch.float64)}


DPO_TYPES = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge", "robust": "robust"}
DPO_CASES = ([(loss, beta, 0.0, sft) for loss in ("dpo", "ipo", "hinge")
              for beta, sft in itertools.product((0.1, 0.5, 2.0), (0.0, 0.7))]
             + [("robust", beta, eps, 0.0) for beta, eps in itertools.product((0.1, 2.0), (0.0, 0.1, 0.3))])


@pytest.mark.parametrize("loss,beta,eps,sft", DPO_CASES)
def test_reference_losses_equal_dpo_trainer(trl, accelerator, model, pairs, loss, beta, eps, sft):
    data = pairs["data"]
    both = padded(data.prompts * 2, data.chosen + data.rejected)
    types, weights = [DPO_TYPES[loss]] + (["sft"] if sft else []), [1.0] + ([sft] if sft else [])
    dpo = trainer(trl.DPOTrainer, accelerator, model=model, beta=beta, label_smoothing=eps,
                  loss_types=types, loss_weights=weights, precompute_ref_logps=True,
                  ld_alpha=None, f_divergence_type="reverse_kl", use_weighting=False,
                  _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                  _total_train_tokens=0, _tp_size=1)
    with torch.no_grad():
        loss_trl = dpo.compute_loss(model, {**both, "ref_chosen_logps": pairs["ref_chosen"],
                                            "ref_rejected_logps": pairs["ref_rejected"]})
    settings = {"beta": beta, "sft_weight": sft} | ({"label_smoothing": eps} if loss == "robust" else {})
    ours = pairwise_loss(loss, pairs["chosen"], pairs["rejected"], pairs["n_chosen"],
                         pairs["n_rejected"], pairs["ref_chosen"], pairs["ref_rejected"], **settings)
    assert_same(ours, loss_trl, last_metrics(dpo))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_orpo_equals_orpo_trainer(trl, accelerator, model, pairs, beta):
    from trl.experimental.orpo import ORPOTrainer
    data = pairs["data"]
    orpo = trainer(ORPOTrainer, accelerator, beta=beta, is_encoder_decoder=False, padding_value=0)
    with torch.no_grad():
        loss_trl, metrics_trl = orpo.get_batch_loss_metrics(model, pair_batch(data), "train")
    nll = sequence_nll(model, data.prompts, data.chosen)  # ORPOTrainer counts the prompt too
    ours = pairwise_loss("orpo", pairs["chosen"], pairs["rejected"], pairs["n_chosen"],
                         pairs["n_rejected"], chosen_nll=nll, beta=beta)
    assert_same(ours, loss_trl, metrics_trl)


SIMPO_CASES = [(0.1, 0.5, 0.0, 0.0), (2.0, 0.5, 0.0, 0.0), (2.5, 1.4, 0.0, 0.0),
               (2.0, 0.0, 0.2, 0.0), (0.5, 0.5, 0.0, 1.0), (2.0, 1.0, 0.1, 0.3)]


@pytest.mark.parametrize("beta,gamma,eps,sft", SIMPO_CASES)
def test_simpo_equals_cpo_trainer(trl, accelerator, model, pairs, beta, gamma, eps, sft):
    from trl.experimental.cpo import CPOTrainer
    cpo = trainer(CPOTrainer, accelerator, beta=beta, simpo_gamma=gamma, label_smoothing=eps,
                  cpo_alpha=sft, loss_type="simpo", alpha=0.0, is_encoder_decoder=False,
                  pad_token_id=0)
    with torch.no_grad():
        loss_trl, metrics_trl = cpo.get_batch_loss_metrics(model, pair_batch(pairs["data"]), "train")
    ours = pairwise_loss("simpo", pairs["chosen"], pairs["rejected"], pairs["n_chosen"],
                         pairs["n_rejected"], beta=beta, gamma=gamma, label_smoothing=eps,
                         sft_weight=sft)
    assert_same(ours, loss_trl, metrics_trl)


def pair_batch(data: Pairs) -> dict[str, torch.Tensor]:
    """ORPO's and CPO's tokenized batch: chosen_* and rejected_* ids, masks and labels (the
    prompt's and the padding's labels -100)."""
    batch = {}
    for side, answers in (("chosen", data.chosen), ("rejected", data.rejected)):
        rows = padded(data.prompts, answers)
        batch[f"{side}_input_ids"] = rows["input_ids"]
        batch[f"{side}_attention_mask"] = rows["attention_mask"]
        batch[f"{side}_labels"] = rows["input_ids"].masked_fill(rows["completion_mask"] == 0, -100)
    return batch


KTO_CASES = [(0.1, 1.0, 1.0, "mixed"), (0.5, 1.0, 1.0, "mixed"), (2.0, 1.33, 0.7, "mixed"),
             (0.5, 1.0, 1.0, "desirable"), (0.5, 1.0, 2.0, "undesirable")]
KTO_LABELS = {"mixed": [True, False, True, True, False, False],
              "desirable": [True] * 6, "undesirable": [False] * 6}


@pytest.mark.parametrize("beta,desirable_weight,undesirable_weight,labels", KTO_CASES)
def test_kto_equals_kto_trainer(trl, accelerator, model, beta, desirable_weight,
                                undesirable_weight, labels):
    data = random_pairs(11, count=6)
    prompts, completions, label = data.prompts, data.chosen, KTO_LABELS[labels]
    mismatched = completions[1:] + completions[:1]  # prompt i with completion i + 1, as TRL pairs
    policy, _ = answer_logps(model, prompts, completions)
    policy_kl, _ = answer_logps(model, prompts, mismatched)
    gen = torch.Generator().manual_seed(5)
    reference = policy + 3 * torch.randn(len(policy), generator=gen, dtype=torch.float64)
    # the mean of policy_kl - reference_kl is positive (TRL clamps a negative estimate to 0)
    reference_kl = policy_kl + torch.randn(len(policy), generator=gen, dtype=torch.float64) - 0.5
    kl_rows = padded(prompts, mismatched)
    kto = trainer(trl.KTOTrainer, accelerator, model=model, beta=beta, loss_type="kto",
                  desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                  calculate_KL=True, precompute_ref_logps=True,
                  _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                  _total_train_tokens=0, _tp_size=1)
    with torch.no_grad():
        loss_trl = kto.compute_loss(model, {
            **padded(prompts, completions), "label": torch.tensor(label),
            **{f"KL_{key}": value for key, value in kl_rows.items()},
            "ref_logps": reference, "ref_KL_logps": reference_kl})
    ours = kto_loss(policy, torch.tensor(label), reference, policy_kl, reference_kl, beta=beta,
                    desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    assert ours[1]["kl"] > 0
    assert_same(ours, loss_trl, last_metrics(kto))


def test_kto_clamps_a_negative_kl_estimate_to_zero():
    logps = torch.tensor([-5.0, -6.0])
    loss, metrics = kto_loss(logps, [True, False], logps, logps - 1, logps)
    assert metrics["kl"].item() == 0.0
    assert loss.item() == pytest.approx(0.5)  # every reward and z are 0: 1 - σ(0)


BATCH = {"chosen": torch.tensor([-12.5, -3.25, -40.0]), "rejected": torch.tensor([-9.0, -20.0, -1.5]),
         "n_chosen": [5, 2, 17], "n_rejected": [4, 9, 1]}
ZERO_REFERENCE_LOSS = {"dpo": math.log(2), "hinge": 1.0, "robust": math.log(2)}


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "robust"])
def test_reference_equal_to_policy_gives_zero_rewards(loss):
    """Before the first update, with the starting adapter as the reference, every reward is 0;
    DPO's loss is then log 2 (the 0.6931 of TRL's first logged step)."""
    settings = {"beta": 0.5} | ({"label_smoothing": 0.2} if loss == "robust" else {})
    value, metrics = pairwise_loss(loss, BATCH["chosen"], BATCH["rejected"], BATCH["n_chosen"],
                                   BATCH["n_rejected"], BATCH["chosen"].clone(),
                                   BATCH["rejected"].clone(), **settings)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[key].item() == 0.0, key
    expected = ZERO_REFERENCE_LOSS.get(loss, 1 / (2 * 0.5) ** 2)  # IPO: (0 − 1/(2β))²
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["logps/chosen"].item() == pytest.approx(BATCH["chosen"].mean().item())


def test_kto_with_reference_equal_to_policy_gives_zero_rewards():
    logps = BATCH["chosen"]
    loss, metrics = kto_loss(logps, [True, False, True], logps.clone(), logps, logps.clone())
    assert {k: v.item() for k, v in metrics.items() if k.startswith("rewards/") or k == "kl"} == {
        "kl": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0}
    assert loss.item() == pytest.approx(0.5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_tensor_stays_on_the_device_of_the_log_probs(loss):
    """Token counts and labels come as Python lists; nothing may land on another device."""
    meta = {key: value.to("meta") for key, value in BATCH.items() if key in ("chosen", "rejected")}
    if loss == "kto":
        value, metrics = kto_loss(meta["chosen"], [True, False, True], meta["chosen"],
                                  meta["rejected"], meta["rejected"])
    else:
        reference = (meta["chosen"], meta["rejected"]) if needs_reference(loss) else (None, None)
        value, metrics = pairwise_loss(loss, meta["chosen"], meta["rejected"], BATCH["n_chosen"],
                                       BATCH["n_rejected"], *reference)
    assert value.device.type == "meta" and value.dim() == 0
    assert {tensor.device.type for tensor in metrics.values()} == {"meta"}


def test_half_precision_log_probs_are_reduced_in_float32():
    value, metrics = pairwise_loss("simpo", BATCH["chosen"].bfloat16(), BATCH["rejected"].bfloat16(),
                                   BATCH["n_chosen"], BATCH["n_rejected"])
    assert value.dtype == torch.float32 and metrics["logps/chosen"].dtype == torch.float32


def test_the_loss_has_gradients_for_the_policy_only():
    chosen = BATCH["chosen"].clone().requires_grad_()
    value, metrics = pairwise_loss("dpo", chosen, BATCH["rejected"], BATCH["n_chosen"],
                                   BATCH["n_rejected"], BATCH["chosen"], BATCH["rejected"],
                                   sft_weight=1.0)
    value.backward()
    assert chosen.grad is not None and chosen.grad.abs().min() > 0
    assert not any(tensor.requires_grad for tensor in metrics.values())


def test_which_losses_need_a_reference():
    assert {name for name in LOSSES if needs_reference(name)} == {"dpo", "ipo", "hinge", "robust", "kto"}
    assert {name for name in LOSSES if not needs_reference(name)} == {"orpo", "simpo"}


def test_settings_are_filled_with_defaults():
    assert loss_settings("dpo", {}) == {"beta": 0.1, "sft_weight": 0.0}
    assert loss_settings("simpo", {"beta": 2}) == {"beta": 2.0, "gamma": 0.5,
                                                  "label_smoothing": 0.0, "sft_weight": 0.0}
    assert loss_settings("kto", {}) == {"beta": 0.1, "desirable_weight": 1.0,
                                        "undesirable_weight": 1.0}
    assert loss_settings("orpo", {}) == {"beta": 0.1}


@pytest.mark.parametrize("loss,settings,message", [
    ("dpo", {"gamma": 0.5}, "experiments.x.gamma: loss 'dpo' takes no 'gamma' (it takes beta, sft_weight)"),
    ("dpo", {"label_smoothing": 0.1}, "experiments.x.label_smoothing: loss 'dpo' takes no"),
    ("orpo", {"sft_weight": 1.0}, "experiments.x.sft_weight: loss 'orpo' takes no"),
    ("kto", {"sft_weight": 1.0}, "experiments.x.sft_weight: loss 'kto' takes no"),
    ("dpo", {"beta": 0}, "experiments.x.beta: 0 is outside (0.0, inf)"),
    ("robust", {"label_smoothing": 0.5}, "experiments.x.label_smoothing: 0.5 is outside [0.0, 0.5)"),
    ("simpo", {"gamma": -1}, "experiments.x.gamma: -1 is outside [0.0, inf)"),
    ("dpo", {"beta": True}, "experiments.x.beta: expected a number, got True"),
    ("dpo", {"beta": "0.1"}, "experiments.x.beta: expected a number, got '0.1'"),
    ("sigmoid", {}, "experiments.x.loss: unknown preference loss 'sigmoid' (one of dpo, ipo,"),
])
def test_settings_a_loss_does_not_take_are_refused_naming_the_key(loss, settings, message):
    with pytest.raises(ConfigError) as error:
        loss_settings(loss, settings, where="experiments.x")
    assert message in str(error.value)


def test_a_missing_or_unwanted_reference_is_refused():
    args = (BATCH["chosen"], BATCH["rejected"], BATCH["n_chosen"], BATCH["n_rejected"])
    with pytest.raises(ValueError, match="dpo needs reference_chosen_logps"):
        pairwise_loss("dpo", *args)
    with pytest.raises(ValueError, match="simpo is reference-free"):
        pairwise_loss("simpo", *args, BATCH["chosen"], BATCH["rejected"])
    with pytest.raises(ValueError, match="kto has kto_loss"):
        pairwise_loss("kto", *args)
