# Tokenization, once per distinct set of tokens: every experiment that trains on the same
# dataset with the same tokenizer, chat template, max_length, overflow policy and packing
# reads one results/tokenized/{dataset}/{key}/ (a rank, learning-rate or method sweep
# tokenizes once). See docs/training.md, "Tokenized data".
import functools

from workflow_scripts.models.tokenizer_identity import tokenizer_content_hash
from workflow_scripts.training.tokenize_dataset import settings_key, token_settings

TOKENIZE_CODE = ("training/tokenize_dataset", "training/chat_tokenize", "training/packing",
                 "training/token_loss", "models/loading", "models/chat_templates",
                 "models/tokenizer_identity")


@functools.cache
def tokenizer_ref(model):
    """What identifies a base model's tokenizer while the DAG is built, without a checkpoint.

    A `path` model's directory is there: its tokenizer files' content hash, so models that
    share a tokenizer share the job and an edited template or vocabulary makes a new one. A
    built or fetched model's directory is made by a rule: its name (scratch) or its pinned
    hub revision; a rebuild is newer than the tokenized data, which Snakemake then remakes."""
    spec = model_spec(model)
    if spec["source"] == "path":
        return {"sha256": tokenizer_content_hash(spec["path"])}
    if spec["source"] == "hub":
        return {"hub": spec["id"], "revision": spec["revision"]}
    return {"scratch": model}


def tokenize_settings(experiment):
    exp = EXPERIMENTS[experiment]
    return {"dataset": exp["dataset"], "tokenizer": tokenizer_ref(exp["base_model"]),
            "trust_remote_code": model_spec(exp["base_model"]).get("trust_remote_code", False),
            **token_settings(exp["training"])}


def tokenizations():
    """(dataset, key) -> (settings, the models and experiments that read it)."""
    jobs = {}
    for name in EXPERIMENTS:
        settings = tokenize_settings(name)
        entry = jobs.setdefault((settings["dataset"], settings_key(settings)), (settings, [], []))
        entry[1].append(EXPERIMENTS[name]["base_model"])
        entry[2].append(EXPERIMENTS[name])
    return jobs


TOKENIZED = tokenizations()


def tokenized_dir(wildcards):
    settings = tokenize_settings(wildcards.experiment)
    return f"results/tokenized/{settings['dataset']}/{settings_key(settings)}"


def tokenize_model_dir(wildcards):
    """Any of the models that share this tokenizer: the first by name, so a stable choice."""
    return model_dir(min(TOKENIZED[(wildcards.dataset, wildcards.key)][1]))


def tokenize_resource(key, default):
    """The most that any experiment reading this tokenization asks for (resources.tokenize)."""

    def get(wildcards):
        values = [stage_resources(e, "tokenize")[key]
                  for e in TOKENIZED[(wildcards.dataset, wildcards.key)][2]]
        return max((v for v in values if v is not None), default=default)

    return get


rule tokenize_dataset:
    input:
        model=tokenize_model_dir,
        train="results/data/{dataset}/train.jsonl",
        valid="results/data/{dataset}/valid.jsonl",
        code=code(*TOKENIZE_CODE),
    output:
        train="results/tokenized/{dataset}/{key}/train.arrow",
        valid="results/tokenized/{dataset}/{key}/valid.arrow",
        stats="results/tokenized/{dataset}/{key}/stats.json",
        manifest="results/tokenized/{dataset}/{key}/manifest.json",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    params:
        cfg=lambda w: canonical_json(TOKENIZED[(w.dataset, w.key)][0]),
    threads: tokenize_resource("threads", 2)
    resources:
        mem_mb=tokenize_resource("mem_mb", 4000),
        runtime=tokenize_resource("runtime", 60),
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/tokenize_dataset/{dataset}/{key}.log",
    benchmark:
        "results/benchmarks/tokenize_dataset/{dataset}/{key}.tsv"
    shell:
        "python -m workflow_scripts.training.tokenize_dataset --config {params.cfg:q} "
        "--model-dir {input.model:q} --data-dir results/data/{wildcards.dataset} "
        "--out-dir results/tokenized/{wildcards.dataset}/{wildcards.key} "
        "--threads {threads} > {log:q} 2>&1"
