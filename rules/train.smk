# GPUs: every job that may use one starts through workflow_scripts/launch/gpu_slots.py, which holds
# distinct devices for the job's lifetime (a no-op on Slurm, which gives each job its own); a
# training with training.devices > 1 runs under local_launch, with training.nodes > 1 under
# srun and torchrun on Slurm. See docs/gpus.md and docs/slurm.md.
from workflow_scripts.launch.gpu_slots import multi_node_resources, stage_resources, train_launcher
from workflow_scripts.training.preference_plan import is_preference

TRAIN_CODE = ("training/train_adapter", "training/chat_tokenize", "training/packing",
              "training/token_loss", "training/lean_tokens", "training/length_sampler", "training/progress",
              "models/chat_templates", "models/loading", "launch/local_launch",
              "common/resource_usage", "common/run_info", "models/content_hash")


rule train_adapter:
    input:
        model=get_experiment_model_dir,
        train=lambda w: f"{experiment_data_dir(w)}/train.jsonl",
        valid=lambda w: f"{experiment_data_dir(w)}/valid.jsonl",
        tokenized=lambda w: f"{TOKENIZE.directory(w.experiment)}/manifest.json",  # tokenize.smk
        search_round=trial_round_file,  # a search trial's settings (search.smk)
        code=code(*TRAIN_CODE, "training/tokenize_dataset"),
    output:
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        adapter_config="results/adapters/{experiment}/adapter_config.json",
        log="results/adapters/{experiment}/trainer_log.jsonl",
        metrics="results/adapters/{experiment}/train_metrics.json",
        run_info="results/adapters/{experiment}/run_info.json",
    wildcard_constraints:  # preference experiments train in rules/preference.smk
        experiment=alternatives_regex(n for n, e in EXPERIMENTS.items() if not is_preference(e)),
    params:
        cfg=training_job,
        data_dir=experiment_data_dir,
        tokenized_dir=lambda w: TOKENIZE.directory(w.experiment),
        launcher=lambda w: train_launcher(EXPERIMENTS[w.experiment]["training"]),
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["runtime"] or 120,
        # sbatch --gpus counts the job's GPUs: on one node only (across nodes: gres, per node)
        gpu=lambda w: None if EXPERIMENTS[w.experiment]["training"]["nodes"] > 1
        else stage_resources(EXPERIMENTS[w.experiment], "train")["gpu"],
        gres=lambda w: multi_node_resources(EXPERIMENTS[w.experiment])["gres"],
        nodes=lambda w: multi_node_resources(EXPERIMENTS[w.experiment])["nodes"],
        tasks=lambda w: multi_node_resources(EXPERIMENTS[w.experiment])["tasks"],
        tasks_per_gpu=lambda w: multi_node_resources(EXPERIMENTS[w.experiment])["tasks_per_gpu"],
        mpi=lambda w: multi_node_resources(EXPERIMENTS[w.experiment])["mpi"],
        slot_gpus=lambda w: stage_resources(EXPERIMENTS[w.experiment], "train")["gpu"],
        machine_gpus=machine_gpus,
        threads_per_process=lambda w, threads: max(
            1, threads // EXPERIMENTS[w.experiment]["training"]["devices"]
        ),
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/train_adapter/{experiment}.log",
    benchmark:
        "results/benchmarks/train_adapter/{experiment}.tsv"
    shell:
        # Checkpoints live outside the outputs so that a killed job resumes.
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.slot_gpus} "
        "--total {resources.machine_gpus} -- "
        "{params.launcher} -m workflow_scripts.training.train_adapter --config {params.cfg:q} "
        "--model-dir {input.model:q} --data-dir {params.data_dir:q} "
        "--tokenized-dir {params.tokenized_dir:q} "
        "--out-dir results/adapters/{wildcards.experiment} "
        "--checkpoint-dir results/checkpoints/{wildcards.experiment} "
        "--progress-file logs/train_adapter/{wildcards.experiment}.progress.jsonl "
        "--threads {resources.threads_per_process} > {log:q} 2>&1"


rule merge_adapter:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        code=code("training/merge_adapter", "models/loading", "models/chat_templates"),
    output:
        directory("results/merged/{experiment}"),
    params:
        cfg=lambda w: canonical_json(model_spec(EXPERIMENTS[w.experiment]["base_model"])),
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["runtime"] or 60,
        gpu=lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["gpu"],
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/merge_adapter/{experiment}.log",
    benchmark:
        "results/benchmarks/merge_adapter/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.training.merge_adapter --model-dir {input.model:q} "
        "--adapter-dir results/adapters/{wildcards.experiment} --config {params.cfg:q} "
        "--out-dir {output:q} > {log:q} 2>&1"
