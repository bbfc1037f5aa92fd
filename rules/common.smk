import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the logic package, also without `pip install -e .`

from workflow_scripts.experiment_config import resolve_experiments, validate
from workflow_scripts.io_utils import canonical_json


CONFIG_SOURCE = ", ".join(map(str, workflow.configfiles)) or "the config"
CFG = validate(config, CONFIG_SOURCE)
EXPERIMENTS = resolve_experiments(CFG, CONFIG_SOURCE)
PYTHON = sys.executable
CODE_DIR = Path(workflow.basedir) / "workflow_scripts"


wildcard_constraints:
    dataset="|".join(CFG["datasets"]),
    model="|".join(CFG["base_models"]),
    experiment="|".join(EXPERIMENTS) or "__none__",


def code(*modules):
    """The package modules a rule runs: Snakemake does not track imports by itself."""
    return [str(CODE_DIR / f"{m}.py") for m in ("io_utils",) + modules]


def dataset_files(name):
    files = CFG["datasets"][name]["files"]
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return files


def model_spec(name):
    return CFG["base_models"][name]


def model_dir(name):
    """Where a base model's files are: a built or fetched directory, or a local path."""
    spec = model_spec(name)
    return spec["path"] if spec["source"] == "path" else f"results/models/{name}"


def get_model_dir(wildcards):
    return model_dir(wildcards.model)


def get_experiment_model_dir(wildcards):
    return model_dir(EXPERIMENTS[wildcards.experiment]["base_model"])


def experiment_data_dir(wildcards):
    return f"results/data/{EXPERIMENTS[wildcards.experiment]['dataset']}"


def base_eval_pairs():
    """(base model, dataset) pairs that some experiment fine-tunes, each evaluated once."""
    return sorted({(e["base_model"], e["dataset"]) for e in EXPERIMENTS.values()})


def is_dialogue(dataset):
    return CFG["datasets"][dataset]["format"] == "lccc"


def training_job(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    job = {"experiment": exp, "seed": CFG["seed"], "base_model": model_spec(exp["base_model"])}
    return canonical_json(job)


def eval_job(experiment, model, dataset):
    """Evaluation settings; the base model is evaluated with the defaults of its dataset."""
    exp = EXPERIMENTS[experiment] if experiment else CFG["defaults"]
    return canonical_json({
        "evaluation": exp["evaluation"],
        "max_length": exp["training"]["max_length"],
        "method": exp.get("method", "lora") if experiment else "base",
        "seed": CFG["seed"],
        "base_model": model_spec(model),
        "dialogue": is_dialogue(dataset),
    })


def experiment_resource(key, default):
    return lambda wildcards: EXPERIMENTS[wildcards.experiment]["resources"].get(key, default)
