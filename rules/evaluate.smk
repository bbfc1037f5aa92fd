EVAL_CODE = ("evaluate_model", "chat_tokenize", "model_loading", "text_metrics", "run_info")


rule evaluate:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        test=lambda w: f"{experiment_data_dir(w)}/test.jsonl",
        code=code(*EVAL_CODE),
    output:
        metrics="results/eval/{experiment}/metrics.json",
        predictions="results/eval/{experiment}/predictions.jsonl",
        run_info="results/eval/{experiment}/run_info.json",
    params:
        cfg=lambda w: eval_job(
            w.experiment,
            EXPERIMENTS[w.experiment]["base_model"],
            EXPERIMENTS[w.experiment]["dataset"],
        ),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.evaluate_model --config {params.cfg:q} "
        "--model-dir {input.model} --adapter-dir results/adapters/{wildcards.experiment} "
        "--test-file {input.test} --out-dir results/eval/{wildcards.experiment} "
        "--threads {threads} > {log} 2>&1"


rule evaluate_base:
    input:
        model=get_model_dir,
        test="results/data/{dataset}/test.jsonl",
        code=code(*EVAL_CODE),
    output:
        metrics="results/eval/base/{model}/{dataset}/metrics.json",
        predictions="results/eval/base/{model}/{dataset}/predictions.jsonl",
        run_info="results/eval/base/{model}/{dataset}/run_info.json",
    params:
        cfg=lambda w: eval_job(None, w.model, w.dataset),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/evaluate_base/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/evaluate_base/{model}/{dataset}.tsv"
    shell:
        "python -m workflow_scripts.evaluate_model --config {params.cfg:q} "
        "--model-dir {input.model} --test-file {input.test} "
        "--out-dir results/eval/base/{wildcards.model}/{wildcards.dataset} "
        "--threads {threads} > {log} 2>&1"
