"""Which tokenization jobs a config needs, and which one each experiment reads.

Imported while Snakemake builds the DAG (rules/tokenize.smk, rules/train.smk): one job per
distinct {dataset, tokenizer, trust_remote_code, max_length, overflow, packing}. See
docs/training.md, "Tokenized data", for why the tokenizer is keyed as it is.
"""
from __future__ import annotations

from functools import cache

from workflow_scripts.launch.gpu_slots import stage_resources
from workflow_scripts.models.tokenizer_identity import tokenizer_content_hash
from workflow_scripts.training.tokenize_dataset import settings_key, token_settings


class TokenizePlan:
    """The tokenization jobs of resolved `experiments` on the config's `base_models`."""

    def __init__(self, experiments: dict[str, dict], base_models: dict[str, dict]):
        self.experiments, self.base_models = experiments, base_models
        self.jobs: dict[tuple[str, str], tuple[dict, list[str], list[dict]]] = {}
        for name, exp in experiments.items():
            if exp.get("stage", "sft") == "preference":
                continue  # its pairs are tokenized by preference_tokenize (preference_plan.py)
            settings = self.settings(name)
            entry = self.jobs.setdefault((exp["dataset"], settings_key(settings)), (settings, [], []))
            entry[1].append(exp["base_model"])
            entry[2].append(exp)

    @cache
    def tokenizer_ref(self, model: str) -> dict:
        """What stands for a model's tokenizer while the DAG is built, without a checkpoint.

        A `path` model's directory is there: its tokenizer files' content hash, so models that
        share a tokenizer share the job and an edited template or vocabulary makes a new one.
        A built or fetched model's directory is made by a rule: its name (scratch) or pinned hub
        revision; a rebuild is newer than the tokenized data, which Snakemake then remakes."""
        spec = self.base_models[model]
        if spec["source"] == "path":
            return {"sha256": tokenizer_content_hash(spec["path"])}
        if spec["source"] == "hub":
            return {"hub": spec["id"], "revision": spec["revision"]}
        return {"scratch": model}

    def settings(self, experiment: str) -> dict:
        """The job's config: everything that decides the tokens of `experiment`."""
        exp = self.experiments[experiment]
        return {"dataset": exp["dataset"], "tokenizer": self.tokenizer_ref(exp["base_model"]),
                "trust_remote_code": self.base_models[exp["base_model"]].get("trust_remote_code", False),
                **token_settings(exp["training"])}

    def directory(self, experiment: str) -> str:
        """results/tokenized/{dataset}/{key}: what `experiment` trains on."""
        settings = self.settings(experiment)
        return f"results/tokenized/{settings['dataset']}/{settings_key(settings)}"

    def job_settings(self, dataset: str, key: str) -> dict:
        return self.jobs[(dataset, key)][0]

    def model(self, dataset: str, key: str) -> str:
        """Any of the models that share this tokenizer: the first by name, a stable choice."""
        return min(self.jobs[(dataset, key)][1])

    def resource(self, dataset: str, key: str, name: str, default: int) -> int:
        """The most that any experiment reading this job asks for (`resources.tokenize`)."""
        values = [stage_resources(e, "tokenize")[name] for e in self.jobs[(dataset, key)][2]]
        return max((v for v in values if v is not None), default=default)
