EVAL_CODE = ("evaluation/evaluate", "evaluation/generation", "evaluation/text_metrics",
             "evaluation/tool_eval", "evaluation/tool_calls", "training/chat_tokenize",
             "training/token_loss", "training/lean_tokens", "models/chat_templates", "models/loading", "data/formats",
             "common/run_info", "common/resource_usage", "evaluation/general_text", "evaluation/benchmarks",
             "evaluation/exam_files", "models/build_base_model")
EVAL_OUTPUTS = ("metrics.json", "predictions.jsonl", "record_losses.jsonl", "tool_calls.jsonl",
                "general_text.jsonl", "benchmarks.jsonl", "run_info.json")


rule evaluate:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        test=lambda w: f"{experiment_data_dir(w)}/test.jsonl",
        general=lambda w: general_inputs(eval_settings(
            w.experiment, EXPERIMENTS[w.experiment]["method"] == "qlora").get("general")),
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
        general=lambda w: general_inputs(BASE_EVALS[(w.model, w.dataset, w.key)].get("general")),
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


# A local exam (benchmarks: {name: {format: ceval, files: ...}}) checked and turned into an
# lm-eval task under results/benchmark_tasks/{benchmark}/ (evaluation/exam_files.py).
rule prepare_benchmark:
    input:
        test=lambda w: exam_files(CFG["benchmarks"][w.benchmark])["test"],
        dev=lambda w: exam_files(CFG["benchmarks"][w.benchmark])["dev"],
        code=code("evaluation/exam_files", "common/cli"),
    output:
        **{f.split(".")[0]: f"results/benchmark_tasks/{{benchmark}}/{f}"
           for f in ("task.yaml", "test.jsonl", "dev.jsonl")},
    wildcard_constraints:
        benchmark=alternatives_regex(local_benchmarks(CFG)),
    params:
        out_dir=lambda w, output: os.path.dirname(output.task),
        dev=lambda w, input: " ".join(["--dev", *map(shlex.quote, input.dev)]) if input.dev else "",
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/prepare_benchmark/{benchmark}.log",
    shell:
        "python -m workflow_scripts.evaluation.exam_files --name {wildcards.benchmark} "
        "--test {input.test:q} {params.dev} --out-dir {params.out_dir:q} > {log:q} 2>&1"


# Optional (a top-level `judge:`): an OpenAI-compatible model judges each experiment's
# generated answers against its base's, both orders; replies are cached in
# results/judge_cache/ (not an output: kept when a job fails, shared by every job).
JUDGE = CFG.get("judge")
JUDGMENTS = expand("results/eval/{e}/judgments.jsonl", e=EXPERIMENTS) if JUDGE else []


rule judge:
    input:
        tuned="results/eval/{experiment}/predictions.jsonl",
        base=lambda w: f"{base_eval_dir(w.experiment)}/predictions.jsonl",
        code=code("evaluation/judge", "evaluation/judge_client", "common/io_utils"),
    output:
        "results/eval/{experiment}/judgments.jsonl",
    wildcard_constraints:
        experiment=alternatives_regex(EXPERIMENTS),
    params:
        cfg=canonical_json(JUDGE or {}),
        tuned_dir=lambda w, input: os.path.dirname(input.tuned),
        base_dir=lambda w, input: os.path.dirname(input.base),
    localrule: True  # network calls only: from the submitting node, which reaches the judge
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/judge/{experiment}.log",
    shell:
        "python -m workflow_scripts.evaluation.judge --config {params.cfg:q} "
        "--base-eval {params.base_dir:q} --eval {params.tuned_dir:q} "
        "--cache-dir results/judge_cache --out {output:q} > {log:q} 2>&1"


# Preference experiments (stage: preference) on their held-out pairs, against their starting
# point's scores (the reference job's): evaluation/preference_eval.py. Their test.jsonl also
# goes through `evaluate` above, as any adapter's.
from workflow_scripts.evaluation.preference_eval import evaluation_job as preference_eval_job


rule evaluate_preference:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        tokenized=lambda w: f"{PREFERENCE.token_dir(w.experiment)}/manifest.json",
        start=lambda w: f"{PREFERENCE.start_scores_dir(w.experiment)}/manifest.json",
        code=code("evaluation/preference_eval", "evaluation/bootstrap", *PREFERENCE_CODE,
                  "training/reference_logps"),
    output:
        pairs="results/eval/{experiment}/preference_pairs.jsonl",
        summary="results/eval/{experiment}/preference.json",
    wildcard_constraints:
        experiment=alternatives_regex(PREFERENCE.names),
    params:
        cfg=lambda w: canonical_json(preference_eval_job(PREFERENCE, w.experiment)),
        adapter_dir=lambda w, input: os.path.dirname(input.adapter),
        tokenized_dir=lambda w, input: os.path.dirname(input.tokenized),
        start_dir=lambda w, input: os.path.dirname(input.start),
        out_dir=lambda w, output: os.path.dirname(output.summary),
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["runtime"] or 60,
        gpu=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["gpu"],
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/evaluate_preference/{experiment}.log",
    benchmark:
        "results/benchmarks/evaluate_preference/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.evaluation.preference_eval --config {params.cfg:q} "
        "--model-dir {input.model:q} --adapter-dir {params.adapter_dir:q} "
        "--tokenized-dir {params.tokenized_dir:q} --start-dir {params.start_dir:q} "
        "--out-dir {params.out_dir:q} --threads {threads} > {log:q} 2>&1"


# A model's own answers to a dataset's prompts: the rejected answers of a `pairs_from`
# dataset with `rejected: model_answer` (the SFT experiment's evaluation settings decode).
rule answer_prompts:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        data=expand("results/data/{{dataset}}/{split}.jsonl", split=("train", "valid", "test")),
        code=code("evaluation/answer_prompts", "evaluation/generation", "models/loading",
                  "models/chat_templates"),
    output:
        expand("results/answers/{{experiment}}/{{dataset}}/{split}.jsonl",
               split=("train", "valid", "test")),
    params:
        cfg=lambda w: canonical_json({
            "evaluation": EXPERIMENTS[w.experiment]["evaluation"], "seed": CFG["seed"],
            "quantization": "4bit" if EXPERIMENTS[w.experiment]["method"] == "qlora" else None,
            "trust_remote_code": model_spec(EXPERIMENTS[w.experiment]["base_model"]).get(
                "trust_remote_code", False)}),
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["runtime"] or 60,
        gpu=lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["gpu"],
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/answer_prompts/{experiment}/{dataset}.log",
    benchmark:
        "results/benchmarks/answer_prompts/{experiment}/{dataset}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.evaluation.answer_prompts --config {params.cfg:q} "
        "--model-dir {input.model:q} --adapter-dir results/adapters/{wildcards.experiment} "
        "--data-dir results/data/{wildcards.dataset} "
        "--out-dir results/answers/{wildcards.experiment}/{wildcards.dataset} "
        "--threads {threads} > {log:q} 2>&1"
