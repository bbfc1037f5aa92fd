# Exports for deployment (`export:` in the config, docs/export.md): a merged model directory,
# GGUF files for llama.cpp and Ollama, and the vLLM serve line of an adapter vLLM can load.
from workflow_scripts.export.plan import export_targets, merged_job, vllm_base

EXPORTS = CFG["export"]
EXPORT_CODE = ("training/merge_adapter", "models/loading", "models/chat_templates",
               "evaluation/generation")
EXPORT_TARGETS = export_targets(EXPORTS)


rule export_merged:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        code=code("export/merged", "export/plan", *EXPORT_CODE),
    output:
        directory("results/exports/{experiment}/merged"),
    params:
        cfg=lambda w: merged_job(EXPERIMENTS[w.experiment],
                                 model_spec(EXPERIMENTS[w.experiment]["base_model"]),
                                 EXPORTS[w.experiment]),
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["threads"]
    resources:
        mem_mb=lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["mem_mb"] or 8000,
        runtime=lambda w: stage_resources(EXPERIMENTS[w.experiment], "merge")["runtime"] or 60,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_merged/{experiment}.log",
    benchmark:
        "results/benchmarks/export_merged/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.export.merged --model-dir {input.model:q} "
        "--adapter-dir results/adapters/{wildcards.experiment} --config {params.cfg:q} "
        "--out-dir {output:q} > {log:q} 2>&1"


rule export_vllm:
    input:
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        adapter_config="results/adapters/{experiment}/adapter_config.json",
        code=code("export/vllm_adapter"),
    output:
        "results/exports/{experiment}/vllm/serve.sh",
    params:
        base=lambda w: vllm_base(model_spec(EXPERIMENTS[w.experiment]["base_model"]),
                                 get_experiment_model_dir(w)),
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_vllm/{experiment}.log",
    benchmark:
        "results/benchmarks/export_vllm/{experiment}.tsv"
    shell:
        # a refusal names the vLLM rule the adapter breaks and the fix, in the log
        "python -m workflow_scripts.export.vllm_adapter "
        "--adapter-dir results/adapters/{wildcards.experiment} --name {wildcards.experiment} "
        "--base {params.base:q} --out-dir results/exports/{wildcards.experiment}/vllm > {log:q} 2>&1"
