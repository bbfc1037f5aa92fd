# Preference tuning (DPO and kin) after SFT: experiments with `stage: preference`. The pairs
# are tokenized once per (dataset, tokenizer, max_length); the reference's answer log-probs are
# computed once per (reference, tokenized pairs) and read by every experiment with that
# reference (a beta or loss sweep scores it once); training writes its adapter where SFT
# adapters go, so evaluation, the report, tracking, export and the studio take it as any other.
# The plan: workflow_scripts/training/preference_plan.py; docs/training.md, "Preference tuning".
# PREFERENCE = PreferencePlan(...) is made in rules/common.smk, where a bad config is refused.
PAIR_SPLITS = ("train", "valid", "test")
PREFERENCE_CODE = ("training/preference_tokenize", "training/preference_logps",
                   "training/token_loss", "training/lean_tokens", "training/chat_tokenize",
                   "models/loading", "models/chat_templates", "models/tokenizer_identity")


rule tokenize_preference:
    input:
        model=lambda w: model_dir(PREFERENCE.model_of(w.dataset, w.key)),
        pairs=expand("results/data/{{dataset}}/{split}.pairs.jsonl", split=PAIR_SPLITS),
        code=code(*PREFERENCE_CODE),
    output:
        arrow=expand("results/tokenized_pairs/{{dataset}}/{{key}}/{split}.arrow", split=PAIR_SPLITS),
        stats="results/tokenized_pairs/{dataset}/{key}/stats.json",
        manifest="results/tokenized_pairs/{dataset}/{key}/manifest.json",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    params:
        cfg=lambda w: canonical_json(PREFERENCE.token_jobs[(w.dataset, w.key)]),
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/tokenize_preference/{dataset}/{key}.log",
    benchmark:
        "results/benchmarks/tokenize_preference/{dataset}/{key}.tsv"
    shell:
        "python -m workflow_scripts.training.preference_tokenize --config {params.cfg:q} "
        "--model-dir {input.model:q} --data-dir results/data/{wildcards.dataset} "
        "--out-dir results/tokenized_pairs/{wildcards.dataset}/{wildcards.key} > {log:q} 2>&1"



rule reference_logps:
    input:
        model=lambda w: model_dir(PREFERENCE.reference_job(w.dataset, w.key)["base_model"]),
        adapter=reference_adapter,
        tokenized=lambda w: "results/tokenized_pairs/{dataset}/{tokens}/manifest.json".format(
            dataset=w.dataset, tokens=PREFERENCE.reference_job(w.dataset, w.key)["tokens"]),
        code=code(*PREFERENCE_CODE, "training/reference_logps"),
    output:
        scores=expand("results/preference/reference/{{dataset}}/{{key}}/{split}.parquet",
                      split=PAIR_SPLITS),
        manifest="results/preference/reference/{dataset}/{key}/manifest.json",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    params:
        cfg=lambda w: canonical_json(PREFERENCE.reference_job(w.dataset, w.key)),
        adapter_arg=lambda w, input: f"--adapter-dir {shlex.quote(os.path.dirname(input.adapter[0]))}"
        if input.adapter else "",
        tokenized_dir=lambda w, input: os.path.dirname(input.tokenized),
        out_dir=lambda w, output: os.path.dirname(output.manifest),
    threads: 1
    resources:
        gpu=lambda w: min(1, max(stage_resources(EXPERIMENTS[n], "train")["gpu"]
                                 for n in PREFERENCE.names)),
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/reference_logps/{dataset}/{key}.log",
    benchmark:
        "results/benchmarks/reference_logps/{dataset}/{key}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.training.reference_logps --config {params.cfg:q} "
        "--model-dir {input.model:q} {params.adapter_arg} "
        "--tokenized-dir {params.tokenized_dir:q} --out-dir {params.out_dir:q} "
        "--threads {threads} > {log:q} 2>&1"




rule train_preference:
    input:
        unpack(preference_inputs),
        model=get_experiment_model_dir,
        code=code(*PREFERENCE_CODE, "training/train_preference", "training/preference_objective",
                  "training/preference_losses", "training/reference_logps", *TRAIN_CODE),
    output:
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        adapter_config="results/adapters/{experiment}/adapter_config.json",
        log="results/adapters/{experiment}/trainer_log.jsonl",
        metrics="results/adapters/{experiment}/train_metrics.json",
        run_info="results/adapters/{experiment}/run_info.json",
    wildcard_constraints:
        experiment=alternatives_regex(PREFERENCE.names),
    params:
        cfg=training_job,
        args=preference_args,
        data_dir=experiment_data_dir,
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["runtime"] or 120,
        gpu=lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["gpu"],
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/train_adapter/{experiment}.log",
    benchmark:
        "results/benchmarks/train_adapter/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.training.train_preference --config {params.cfg:q} "
        "--model-dir {input.model:q} {params.args} --data-dir {params.data_dir:q} "
        "--out-dir results/adapters/{wildcards.experiment} "
        "--checkpoint-dir results/checkpoints/{wildcards.experiment} "
        "--progress-file logs/train_adapter/{wildcards.experiment}.progress.jsonl "
        "--threads {threads} > {log:q} 2>&1"
