rule train_adapter:
    input:
        model=get_experiment_model_dir,
        train=lambda w: f"{experiment_data_dir(w)}/train.jsonl",
        valid=lambda w: f"{experiment_data_dir(w)}/valid.jsonl",
        code=code("train_adapter", "chat_tokenize", "model_loading", "resource_usage", "run_info"),
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
    log:
        "logs/train_adapter/{experiment}.log",
    benchmark:
        "results/benchmarks/train_adapter/{experiment}.tsv"
    shell:
        # Checkpoints live outside the outputs so that a killed job resumes.
        "{PYTHON} -m workflow_scripts.train_adapter --config {params.cfg:q} "
        "--model-dir {input.model} --data-dir {params.data_dir} "
        "--out-dir results/adapters/{wildcards.experiment} "
        "--checkpoint-dir results/checkpoints/{wildcards.experiment} "
        "--threads {threads} > {log} 2>&1"
