"""Which preference jobs a config needs, and which ones each preference experiment reads.

Imported while Snakemake builds the DAG (rules/preference.smk). One tokenization job per
(dataset, tokenizer, max_length), and one reference job per (reference, tokenized set): the
reference is the SFT adapter an experiment continues (`init_from`) or its base model, 4-bit
for QLoRA, scored in the compute dtype training uses. Experiments that differ only in the
loss, beta or learning rate share both jobs. Reference-free losses (ORPO, SimPO) train without
it; evaluation reads it for every experiment, as its starting point's scores.
"""
from __future__ import annotations

import hashlib

from workflow_scripts.common.config import ConfigError
from workflow_scripts.common.io_utils import canonical_json
from workflow_scripts.training import preference_objective
from workflow_scripts.training.tokenize_plan import TokenizePlan

PAIRWISE_FORMATS = {"alpaca_pairwise", "sharegpt_pairwise", "openai_pairwise", "trl_preference",
                    "swift_preference", "pairs_from"}
UNPAIRED_FORMATS = {"kto"}
PREFERENCE_FORMATS = PAIRWISE_FORMATS | UNPAIRED_FORMATS


def is_preference(experiment: dict) -> bool:
    return experiment.get("stage", "sft") == "preference"


def settings_key(settings: dict) -> str:
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


class PreferencePlan:
    """The preference jobs of resolved `experiments` on the config's datasets and models."""

    def __init__(self, experiments: dict[str, dict], config: dict, source: str = "config"):
        self.experiments, self.config = experiments, config
        self.names = sorted(n for n, e in experiments.items() if is_preference(e))
        self.tokenizers = TokenizePlan({}, config["base_models"])
        for name in self.names:
            check_experiment(name, experiments[name], config, source)
            experiments[name]["preference"] = preference_objective.resolved(experiments[name]["preference"])
        self.token_jobs = {(self.experiments[n]["dataset"], self.token_key(n)): self.token_settings(n)
                           for n in self.names}
        # every experiment's starting point is scored: the reference of the losses that read
        # one, and what evaluation compares every preference experiment with
        self.reference_jobs = {(self.experiments[n]["dataset"], self.reference_key(n)):
                               self.reference_settings(n) for n in self.names}

    def token_settings(self, name: str) -> dict:
        exp = self.experiments[name]
        model = exp["base_model"]
        return {"dataset": exp["dataset"], "tokenizer": self.tokenizers.tokenizer_ref(model),
                "trust_remote_code": self.config["base_models"][model].get("trust_remote_code", False),
                "max_length": exp["training"]["max_length"]}

    def token_key(self, name: str) -> str:
        return settings_key(self.token_settings(name))

    def token_dir(self, name: str) -> str:
        return f"results/tokenized_pairs/{self.experiments[name]['dataset']}/{self.token_key(name)}"

    def model_of(self, dataset: str, key: str) -> str:
        """A model with the tokenizer of this tokenization job (the first by name)."""
        return min(self.experiments[n]["base_model"] for n in self.names
                   if (self.experiments[n]["dataset"], self.token_key(n)) == (dataset, key))

    def needs_reference(self, name: str) -> bool:
        return preference_objective.needs_reference(self.experiments[name]["preference"]["loss"])

    def reference_settings(self, name: str) -> dict:
        """Everything that decides the reference's numbers."""
        exp = self.experiments[name]
        return {"tokens": self.token_key(name), "dataset": exp["dataset"],
                "base_model": exp["base_model"],
                "model": self.config["base_models"][exp["base_model"]],
                "adapter": exp.get("init_from"),
                "quantization": "4bit" if exp["method"] == "qlora" else None,
                "batch_size": exp["evaluation"]["batch_size"], "seed": self.config["seed"]}

    def reference_key(self, name: str) -> str:
        return settings_key(self.reference_settings(name))

    def start_scores_dir(self, name: str) -> str:
        """The starting point's (the SFT adapter's or the base's) answer log-probs."""
        return f"results/preference/reference/{self.experiments[name]['dataset']}/{self.reference_key(name)}"

    def reference_dir(self, name: str) -> str | None:
        """What training reads as its reference: the starting point's scores, or None for a
        reference-free loss."""
        return self.start_scores_dir(name) if self.needs_reference(name) else None

    def reference_job(self, dataset: str, key: str) -> dict:
        return self.reference_jobs[(dataset, key)]

    def start_dir(self, name: str) -> str | None:
        """The adapter the experiment continues, or None (a new adapter on the base)."""
        start = self.experiments[name].get("init_from")
        return f"results/adapters/{start}" if start else None


def check_experiment(name: str, exp: dict, config: dict, source: str) -> None:
    """Refuse, naming the key, a preference experiment its data or loss cannot run."""
    fmt = config["datasets"][exp["dataset"]]["format"]
    loss = exp["preference"]["loss"]
    where = f"invalid config in {source}: experiments.{name}"
    if fmt not in PREFERENCE_FORMATS:
        raise ConfigError(f"{where}.dataset: {exp['dataset']!r} has format {fmt!r}, not a "
                          f"preference format ({', '.join(sorted(PREFERENCE_FORMATS))})")
    if (loss == "kto") != (fmt in UNPAIRED_FORMATS):
        raise ConfigError(f"{where}.preference.loss: {loss!r} needs "
                          f"{'unpaired (kto)' if loss == 'kto' else 'pairwise'} data; "
                          f"{exp['dataset']!r} is {fmt!r}")
    problem = preference_objective.check_spec(exp["preference"])
    if problem:
        raise ConfigError(f"{where}.preference.{problem}")
