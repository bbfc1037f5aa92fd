# Tokenization, once per distinct set of tokens: every experiment that trains on the same
# dataset with the same tokenizer, chat template, max_length, overflow policy and packing
# reads one results/tokenized/{dataset}/{key}/ (a rank, learning-rate or method sweep
# tokenizes once). The plan: workflow_scripts/training/tokenize_plan.py; why the tokenizer is
# keyed as it is: docs/training.md, "Tokenized data".
from workflow_scripts.training.tokenize_plan import TokenizePlan

TOKENIZE = TokenizePlan(EXPERIMENTS, CFG["base_models"])
TOKENIZE_CODE = ("training/tokenize_dataset", "training/chat_tokenize", "training/fast_tokenize",
                 "training/template_skeleton", "training/packing",
                 "training/token_loss", "models/loading", "models/chat_templates",
                 "models/tokenizer_identity")


rule tokenize_dataset:
    input:
        model=lambda w: model_dir(TOKENIZE.model(w.dataset, w.key)),
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
        cfg=lambda w: canonical_json(TOKENIZE.job_settings(w.dataset, w.key)),
    threads: lambda w: TOKENIZE.resource(w.dataset, w.key, "threads", 2)
    resources:
        mem_mb=lambda w: TOKENIZE.resource(w.dataset, w.key, "mem_mb", 4000),
        runtime=lambda w: TOKENIZE.resource(w.dataset, w.key, "runtime", 60),
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
