rule prepare_dataset:
    input:
        raw=lambda w: dataset_files(w.dataset),
        code=code("data/prepare_dataset", "data/formats", "data/cleaning", "data/split",
                  "data/dedupe_index", "data/preference_formats", "data/preference_cleaning",
                  "data/pairs_from", "common/run_info"),
    output:
        train="results/data/{dataset}/train.jsonl",
        valid="results/data/{dataset}/valid.jsonl",
        test="results/data/{dataset}/test.jsonl",
        rejects="results/data/{dataset}/rejects.jsonl",
        stats="results/data/{dataset}/stats.json",
        run_info="results/data/{dataset}/run_info.json",
    params:
        cfg=lambda w: canonical_json({
            "dataset": dataset_job(w.dataset),
            "cleaning": CFG["cleaning"],
            "split": CFG["split"],
            "seed": CFG["split"]["seed"],
        }),
    wildcard_constraints:
        dataset=alternatives_regex(set(CFG["datasets"]) - set(PREFERENCE_DATASETS)),
    conda:
        "../envs/workflow.yaml"
    threads: 2
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    shell:
        "python -m workflow_scripts.data.prepare_dataset --name {wildcards.dataset} "
        "--config {params.cfg:q} --out-dir results/data/{wildcards.dataset} --workers {threads} "
        "> {log:q} 2>&1 || {{ grep '^prepare_dataset: error' {log:q} >&2; exit 1; }}; "
        "grep '^prepare_dataset: warning' {log:q} >&2 || true"  # warnings on the terminal too


# A preference dataset (docs/data.md) also writes its pairs (or KTO examples) per split; its
# {train,valid,test}.jsonl hold the chosen answers as chat records, for the evaluation stage.
use rule prepare_dataset as prepare_pairs with:
    output:
        train="results/data/{dataset}/train.jsonl",
        valid="results/data/{dataset}/valid.jsonl",
        test="results/data/{dataset}/test.jsonl",
        train_pairs="results/data/{dataset}/train.pairs.jsonl",
        valid_pairs="results/data/{dataset}/valid.pairs.jsonl",
        test_pairs="results/data/{dataset}/test.pairs.jsonl",
        rejects="results/data/{dataset}/rejects.jsonl",
        stats="results/data/{dataset}/stats.json",
        run_info="results/data/{dataset}/run_info.json",
    wildcard_constraints:
        dataset=alternatives_regex(PREFERENCE_DATASETS),
