EVAL_CODE = ("evaluation/evaluate", "evaluation/generation", "evaluation/text_metrics",
             "evaluation/tool_eval", "evaluation/tool_calls", "training/chat_tokenize",
             "training/token_loss", "models/chat_templates", "models/loading", "data/formats",
             "common/run_info", "common/resource_usage")
EVAL_OUTPUTS = ("metrics.json", "predictions.jsonl", "record_losses.jsonl", "tool_calls.jsonl",
                "run_info.json")


rule evaluate:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        test=lambda w: f"{experiment_data_dir(w)}/test.jsonl",
        code=code(*EVAL_CODE),
    output:
        **{f.split(".")[0]: f"results/eval/{{experiment}}/{f}" for f in EVAL_OUTPUTS},
    params:
        cfg=adapter_eval_job,
        adapter_dir=lambda w, input: os.path.dirname(input.adapter),
        out_dir=lambda w, output: os.path.dirname(output.metrics),
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["runtime"] or 60,
        gpu=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["gpu"],
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.evaluation.evaluate --config {params.cfg:q} "
        "--model-dir {input.model:q} --adapter-dir {params.adapter_dir:q} "
        "--test-file {input.test:q} --out-dir {params.out_dir:q} "
        "--threads {threads} > {log:q} 2>&1"


# One base evaluation per distinct set of evaluation settings (see base_evaluations).
rule evaluate_base:
    input:
        model=get_model_dir,
        test="results/data/{dataset}/test.jsonl",
        code=code(*EVAL_CODE),
    output:
        **{f.split(".")[0]: f"results/eval/base/{{model}}/{{dataset}}/{{key}}/{f}"
           for f in EVAL_OUTPUTS},
    wildcard_constraints:
        key=r"(?:full|nf4)-[0-9a-f]{10}",
    params:
        cfg=base_eval_job,
        out_dir=lambda w, output: os.path.dirname(output.metrics),
    threads: base_eval_resource("threads", 2)
    resources:
        mem_mb=base_eval_resource("mem_mb", 8000),
        runtime=base_eval_resource("runtime", 60),
        gpu=base_eval_resource("gpu", 0),
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/evaluate_base/{model}/{dataset}/{key}.log",
    benchmark:
        "results/benchmarks/evaluate_base/{model}/{dataset}/{key}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.evaluation.evaluate --config {params.cfg:q} "
        "--model-dir {input.model:q} --test-file {input.test:q} --out-dir {params.out_dir:q} "
        "--threads {threads} > {log:q} 2>&1"
