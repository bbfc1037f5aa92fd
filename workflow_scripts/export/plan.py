"""What the export rules ask for, computed while Snakemake builds the DAG (no torch here):
each configured export's target files and each job's canonical config slice."""
from __future__ import annotations

import os

from workflow_scripts.common.io_utils import canonical_json

EXPORTS_TABLE = "results/metrics/exports.tsv"


def export_dir(experiment: str) -> str:
    return f"results/exports/{experiment}"


def tools_root(workflow_dir: str) -> str:
    """Where scripts/setup_export.sh put llama.cpp's converters and llama-cpp-python."""
    return os.environ.get("LORA_ZH_EXPORT_TOOLS") or os.path.join(workflow_dir, ".venv", "export")


def gguf_targets(spec: dict) -> list[str]:
    """The checked GGUF exports of one experiment: its types, and `lora` (base + LoRA GGUF)."""
    if "gguf" not in spec["targets"]:
        return []
    return [*spec["gguf_types"], *(["lora"] if spec["lora_gguf"] else [])]


def modelfile_gguf(experiment: str, spec: dict) -> str:
    """The GGUF a Modelfile names: q8_0 where exported (half the size of f16)."""
    kind = "q8_0" if "q8_0" in spec["gguf_types"] else spec["gguf_types"][0]
    return f"{export_dir(experiment)}/gguf/{experiment}-{kind}.gguf"


def gguf_files(experiment: str, target: str, model: str) -> dict[str, str]:
    """What a check of `target` loads: the GGUF, and the LoRA GGUF on the base's."""
    if target == "lora":
        return {"gguf": f"results/exports/base/{model}/{model}-f16.gguf",
                "lora": f"{export_dir(experiment)}/gguf/{experiment}-lora-f16.gguf"}
    return {"gguf": f"{export_dir(experiment)}/gguf/{experiment}-{target}.gguf"}


def table_inputs(exports: dict) -> list[str]:
    """What results/metrics/exports.tsv collects: every check and every vLLM export."""
    return [f"{export_dir(name)}/{path}" for name, spec in exports.items()
            for path in [*(f"checks/{t}.json" for t in gguf_targets(spec)),
                         *(["vllm/vllm_check.json"] if "vllm" in spec["targets"] else [])]]


def export_targets(exports: dict) -> list[str]:
    """The files every configured export ends in (rule all)."""
    ends = {"merged": ["merged"], "vllm": ["vllm/serve.sh"], "gguf": ["gguf/Modelfile"]}
    files = [f"{export_dir(name)}/{end}" for name, spec in exports.items()
             for target in spec["targets"] for end in ends[target]]
    return files + ([EXPORTS_TABLE] if exports else [])


def check_job(experiment: dict, export: dict, target: str) -> str:
    return canonical_json({"evaluation": experiment["evaluation"], "check": export["check"],
                           "target": target})


def merged_job(experiment: dict, base_model: dict, export: dict) -> str:
    """A merged export's settings: the base, the decoding settings and the shard size (a
    training or evaluation setting that does not change these reruns nothing here)."""
    return canonical_json({"base_model": base_model, "evaluation": experiment["evaluation"],
                           "max_shard_size": export["max_shard_size"]})


def vllm_base(base_model: dict, model_dir: str) -> str:
    """The base vLLM loads: a hub model by its id, any other by its directory."""
    return base_model["id"] if base_model["source"] == "hub" else model_dir


def planned_adapter_config(experiment: dict) -> dict:
    """The adapter_config.json fields an experiment's settings will give its adapter, for the
    checks that can refuse an export before anything trains."""
    lora = experiment.get("lora", {})
    return {"r": lora.get("r", 8), "lora_alpha": lora.get("alpha", 16),
            "use_dora": experiment.get("method") == "dora",
            "use_rslora": lora.get("rslora", False),
            "trainable_token_indices": lora.get("trainable_tokens") or None}


def export_refusals(exports: dict, experiments, source: str) -> list[str]:
    """Exports the experiments' settings already rule out, each naming the key, the rule and
    the fix (the export jobs check the trained adapter itself again)."""
    from workflow_scripts.export.gguf_convert import lora_refusal
    from workflow_scripts.export.vllm_adapter import refusals

    found = []
    for name, spec in exports.items():
        planned = planned_adapter_config(experiments[name])
        if "vllm" in spec["targets"]:
            found += [f"invalid config in {source}: export.{name}.targets: vllm: {r}"
                      for r in refusals(planned, [])]
        why = lora_refusal(planned, []) if "gguf" in spec["targets"] and spec["lora_gguf"] else None
        if why:
            found.append(f"invalid config in {source}: export.{name}.lora_gguf: no LoRA GGUF: "
                         f"{why}, or set lora_gguf: false")
    return found
