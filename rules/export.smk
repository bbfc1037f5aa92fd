# Exports for deployment (`export:` in the config, docs/export.md): a merged model directory,
# GGUF files for llama.cpp and Ollama, and the vLLM serve line of an adapter vLLM can load.
from workflow_scripts.export.plan import (check_job, export_refusals, export_targets, gguf_files,
                                          merged_job, modelfile_gguf, table_inputs, tools_root,
                                          vllm_base)

EXPORTS = CFG["export"]
_refused = export_refusals(EXPORTS, EXPERIMENTS, CONFIG_SOURCE)
if _refused:  # before anything trains, naming the key, the rule and the fix
    print("\n".join(_refused), file=sys.stderr)
    sys.exit(1)
EXPORT_CODE = ("training/merge_adapter", "models/loading", "models/chat_templates",
               "evaluation/generation")
EXPORT_TARGETS = export_targets(EXPORTS)
# llama.cpp's converters and llama-cpp-python (scripts/setup_export.sh; docs/export.md)
EXPORT_TOOLS = tools_root(WORKFLOW_DIR if WORKFLOW_ON_DISK else ".")


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
        "results/exports/{experiment}/vllm/vllm_check.json",
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


rule export_gguf:
    input:
        merged="results/exports/{experiment}/merged",
        code=code("export/gguf_convert", "export/vllm_adapter"),
    output:
        "results/exports/{experiment}/gguf/{experiment}-{gguf_type}.gguf",
    wildcard_constraints:
        gguf_type="f16|bf16|q8_0",
    params:
        tools=f"{EXPORT_TOOLS}/llama.cpp",
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_gguf/{experiment}-{gguf_type}.log",
    benchmark:
        "results/benchmarks/export_gguf/{experiment}-{gguf_type}.tsv"
    shell:
        "python -m workflow_scripts.export.gguf_convert model --tools {params.tools:q} "
        "--model-dir {input.merged:q} --outtype {wildcards.gguf_type} --outfile {output:q} "
        "> {log:q} 2>&1"


rule export_base_gguf:
    input:
        model=get_model_dir,
        code=code("export/gguf_convert", "export/vllm_adapter"),
    output:
        "results/exports/base/{model}/{model}-f16.gguf",
    params:
        tools=f"{EXPORT_TOOLS}/llama.cpp",
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_base_gguf/{model}.log",
    benchmark:
        "results/benchmarks/export_base_gguf/{model}.tsv"
    shell:
        "python -m workflow_scripts.export.gguf_convert model --tools {params.tools:q} "
        "--model-dir {input.model:q} --outtype f16 --outfile {output:q} > {log:q} 2>&1"


rule export_lora_gguf:
    input:
        model=get_experiment_model_dir,
        adapter="results/adapters/{experiment}/adapter_model.safetensors",
        code=code("export/gguf_convert", "export/vllm_adapter"),
    output:
        "results/exports/{experiment}/gguf/{experiment}-lora-f16.gguf",
    params:
        tools=f"{EXPORT_TOOLS}/llama.cpp",
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_lora_gguf/{experiment}.log",
    benchmark:
        "results/benchmarks/export_lora_gguf/{experiment}.tsv"
    shell:
        "python -m workflow_scripts.export.gguf_convert lora --tools {params.tools:q} "
        "--model-dir {input.model:q} --adapter-dir results/adapters/{wildcards.experiment} "
        "--outfile {output:q} > {log:q} 2>&1"


rule export_modelfile:
    input:
        merged="results/exports/{experiment}/merged",
        gguf=lambda w: modelfile_gguf(w.experiment, EXPORTS[w.experiment]),
        code=code("export/modelfile"),
    output:
        "results/exports/{experiment}/gguf/Modelfile",
    params:
        evaluation=lambda w: canonical_json(EXPERIMENTS[w.experiment]["evaluation"]),
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_modelfile/{experiment}.log",
    shell:
        "python -m workflow_scripts.export.modelfile --merged-dir {input.merged:q} "
        "--gguf {input.gguf:q} --evaluation {params.evaluation:q} --out {output:q} > {log:q} 2>&1"


rule export_check:
    input:
        unpack(lambda w: gguf_files(w.experiment, w.target,
                                    EXPERIMENTS[w.experiment]["base_model"])),
        merged="results/exports/{experiment}/merged",
        test=lambda w: f"{experiment_data_dir(w)}/test.jsonl",
        code=code("export/check_gguf", "evaluation/evaluate", "evaluation/generation",
                  "evaluation/tool_eval", "training/chat_tokenize", "training/token_loss",
                  "models/loading"),
    output:
        "results/exports/{experiment}/checks/{target}.json",
    wildcard_constraints:
        target="f16|bf16|q8_0|lora",
    params:
        cfg=lambda w: check_job(EXPERIMENTS[w.experiment], EXPORTS[w.experiment], w.target),
        lora=lambda w, input: f"--lora {input.lora}" if "lora" in input.keys() else "",
        site=f"{EXPORT_TOOLS}/site",
    threads: lambda w: stage_resources(EXPERIMENTS[w.experiment], "evaluate")["threads"]
    resources:
        mem_mb=8000,
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_check/{experiment}-{target}.log",
    benchmark:
        "results/benchmarks/export_check/{experiment}-{target}.tsv"
    shell:
        # llama-cpp-python from its own folder (scripts/setup_export.sh --build)
        "PYTHONPATH={params.site:q}${{PYTHONPATH:+:$PYTHONPATH}} "
        "python -m workflow_scripts.export.check_gguf --merged-dir {input.merged:q} "
        "--gguf {input.gguf:q} {params.lora} --test-file {input.test:q} --config {params.cfg:q} "
        "--threads {threads} --out {output:q} > {log:q} 2>&1"


rule export_table:
    input:
        checks=table_inputs(EXPORTS),
        code=code("export/exports_table"),
    output:
        "results/metrics/exports.tsv",
    localrule: True
    conda:
        "../envs/workflow.yaml"
    log:
        "logs/export_table.log",
    shell:
        "python -m workflow_scripts.export.exports_table {input.checks:q} --out {output:q} > {log:q} 2>&1"
