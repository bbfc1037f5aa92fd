"""Validate the workflow config and expand it into one fully resolved dict per experiment.

Imported while Snakemake builds the DAG, so it must stay light: no torch, no transformers.
"""
from __future__ import annotations

import copy
import functools
import itertools
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from workflow_scripts.common.credentials import credential_problems, redact

# config/schema/config.schema.yaml, through a link that an installed package holds as a copy
SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"

# Short names for sweep keys, used to name the experiments a grid expands to.
SWEEP_ABBREVIATIONS = {
    "lora.r": "r",
    "lora.alpha": "alpha",
    "lora.dropout": "drop",
    "training.learning_rate": "lr",
    "training.epochs": "ep",
    "training.batch_size": "bs",
    "training.grad_accum": "ga",
    "training.warmup_ratio": "wu",
    "preference.loss": "",  # lccc-pref-dpo, lccc-pref-simpo
    "preference.beta": "beta",
    "training.max_length": "len",
    "method": "",
}


# Names become file paths, wildcard values and shell words (see $defs/name in the schema).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit"
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
# Dataset formats of chat records (workflow_scripts/data/formats.py); the others in the
# schema are preference formats.
CHAT_FORMATS = ("alpaca", "sharegpt", "openai", "lccc")


class ConfigError(ValueError):
    """A config that is refused before any job starts; the message names the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The config schema, parsed once per process (a private copy for each caller). The
    workflow passes its own copy's path: a module loaded with github(...) runs this package
    from site-packages, where no schema lies beside it."""
    return copy.deepcopy(_parsed_schema(Path(path)))


@functools.cache
def _parsed_schema(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def alternatives_regex(names: Iterable[str]) -> str:
    """A regex matching exactly these strings, each escaped, with common prefixes factored
    out: a wildcard constraint over hundreds of experiment names then compiles quickly."""
    words = sorted(set(names))
    if not words:
        return "(?!)"  # no names: matches nothing
    groups = itertools.groupby((w for w in words if w), key=lambda w: w[0])
    branches = [re.escape(first) + alternatives_regex(w[1:] for w in group)
                for first, group in groups]
    optional = words[0] == ""
    if not branches or (len(branches) == 1 and not optional):
        return "".join(branches)
    return f"(?:{'|'.join(branches)})" + ("?" if optional else "")


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line that names the offending key, preferring the most specific sub-error."""
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - allowed)
        where = _key_path(error)
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in extra)
        return f"unknown key {keys} (allowed here: {', '.join(sorted(allowed))})"
    if "propertyNames" in error.relative_schema_path:
        return (f"{_key_path(error)}: name {error.instance!r} is not allowed: {NAME_RULE}")
    alternatives = [b.get("required") for b in error.schema.get("oneOf", [])] if error.validator == "oneOf" else []
    if alternatives and all(len(r or ()) == 1 for r in alternatives):
        keys = " or ".join(r[0] for r in alternatives)
        return f"{_key_path(error)}: give exactly one of {keys}"
    if error.validator == "oneOf" and error.context:
        # Explain the branch the user meant: the one whose discriminating `const` matched.
        mismatched = {e.relative_schema_path[0] for e in error.context if e.validator == "const"}
        meant = [e for e in error.context if e.relative_schema_path[0] not in mismatched]
        best = max(meant or error.context, key=lambda e: len(e.absolute_path))
        return _describe(best)
    return f"{_key_path(error)}: {error.message}"


def _with_defaults(validator_class):
    """A validator class that also fills in schema defaults (outside oneOf branches)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate(config: dict, source: str = "config", schema_path: Path = SCHEMA_PATH) -> dict:
    """Return a validated deep copy with defaults filled; raise ConfigError naming the key."""
    schema = load_schema(schema_path)
    raw = copy.deepcopy(config)
    checker = jsonschema.Draft202012Validator(schema)
    errors = sorted(checker.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    # a schema error quotes the value: any credentials in it are hidden
    problems = credential_problems(raw) + [redact(_describe(e)) for e in errors]
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(f"invalid config in {source}:\n  {lines}")
    filled = copy.deepcopy(config)
    # Experiments, sweeps and searches override `defaults`, so only fill the top level and
    # `defaults` (search settings get their defaults in workflow_scripts/search/plan.py).
    overrides = {k: filled.pop(k) for k in ("experiments", "sweeps", "searches") if k in filled}
    _with_defaults(jsonschema.Draft202012Validator)(schema).validate(filled)
    filled.update(overrides)
    filled.setdefault("experiments", {})
    filled.setdefault("sweeps", {})
    filled.setdefault("searches", {})
    _check_references(filled, source)
    return filled


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_experiment_name(sweep: str, point: dict[str, Any]) -> str:
    parts = [sweep]
    for key, value in point.items():
        prefix = SWEEP_ABBREVIATIONS.get(key, key.rsplit(".", 1)[-1])
        parts.append(f"{prefix}{_format_value(value)}")
    return "-".join(parts)


def sweep_points(spec: dict) -> list[dict[str, Any]]:
    """A sweep's points: every combination of a `grid`, or the listed `points`."""
    if "points" in spec:
        return [dict(point) for point in spec["points"]]
    keys = list(spec["grid"])
    return [dict(zip(keys, values)) for values in itertools.product(*(spec["grid"][k] for k in keys))]


def search_trial_names(search: str, spec: dict) -> list[str]:
    """The experiments a search's trials become, in the order they are asked for."""
    return [f"{search}-t{k}" for k in range(spec["trials"])]


def _starting_point(config: dict, section: str, name: str, spec: dict) -> dict:
    """What a sweep's points or a search's trials start from: `from`, then `base`."""
    start = {}
    if "from" in spec:
        if spec["from"] not in config.get("experiments", {}):
            raise ConfigError(f"{section}.{name}.from: no experiment named {spec['from']!r}")
        start = config["experiments"][spec["from"]]
    return deep_merge(start, spec.get("base", {}))


def raw_experiments(config: dict) -> dict[str, dict]:
    """Experiments as written plus every sweep grid point and every search trial (at the
    search's starting point: the settings it searches come from its round files), before
    defaults are applied."""
    experiments = dict(config.get("experiments", {}))
    for search, spec in config.get("searches", {}).items():
        start = _starting_point(config, "searches", search, spec)
        for name in search_trial_names(search, spec):
            if name in experiments:
                raise ConfigError(f"searches.{search}: experiment name {name!r} is already taken")
            experiments[name] = copy.deepcopy(start)
    for sweep, spec in config.get("sweeps", {}).items():
        start = _starting_point(config, "sweeps", sweep, spec)
        for point in sweep_points(spec):
            experiment = copy.deepcopy(start)
            for key, value in point.items():
                _set_dotted(experiment, key, value)
            name = sweep_experiment_name(sweep, point)
            if not NAME_PATTERN.fullmatch(name):
                raise ConfigError(f"sweeps.{sweep}: the grid point {point} gives the experiment "
                                  f"name {name!r}, which is not allowed: {NAME_RULE}")
            if name in experiments:
                raise ConfigError(f"sweeps.{sweep}: experiment name {name!r} is already taken")
            experiments[name] = experiment
    return experiments


def resolve_experiments(config: dict, source: str = "config",
                        schema_path: Path = SCHEMA_PATH) -> dict[str, dict]:
    """Every experiment with defaults applied and validated against the experiment schema."""
    schema = load_schema(schema_path)
    exp_schema = {"$defs": schema["$defs"], **schema["$defs"]["experiment"]}
    filler = _with_defaults(jsonschema.Draft202012Validator)(exp_schema)
    try:
        experiments = raw_experiments(config)
    except ConfigError as err:  # name the config file, as every other refusal does
        raise ConfigError(f"invalid config in {source}: {err}") from None
    resolved = {}
    for name, spec in experiments.items():
        merged = deep_merge(config.get("defaults", {}), spec)
        merged.setdefault("method", "lora")
        for section in ("lora", "training", "evaluation", "resources"):
            merged.setdefault(section, {})
        try:
            filler.validate(merged)
        except jsonschema.ValidationError as err:
            raise ConfigError(f"invalid config in {source}: experiment {name}: {_describe(err)}")
        required = ("dataset",) if "init_from" in merged else ("base_model", "dataset")
        for key in required:
            if key not in merged:
                raise ConfigError(f"invalid config in {source}: experiments.{name}.{key} is missing")
        resolved[name] = merged
    try:
        _inherit_starting_adapters(experiments, resolved)
    except ConfigError as err:
        raise ConfigError(f"invalid config in {source}: {err}") from None
    _check_experiment_references(config, resolved, source)
    return resolved


INHERITED = ("base_model", "method", "lora")  # what a continued adapter keeps from its start


def _inherit_starting_adapters(raw: dict[str, dict], resolved: dict[str, dict]) -> None:
    """A preference experiment with `init_from` continues that SFT experiment's adapter: it
    takes its base model, method and LoRA settings (setting them differently is refused)."""
    for name, exp in resolved.items():
        stage = exp.get("stage", "sft")
        for key in ("init_from", "preference"):
            if key in exp and stage != "preference":
                raise ConfigError(f"experiments.{name}.{key}: only for `stage: preference`")
        if stage != "preference":
            continue
        exp.setdefault("preference", {}).setdefault("loss", "dpo")
        start = exp.get("init_from")
        if start is None:
            continue
        if start not in resolved or resolved[start].get("stage", "sft") != "sft":
            known = sorted(n for n, e in resolved.items() if e.get("stage", "sft") == "sft")
            raise ConfigError(f"experiments.{name}.init_from: {start!r} is not an SFT experiment "
                              f"(known: {', '.join(known) or 'none'})")
        for key in INHERITED:
            if key in raw[name] and raw[name][key] != resolved[start][key]:
                raise ConfigError(f"experiments.{name}.{key}: continues {start}'s adapter, whose "
                                  f"{key} is {resolved[start][key]!r}; leave it out")
            exp[key] = copy.deepcopy(resolved[start][key])


def _check_references(config: dict, source: str) -> None:
    datasets = set(config["datasets"])
    _check_pair_sources(config["datasets"], source)
    for name, model in config["base_models"].items():
        _check_revision(name, model, source)
        for ds in model.get("pretrain", {}).get("datasets", []):
            if ds not in datasets:
                raise ConfigError(
                    f"invalid config in {source}: base_models.{name}.pretrain.datasets: "
                    f"unknown dataset {ds!r} (known: {', '.join(sorted(datasets))})"
                )


def _check_pair_sources(datasets: dict, source: str) -> None:
    """A `format: pairs_from` dataset names a chat dataset (its answers make the pairs)."""
    for name, spec in datasets.items():
        if spec["format"] != "pairs_from":
            continue
        origin = datasets.get(spec["source"])
        if origin is None or origin["format"] not in CHAT_FORMATS:
            what = "unknown dataset" if origin is None else f"{origin['format']} dataset"
            chat = sorted(n for n, s in datasets.items() if s["format"] in CHAT_FORMATS)
            raise ConfigError(
                f"invalid config in {source}: datasets.{name}.source: {what} "
                f"{spec['source']!r}; pairs are built from a chat dataset "
                f"({', '.join(chat) or 'none configured'})")


def _check_revision(name: str, model: dict, source: str) -> None:
    """A hub model is pinned to a commit unless its entry accepts a moving branch or tag."""
    if model["source"] != "hub" or model.get("allow_moving_revision", False):
        return
    if not COMMIT_HASH.fullmatch(model["revision"]):
        raise ConfigError(
            f"invalid config in {source}: base_models.{name}.revision: {model['revision']!r} is "
            "not a full 40-character commit hash; pin one (the files of a branch or tag can "
            "change between runs) or set allow_moving_revision: true"
        )


def _check_experiment_references(config: dict, experiments: dict, source: str) -> None:
    for name, exp in experiments.items():
        for key, known in (("base_model", config["base_models"]), ("dataset", config["datasets"])):
            if exp[key] not in known:
                raise ConfigError(
                    f"invalid config in {source}: experiments.{name}.{key}: unknown {key} "
                    f"{exp[key]!r} (known: {', '.join(sorted(known))})"
                )
    for name in config.get("merge", []):
        if name not in experiments:
            raise ConfigError(f"invalid config in {source}: merge: unknown experiment {name!r}")
    for name in config.get("export", {}):
        if name not in experiments:
            raise ConfigError(f"invalid config in {source}: export.{name}: unknown experiment "
                              f"{name!r} (experiments and sweep points can be exported)")
    _check_benchmarks(config, experiments, source)
    _check_answering_models(config, experiments, source)


def _check_answering_models(config: dict, experiments: dict, source: str) -> None:
    """`rejected: model_answer` names the SFT experiment whose answers are rejected."""
    sft = sorted(n for n, e in experiments.items() if e.get("stage", "sft") == "sft")
    for name, spec in config["datasets"].items():
        if spec.get("rejected") != "model_answer":
            if "model" in spec:
                raise ConfigError(f"invalid config in {source}: datasets.{name}.model: only "
                                  "with rejected: model_answer")
            continue
        if spec.get("model") not in sft:
            raise ConfigError(f"invalid config in {source}: datasets.{name}.model: "
                              f"{spec.get('model')!r} is not an SFT experiment (rejected: "
                              f"model_answer takes its answers; known: {', '.join(sft) or 'none'})")


def _check_benchmarks(config: dict, experiments: dict, source: str) -> None:
    """Benchmarks an evaluation names exist, and a local exam asked for shots has a dev split."""
    known = config.get("benchmarks", {})
    for name, exp in experiments.items():
        for bench in exp.get("evaluation", {}).get("benchmarks", []):
            if bench not in known:
                raise ConfigError(
                    f"invalid config in {source}: experiments.{name}.evaluation.benchmarks: "
                    f"unknown benchmark {bench!r} (known: {', '.join(sorted(known)) or 'none'})")
    for bench, spec in known.items():
        has_dev = isinstance(spec.get("files"), dict) and "dev" in spec["files"]
        if "format" in spec and spec.get("shots", 0) and not has_dev:
            raise ConfigError(
                f"invalid config in {source}: benchmarks.{bench}.shots: {spec['shots']} shots "
                "need a dev split to take them from (files: {test: ..., dev: ...})")


def dataset_file_keys(name: str, files: list | dict) -> list[tuple[str, str]]:
    """(config key, path) of every raw file of dataset `name`, e.g.
    ("datasets.lccc.files.train", "data/raw/LCCC-base_train.json")."""
    key = f"datasets.{name}.files"
    if isinstance(files, list):
        return [(f"{key}[{i}]", path) for i, path in enumerate(files)]
    out = []
    for split, paths in files.items():
        if isinstance(paths, str):
            out.append((f"{key}.{split}", paths))
        else:
            out += [(f"{key}.{split}[{i}]", path) for i, path in enumerate(paths)]
    return out


def check_paths(config: dict, source: str = "config", root: Path | None = None) -> None:
    """Refuse a validated config whose data files or `source: path` model directories are
    not there, naming each key and path; relative paths are read from `root` (default: the
    working directory, where Snakemake runs the jobs)."""
    root = Path.cwd() if root is None else Path(root)
    missing = []
    for name, spec in config["datasets"].items():
        for key, path in dataset_file_keys(name, spec.get("files", [])):  # pairs_from: none
            if not (root / path).is_file():
                state = "is a directory, not a file" if (root / path).is_dir() else "no such file"
                missing.append(f"{key}: {state}: {path}")
    for name, model in config["base_models"].items():
        if model["source"] == "path" and not (root / model["path"]).is_dir():
            state = "not a directory" if (root / model["path"]).exists() else "no such directory"
            missing.append(f"base_models.{name}.path: {state}: {model['path']}")
    if missing:
        where = "" if root == Path.cwd() else f" (relative paths are read from {root})"
        raise ConfigError(f"invalid config in {source}{where}:\n  " + "\n  ".join(missing))
