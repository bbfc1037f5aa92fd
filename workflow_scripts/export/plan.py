"""What the export rules ask for, computed while Snakemake builds the DAG (no torch here):
each configured export's target files and each job's canonical config slice."""
from __future__ import annotations

from workflow_scripts.common.io_utils import canonical_json


def export_dir(experiment: str) -> str:
    return f"results/exports/{experiment}"


def export_targets(exports: dict) -> list[str]:
    """The files every configured export ends in (rule all)."""
    ends = {"merged": ["merged"], "vllm": ["vllm/serve.sh"]}
    return [f"{export_dir(name)}/{end}" for name, spec in exports.items()
            for target in spec["targets"] for end in ends.get(target, [])]


def merged_job(experiment: dict, base_model: dict, export: dict) -> str:
    """A merged export's settings: the base, the decoding settings and the shard size (a
    training or evaluation setting that does not change these reruns nothing here)."""
    return canonical_json({"base_model": base_model, "evaluation": experiment["evaluation"],
                           "max_shard_size": export["max_shard_size"]})


def vllm_base(base_model: dict, model_dir: str) -> str:
    """The base vLLM loads: a hub model by its id, any other by its directory."""
    return base_model["id"] if base_model["source"] == "hub" else model_dir
