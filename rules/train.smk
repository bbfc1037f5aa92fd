rule train_adapter:
    input:
        model=get_experiment_model_dir,
        train=lambda w: f"{experiment_data_dir(w)}/train.jsonl",
        valid=lambda w: f"{experiment_data_dir(w)}/valid.jsonl",
        code=code("train_adapter", "chat_tokenize", "packing", "model_loading", "resource_usage", "run_info"),
    output:
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        adapter_config="results/adapters/{experiment}/adapter_config.json",
        log="results/adapters/{experiment}/trainer_log.jsonl",
        metrics="results/adapters/{experiment}/train_metrics.json",
        run_info="results/adapters/{experiment}/run_info.json",
    params:
        cfg=training_job,
        data_dir=experiment_data_dir,
    threads: 2
    resources:
        mem_mb=experiment_resource("mem_mb", 8000),
        runtime=experiment_resource("runtime", 120),
        gpu=experiment_resource("gpu", 0),
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/train_adapter/{experiment}.log",
    benchmark:
        "results/benchmarks/train_adapter/{experiment}.tsv"
    shell:
        # Checkpoints live outside the outputs so that a killed job resumes.
        "python -m workflow_scripts.train_adapter --config {params.cfg:q} "
        "--model-dir {input.model} --data-dir {params.data_dir} "
        "--out-dir results/adapters/{wildcards.experiment} "
        "--checkpoint-dir results/checkpoints/{wildcards.experiment} "
        "--threads {threads} > {log} 2>&1"


rule merge_adapter:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        code=code("merge_adapter", "model_loading"),
    output:
        directory("results/merged/{experiment}"),
    params:
        cfg=lambda w: canonical_json(model_spec(EXPERIMENTS[w.experiment]["base_model"])),
    threads: 2
    resources:
        mem_mb=experiment_resource("mem_mb", 8000),
        runtime=60,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/merge_adapter/{experiment}.log",
    benchmark:
        "results/benchmarks/merge_adapter/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.merge_adapter --model-dir {input.model} "
        "--adapter-dir results/adapters/{wildcards.experiment} --config {params.cfg:q} "
        "--out-dir {output} > {log} 2>&1"
