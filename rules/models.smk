SCRATCH_MODELS = [m for m, s in CFG["base_models"].items() if s["source"] == "scratch"]
HUB_MODELS = [m for m, s in CFG["base_models"].items() if s["source"] == "hub"]


rule build_base_model:
    input:
        data=lambda w: expand(
            "results/data/{dataset}/train.jsonl",
            dataset=model_spec(w.model)["pretrain"]["datasets"],
        ),
        code=code("models/build_base_model", "models/chat_templates", "models/loading",
                  "data/cleaning", "common/run_info"),
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model="|".join(SCRATCH_MODELS) or "__none__",
    params:
        cfg=lambda w: canonical_json({"model": model_spec(w.model), "seed": CFG["seed"]}),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=lambda w: scratch_model_gpus(w.model),
        machine_gpus=machine_gpus,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/build_base_model/{model}.log",
    benchmark:
        "results/benchmarks/build_base_model/{model}.tsv"
    shell:
        "python -m workflow_scripts.launch.gpu_slots --gpus {resources.gpu} "
        "--total {resources.machine_gpus} -- "
        "python -m workflow_scripts.models.build_base_model --name {wildcards.model} "
        "--config {params.cfg:q} --data {input.data} --out-dir {output} "
        "--threads {threads} > {log} 2>&1"


# Compute nodes often have no internet: hub models are fetched on the submitting node.
rule fetch_base_model:
    input:
        code=code("models/loading", "models/chat_templates"),
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model="|".join(HUB_MODELS) or "__none__",
    params:
        cfg=lambda w: canonical_json(model_spec(w.model)),
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/fetch_base_model/{model}.log",
    shell:
        "python -m workflow_scripts.models.loading fetch --config {params.cfg:q} "
        "--out-dir {output} > {log} 2>&1"
