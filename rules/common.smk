import importlib.util
import os
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.sourcecache import LocalSourceFile

# This workflow's own files (the package, the config schema, the report templates) are found
# from this file, never from workflow.basedir: loaded as a module from a user's project
# (README, "Use it from your own project"), that is the user's Snakefile's directory. A local
# module, a git submodule and this repository have them on disk; a module loaded with
# github(...) has none, and runs the package installed in the environment at its tag.
_RULES_DIR = workflow.current_basedir
WORKFLOW_ON_DISK = isinstance(_RULES_DIR, LocalSourceFile)
_prefix = ""
if WORKFLOW_ON_DISK:
    # The DAG is built, and every job runs, with the package next to the Snakefile:
    # PYTHONPATH points jobs at it, so any environment that holds the dependencies runs
    # them (this venv, a conda or container environment, a cluster's modules) without
    # installing the package.
    WORKFLOW_DIR = os.path.dirname(_RULES_DIR.get_path_or_uri(secret_free=False))
    sys.path.insert(0, WORKFLOW_DIR)
    _prefix = f"export PYTHONPATH={shlex.quote(WORKFLOW_DIR)}${{PYTHONPATH:+:$PYTHONPATH}}; "
else:
    _source = _RULES_DIR.get_basedir()  # the repository at the module's tag
    _repo = (f"file://{_source.repo_path}" if hasattr(_source, "repo_path")
             else f"https://{_source.host}/{_source.repo}")
    _INSTALL = (f"install it at the module's version where Snakemake and the jobs run:\n"
                f"    pip install 'git+{_repo}@{_source.ref}'\n"
                "(README, \"Use it from your own project\").")
    if importlib.util.find_spec("workflow_scripts") is None:
        print(f"This workflow was loaded as a module from {_source} (no code on disk), and "
              f"its Python package workflow_scripts is not installed here: {_INSTALL}",
              file=sys.stderr)
        sys.exit(1)
# Jobs use the `python` of the interpreter running Snakemake, unless they run in conda
# environments.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    _prefix += f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(_prefix.replace("{", "{{").replace("}", "}}"))  # Snakemake formats the prefix

from workflow_scripts.common.config import (ConfigError, alternatives_regex, check_paths,
                                            resolve_experiments, validate)
from workflow_scripts.common.io_utils import canonical_json, evaluation_key
from workflow_scripts.data.preference_formats import is_preference_format
from workflow_scripts.evaluation.general_spec import (exam_files, general_inputs, general_job,
                                                      local_benchmarks)
from workflow_scripts.launch.gpu_slots import stage_resources
from workflow_scripts.search.plan import TrialExperiments, plan_searches, trial_params
from workflow_scripts.training.preference_plan import PreferencePlan
from workflow_scripts.models.loading import resolve_model_dir

if not WORKFLOW_ON_DISK:
    from workflow_scripts.common.run_info import installed_vcs_info

    _installed = installed_vcs_info()
    if _installed and _source.ref not in (_installed.get("requested_revision"),
                                          _installed.get("commit_id")):
        print(f"Warning: the installed workflow_scripts is from "
              f"{_installed.get('requested_revision') or _installed.get('commit_id')}, this "
              f"module from {_source.ref}; unless they are the same version, {_INSTALL}",
              file=sys.stderr)


CONFIG_SOURCE = ", ".join(map(str, workflow.configfiles)) or "the config"
SCHEMA = workflow.source_path("../config/schema/config.schema.yaml")
try:
    CFG = validate(config, CONFIG_SOURCE, SCHEMA)
    EXPERIMENTS = resolve_experiments(CFG, CONFIG_SOURCE, SCHEMA)
    SEARCHES = plan_searches(CFG, EXPERIMENTS, CONFIG_SOURCE)
    EXPERIMENTS = TrialExperiments(EXPERIMENTS, SEARCHES)  # trials' settings: search.smk
    PREFERENCE = PreferencePlan(EXPERIMENTS, CFG, CONFIG_SOURCE)  # preference.smk's jobs
    check_paths(CFG, CONFIG_SOURCE)  # missing data or model paths, even after a finished run
except ConfigError as err:  # the message names the key: no Python traceback around it
    print(err, file=sys.stderr)
    sys.exit(1)
# Relative to the working directory, so that moving repo and results together reruns nothing;
# from a github(...) module, the installed package's files (a new version reruns its rules).
CODE_DIR = (Path(os.path.relpath(WORKFLOW_DIR)) / "workflow_scripts" if WORKFLOW_ON_DISK
            else Path(importlib.util.find_spec("workflow_scripts").origin).parent)


# Exactly the configured names; factored so that hundreds of experiments compile quickly.
wildcard_constraints:
    dataset=alternatives_regex(CFG["datasets"]),
    model=alternatives_regex(CFG["base_models"]),
    experiment=alternatives_regex(EXPERIMENTS),


def code(*modules):
    """The package modules a job runs (Snakemake does not track imports); an installed
    package's modules only where they are plain files."""
    paths = [CODE_DIR / f"{m}.py" for m in ("common/io_utils",) + modules]
    return [str(p) for p in paths if WORKFLOW_ON_DISK or p.is_file()]


def workflow_files(folder, names):
    """Files of one of this workflow's folders (reports/templates, ...): on disk, every file
    in it, relative to the working directory; from a github(...) module, the named ones,
    fetched into Snakemake's source cache."""
    if WORKFLOW_ON_DISK:
        return sorted(Path(os.path.relpath(WORKFLOW_DIR), folder).glob("*"))
    return [workflow.source_path(f"../{folder}/{name}") for name in names]


PREFERENCE_DATASETS = [n for n, s in CFG["datasets"].items() if is_preference_format(s["format"])]


def pairs_from_files(name):
    """The prepared splits a `format: pairs_from` dataset builds its pairs from."""
    source = CFG["datasets"][name]["source"]
    return {split: f"results/data/{source}/{split}.jsonl" for split in ("train", "valid", "test")}


def model_answer_files(name):
    """With `rejected: model_answer`, the SFT experiment's own answers to the source's prompts
    (rules/evaluate.smk, answer_prompts); {} otherwise."""
    spec = CFG["datasets"][name]
    if spec["format"] != "pairs_from" or spec.get("rejected") != "model_answer":
        return {}
    return {split: f"results/answers/{spec['model']}/{spec['source']}/{split}.jsonl"
            for split in ("train", "valid", "test")}


def dataset_files(name):
    """What a dataset's prepare job reads: its raw files, or pairs_from's prepared splits."""
    if CFG["datasets"][name]["format"] == "pairs_from":
        return [*pairs_from_files(name).values(), *model_answer_files(name).values()]
    files = CFG["datasets"][name]["files"]
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return files


def dataset_job(name):
    """The datasets entry a prepare job reads; pairs_from's files are its source's splits."""
    spec = CFG["datasets"][name]
    if spec["format"] == "pairs_from":
        answers = model_answer_files(name)
        return {**spec, "files": pairs_from_files(name)} | ({"answers": answers} if answers else {})
    return spec


def model_spec(name):
    return CFG["base_models"][name]


def model_dir(name):
    """Where a base model's files are: a built or fetched directory, or a local path."""
    return resolve_model_dir(name, model_spec(name))


def get_model_dir(wildcards):
    return model_dir(wildcards.model)


def get_experiment_model_dir(wildcards):
    return model_dir(EXPERIMENTS[wildcards.experiment]["base_model"])


def experiment_data_dir(wildcards):
    return f"results/data/{EXPERIMENTS[wildcards.experiment]['dataset']}"


def is_dialogue(dataset):
    """LCCC, or pairs built from it: dialogue replies, scored with dialogue metrics."""
    spec = CFG["datasets"][dataset]
    return spec["format"] == "lccc" or (
        spec["format"] == "pairs_from" and is_dialogue(spec["source"]))


def training_job(wildcards):
    """What training reads; evaluation settings and cluster resources do not retrain."""
    extra = trial_job_entries(wildcards.experiment)  # a search trial waits for its round
    exp = EXPERIMENTS[wildcards.experiment]
    exp = {k: v for k, v in exp.items() if k not in ("evaluation", "resources")}
    job = {"experiment": exp, "seed": CFG["seed"], "base_model": model_spec(exp["base_model"])}
    return canonical_json(job | extra)


def eval_settings(experiment, quantized):
    """Everything that decides an evaluation's numbers except the adapter itself.

    An adapter and the base it is compared with are scored with exactly these settings:
    the same test records, truncation, prompts, decoding and quantization."""
    exp = EXPERIMENTS[experiment]
    settings = {
        # benchmarks are scored under "general" below; generation does not depend on them
        "evaluation": {k: v for k, v in exp["evaluation"].items() if k != "benchmarks"},
        "quantization": "4bit" if quantized else None,
        "seed": CFG["seed"],
        "base_model": model_spec(exp["base_model"]),
        "dialogue": is_dialogue(exp["dataset"]),
    }
    general = general_job(CFG, exp)  # general text and benchmarks (evaluation/general_spec.py)
    return settings | ({"general": general} if general else {})


def base_evaluations():
    """(model, dataset, settings key) -> settings for every base-model evaluation needed:
    one per distinct setting an experiment is scored with, and for QLoRA also the
    unquantized base under the same settings (the cost of quantization)."""
    evals = {}
    for name, exp in EXPERIMENTS.items():
        for quantized in {exp["method"] == "qlora", False}:
            settings = eval_settings(name, quantized)
            evals[(exp["base_model"], exp["dataset"], evaluation_key(settings))] = settings
    return evals


BASE_EVALS = base_evaluations()


def base_eval_dir(experiment, quantized=None):
    """The base-model evaluation an experiment is compared with."""
    exp = EXPERIMENTS[experiment]
    if quantized is None:
        quantized = exp["method"] == "qlora"
    key = evaluation_key(eval_settings(experiment, quantized))
    return f"results/eval/base/{exp['base_model']}/{exp['dataset']}/{key}"


def experiments_with_base_evals():
    """Every experiment with the base evaluation it is compared with (for collect_metrics)."""
    out = {}
    for name, exp in EXPERIMENTS.items():
        out[name] = {**exp, "base_eval": base_eval_dir(name)}
        if exp["method"] == "qlora":
            out[name]["base_eval_unquantized"] = base_eval_dir(name, quantized=False)
    return out


def adapter_eval_job(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    return canonical_json(eval_settings(wildcards.experiment, exp["method"] == "qlora"))


def base_eval_job(wildcards):
    return canonical_json(BASE_EVALS[(wildcards.model, wildcards.dataset, wildcards.key)])


def experiment_resource(key, default):
    return lambda wildcards: EXPERIMENTS[wildcards.experiment]["resources"].get(key, default)


def machine_gpus(wildcards):
    """The GPUs this machine has, from the profile's `resources: gpu` (0 when unset)."""
    return workflow.global_resources.get("gpu").value or 0


def scratch_model_gpus(model):
    """Pretraining takes one GPU when any experiment on the model trains on one, else none
    (then it sees no GPU, instead of landing on GPU 0 beside the jobs that hold it)."""
    return max((min(1, stage_resources(e, "train")["gpu"]) for e in EXPERIMENTS.values()
                if e["base_model"] == model), default=0)


def base_eval_resource(key, default):
    """A base evaluation asks for the most that any experiment on its model and data asks
    for its own evaluation."""

    def get(wildcards):
        values = [stage_resources(e, "evaluate")[key] for e in EXPERIMENTS.values()
                  if (e["base_model"], e["dataset"]) == (wildcards.model, wildcards.dataset)]
        return max((v for v in values if v is not None), default=default)

    return get


def tracking_job(wildcards):
    """What a run holds and where it goes: the experiment's resolved settings (its params,
    hashed into the run key), the tracking settings and the base model's directory."""
    name = wildcards.experiment
    exp = {k: v for k, v in EXPERIMENTS[name].items() if k != "resources"}
    settings = {**exp, "seed": CFG["seed"], "model": model_spec(exp["base_model"]),
                "data": CFG["datasets"][exp["dataset"]], "cleaning": CFG["cleaning"],
                "split": CFG["split"]}
    return canonical_json({
        "experiment": name,
        "settings": settings,
        "tracking": CFG["tracking"],
        "log_adapter": CFG["tracking"]["log_adapter"],
        "model_dir": model_dir(exp["base_model"]),
        # the rule's name as Snakemake knows it: lora_zh_track_experiment in a module
        "snakemake_job": f"{rules.track_experiment.rule.name}[experiment={name}]",
    })


# Search trials (rules/search.smk): what waits for a trial's round file.
def trial_round(name):
    """A search trial's round file, made before any job that reads the trial's settings
    (asking for it before its round is asked puts the round in the DAG); [] for other
    experiments."""
    plan = EXPERIMENTS.plan_of(name)
    if plan is None:
        return []
    round_ = plan.round_of(name)
    return checkpoints.search_ask.get(search=plan.name, key=plan.key, round=round_).output[0]


def trial_round_file(wildcards):
    return trial_round(wildcards.experiment)


def trial_job_entries(name):
    """What a trial's training job adds to an experiment's: the round's stop rules."""
    plan = EXPERIMENTS.plan_of(name)
    if plan is None:
        return {}
    trial_round(name)  # wait for the round
    return {"stop": trial_params(plan, name)["stop"]}


def all_round_files(wildcards=None):
    """Every round file of every search (their trials' settings go into the tables)."""
    return [trial_round(plan.round_trials(r)[0])
            for plan in SEARCHES.values() for r in range(plan.rounds)]


def told_inputs(wildcards):
    plan = SEARCHES[wildcards.search]
    trials = plan.round_trials(int(wildcards.round))
    files = {"round": plan.round_file(int(wildcards.round)),
             "train": [f"results/adapters/{t}/train_metrics.json" for t in trials],
             "log": [f"results/adapters/{t}/trainer_log.jsonl" for t in trials]}
    if plan.spec["objective"]["metric"] != "eval_loss":  # a test-set metric
        files["eval"] = [f"results/eval/{t}/metrics.json" for t in trials]
    return files

def search_snapshot():
    """What the report and the studio read about each search (results/metrics/config.json)."""
    return {name: {"key": plan.key, "trials": plan.trials, "directory": plan.directory,
                   "rounds": plan.rounds, "space": plan.spec["space"],
                   "objective": plan.spec["objective"], "pruner": plan.spec["pruner"]["name"]}
            for name, plan in SEARCHES.items()}


def when_rounds_asked(value):
    """`value`, for a params function that reads trials' settings: until every round is
    asked, Snakemake holds the job (the rounds are among its inputs)."""
    all_round_files()
    return value


# Preference tuning (rules/preference.smk): what a preference job reads.
def reference_adapter(wildcards):
    """The SFT adapter a reference job scores, or none (the base)."""
    adapter = PREFERENCE.reference_job(wildcards.dataset, wildcards.key)["adapter"]
    return [f"results/adapters/{adapter}/adapter_model.safetensors"] if adapter else []


def preference_inputs(wildcards):
    """A preference training's tokenized pairs, reference scores (losses that read them) and
    starting adapter (`init_from`)."""
    name = wildcards.experiment
    files = {"tokenized": f"{PREFERENCE.token_dir(name)}/manifest.json"}
    if PREFERENCE.reference_dir(name):
        files["reference"] = f"{PREFERENCE.reference_dir(name)}/manifest.json"
    if PREFERENCE.start_dir(name):
        files["start"] = f"{PREFERENCE.start_dir(name)}/adapter_model.safetensors"
    return files


def preference_args(wildcards, input):
    args = f"--tokenized-dir {shlex.quote(os.path.dirname(input.tokenized))}"
    if "reference" in input.keys():
        args += f" --reference-dir {shlex.quote(os.path.dirname(input.reference))}"
    if "start" in input.keys():
        args += f" --init-adapter {shlex.quote(os.path.dirname(input.start))}"
    return args
