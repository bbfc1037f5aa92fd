"""A bad config is refused before any job starts, naming the key and the config file;
and the unit behaviour of workflow_scripts.common.config."""
from __future__ import annotations

import copy
import re
from typing import Callable

import pytest
import yaml

from workflow_runner import REPO, SMOKE_CONFIG, Workflow, make_workflow
from workflow_scripts.common.config import (ConfigError, alternatives_regex, check_paths,
                                            resolve_experiments, validate)
from workflow_scripts.common.io_utils import canonical_json

Edit = Callable[[dict], None]


def smoke_config() -> dict:
    return yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))


def resolved(config: dict) -> dict[str, dict]:
    return resolve_experiments(validate(config))


def set_in(path: str, value) -> Edit:
    """An edit that sets a dotted key path of the smoke config."""
    def edit(config: dict) -> None:
        *parents, leaf = path.split(".")
        target = config
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return edit


SECRET = "s3cr3t-pw"  # a password in a URI: refused, and never repeated in any message
BAD_CONFIGS: dict[str, tuple[Edit, list[str]]] = {
    "unknown top-level key": (set_in("epochs", 3), ["unknown key epochs"]),
    "unknown lora key": (set_in("experiments.lccc-qlora.lora.rr", 8),
                         ["unknown key experiments.lccc-qlora.lora.rr"]),
    "learning rate of wrong type": (set_in("defaults.training.learning_rate", "fast"),
                                    ["defaults.training.learning_rate", "not of type"]),
    "unknown dataset": (set_in("experiments.lccc-qlora.dataset", "nope"),
                        ["experiments.lccc-qlora.dataset", "unknown dataset 'nope'"]),
    "unknown base model": (set_in("experiments.lccc-qlora.base_model", "nope"),
                           ["experiments.lccc-qlora.base_model", "unknown base_model 'nope'"]),
    "sweep from no experiment": (set_in("sweeps.rank.from", "ghost"),
                                 ["sweeps.rank.from", "'ghost'"]),
    "hub model without revision": (set_in("base_models.qwen", {"source": "hub", "id": "Q/Q"}),
                                   ["base_models.qwen", "'revision' is a required property"]),
    "experiment name with a space": (
        set_in("experiments.my run", {"base_model": "tiny", "dataset": "lccc"}),
        ["experiments: name 'my run' is not allowed", "letters, digits"]),
    "dataset name with a semicolon": (
        set_in("datasets.x;rm -rf ~", {"format": "alpaca", "files": ["a.json"]}),
        ["datasets: name 'x;rm -rf ~' is not allowed"]),
    "base model name with a slash": (
        lambda c: c["base_models"].update({"../up": {"source": "path", "path": "/m"}}),
        ["base_models: name '../up' is not allowed"]),
    "sweep value that makes an unsafe name": (
        lambda c: c["sweeps"]["rank"]["grid"].update({"lora.target_modules": [["q_proj"]]}),
        ["sweeps.rank: the grid point", "is not allowed"]),
    "hub model on a moving branch": (
        set_in("base_models.qwen", {"source": "hub", "id": "Qwen/Qwen2-0.5B", "revision": "main"}),
        ["base_models.qwen.revision: 'main' is not a full 40-character commit hash",
         "allow_moving_revision"]),
    "sweep with neither grid nor points": (
        lambda c: c["sweeps"]["rank"].pop("grid"), ["sweeps.rank: give exactly one of grid or points"]),
    "sweep with both grid and points": (
        lambda c: c["sweeps"]["rank"].update(points=[{"lora.r": 8}]),
        ["sweeps.rank: give exactly one of grid or points"]),
    "duplicate sweep experiment": (set_in("experiments.rank-r2", {"base_model": "tiny"}),
                                   ["sweeps.rank", "'rank-r2' is already taken"]),
    "tracking URI with a password": (
        set_in("tracking", {"mlflow": {"tracking_uri": f"http://alice:{SECRET}@mlflow.example:5000"}}),
        ["tracking.mlflow.tracking_uri: the URI holds a user name or password",
         "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]),
    "tracking URI with a password and an unknown scheme": (
        set_in("tracking", {"mlflow": {"tracking_uri": f"ftp://alice:{SECRET}@files.example"}}),
        ["tracking.mlflow.tracking_uri: the URI holds", "'ftp://***@files.example' does not match"]),
    "judge URL with a password": (
        set_in("judge", {"base_url": f"http://bob:{SECRET}@judge.example/v1", "model": "m",
                         "api_key_env": "JUDGE_KEY"}),
        ["judge.base_url: the URI holds a user name or password", "judge.api_key_env"]),
}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Workflow:
    return make_workflow(tmp_path_factory.mktemp("config_validation"))


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_is_refused_before_any_job(workflow, case):
    edit, expected = BAD_CONFIGS[case]
    config = smoke_config()
    edit(config)
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    proc = workflow.run("-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"invalid config in {workflow.config}" in output, output[-2000:]
    for text in expected:
        assert text in output, output[-2000:]
    assert SECRET not in output
    assert not (workflow.workdir / "results").exists()


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_raises_config_error(case):
    """The same refusals without Snakemake, naming the given source."""
    edit, expected = BAD_CONFIGS[case]
    config = smoke_config()
    edit(config)
    with pytest.raises(ConfigError) as err:
        resolve_experiments(validate(config, "my.yaml"), "my.yaml")
    assert str(err.value).startswith("invalid config in my.yaml")
    assert all(text in str(err.value) for text in expected)
    assert SECRET not in str(err.value)


def test_a_user_name_alone_is_refused_only_where_credentials_have_a_home():
    config = smoke_config()
    config["tracking"] = {"mlflow": {"tracking_uri": "https://alice@mlflow.example"}}
    with pytest.raises(ConfigError, match="tracking.mlflow.tracking_uri: the URI holds"):
        validate(config)
    config["tracking"] = {"mlflow": {"tracking_uri": "postgresql://db.example/mlflow"}}
    config["report"] = {"title": "see git://git@example.org/notes"}  # not a credential
    assert validate(config)["tracking"]["mlflow"]["tracking_uri"] == "postgresql://db.example/mlflow"


def test_hub_model_may_accept_a_moving_branch_explicitly():
    config = smoke_config()
    config["base_models"]["qwen"] = {"source": "hub", "id": "Qwen/Qwen2-0.5B", "revision": "main",
                                     "allow_moving_revision": True}
    config["base_models"]["pinned"] = {"source": "hub", "id": "Qwen/Qwen2-0.5B",
                                       "revision": "0" * 40}
    assert set(validate(config)["base_models"]) >= {"qwen", "pinned"}


def test_every_base_model_source_validates():
    config = smoke_config()
    config["base_models"] = {
        "local": {"source": "path", "path": "/models/Qwen2-0.5B"},
        "hub": {"source": "hub", "id": "Qwen/Qwen2-0.5B", "revision": "a" * 40},
        "tiny": config["base_models"]["tiny"],
    }
    cfg = validate(config)
    assert cfg["base_models"]["local"] == {"source": "path", "path": "/models/Qwen2-0.5B",
                                           "trust_remote_code": False}


def test_split_has_its_own_seed():
    config = smoke_config()
    cfg = validate(config)
    assert cfg["split"]["seed"] == 42 and cfg["seed"] == 7
    config["seed"] = 8
    assert validate(config)["split"] == cfg["split"]


def test_defaults_are_filled():
    config = smoke_config()
    del config["defaults"]["lora"]["alpha"]
    cfg = validate(config)
    assert cfg["cleaning"]["dedupe"] is True and cfg["report"]["title"]
    assert cfg["merge"] == ["lccc-qlora"] and "evaluation" in cfg["defaults"]
    exp = resolved(config)["lccc-qlora"]
    assert exp["lora"] == {"r": 4, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear",
                           "rslora": False, "trainable_tokens": []}
    assert exp["training"]["scheduler"] == "cosine" and exp["resources"] == {"threads": 1}


def test_experiment_overrides_win_over_defaults():
    config = smoke_config()
    set_in("experiments.lccc-qlora.lora", {"r": 16})(config)
    set_in("experiments.lccc-qlora.training", {"learning_rate": 5e-4})(config)
    exp = resolved(config)["lccc-qlora"]
    assert exp["lora"]["r"] == 16 and exp["lora"]["alpha"] == 8  # alpha from defaults
    assert exp["training"]["learning_rate"] == 5e-4 and exp["training"]["max_steps"] == 4
    assert exp["method"] == "qlora"


def test_sweep_grid_points_are_named_after_their_values():
    config = smoke_config()
    del config["experiments"]["rank-dpo"]  # it continues rank-r2, a point of the replaced sweep
    config["sweeps"] = {
        "rank-study": {"base": {"base_model": "tiny", "dataset": "lccc"},
                       "grid": {"lora.r": [4, 8]}},
        "lr-study": {"base": {"base_model": "tiny", "dataset": "alpaca_zh"},
                     "grid": {"training.learning_rate": [1.0e-4, 2.0e-4], "lora.r": [8, 16]}},
    }
    experiments = resolved(config)
    assert sorted(experiments) == sorted([
        "lccc-qlora", "tools-sharegpt", "tools-openai", "rank-study-r4", "rank-study-r8",
        "lr-study-lr0.0001-r8",
        "lr-study-lr0.0001-r16", "lr-study-lr0.0002-r8", "lr-study-lr0.0002-r16"])
    point = experiments["lr-study-lr0.0002-r16"]
    assert point["training"]["learning_rate"] == 2.0e-4 and point["lora"]["r"] == 16


def test_sweep_points_are_hand_picked_rounds():
    config = smoke_config()
    del config["experiments"]["rank-dpo"]  # it continues rank-r2, a point of the replaced sweep
    config["sweeps"] = {"hp": {"base": {"base_model": "tiny", "dataset": "alpaca_zh"}, "points": [
        {"training.learning_rate": 1.0e-3},
        {"training.learning_rate": 3.0e-3, "training.warmup_ratio": 0.1},
        {"training.batch_size": 2, "training.grad_accum": 2}]}}
    experiments = resolved(config)
    assert sorted(experiments) == ["hp-bs2-ga2", "hp-lr0.001", "hp-lr0.003-wu0.1", "lccc-qlora",
                                   "tools-openai", "tools-sharegpt"]
    third = experiments["hp-bs2-ga2"]["training"]
    assert (third["batch_size"], third["grad_accum"], third["learning_rate"]) == (2, 2, 1.0e-3)
    assert experiments["hp-lr0.003-wu0.1"]["training"]["warmup_ratio"] == 0.1


def test_from_sweep_inherits_the_experiment():
    config = smoke_config()
    del config["experiments"]["rank-dpo"]  # it continues rank-r2, a point of the replaced sweep
    set_in("experiments.lccc-qlora.training", {"learning_rate": 5e-4})(config)
    config["sweeps"] = {"qr": {"from": "lccc-qlora", "grid": {"lora.r": [2, 8]}}}
    experiments = resolved(config)
    for name, r in (("qr-r2", 2), ("qr-r8", 8)):
        exp = experiments[name]
        assert (exp["method"], exp["dataset"], exp["base_model"]) == ("qlora", "lccc", "tiny")
        assert exp["training"]["learning_rate"] == 5e-4 and exp["lora"]["r"] == r
    assert experiments["lccc-qlora"]["lora"]["r"] == 4  # the source experiment is unchanged


def reordered(value):
    """The same mapping with every dict's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    return copy.deepcopy(value)


def test_yaml_key_order_does_not_change_canonical_json():
    config = smoke_config()
    flipped = yaml.safe_load(yaml.safe_dump(reordered(config), sort_keys=False))
    assert list(flipped) != list(config)
    assert canonical_json(resolved(flipped)) == canonical_json(resolved(config))
    assert canonical_json(validate(flipped)) == canonical_json(validate(config))


@pytest.mark.parametrize("names", [["a"], ["a", "ab", "abc", "b"], ["lr0.1", "lr0.2", "x"],
                                   ["rank-r4", "rank-r8", "rank-r16", "lccc-qlora"], []])
def test_alternatives_regex_matches_exactly_the_names(names):
    pattern = re.compile(f"(?:{alternatives_regex(names)})")
    assert all(pattern.fullmatch(n) for n in names)
    others = ["", "lr0x1", "rank-r", "rank-r160", "ab/c", "a.b"]
    assert not any(pattern.fullmatch(n) for n in others if n not in names)


def test_missing_data_files_and_model_dirs_are_named_with_their_keys(tmp_path):
    config = smoke_config()
    config["datasets"]["alpaca_zh"]["files"] = ["data/raw/alpaca_zh_demo.json", "mine.json"]
    config["datasets"]["lccc"]["files"]["valid"] = "gone/valid.json"
    config["base_models"]["local"] = {"source": "path", "path": "models/qwen"}
    (tmp_path / "data/raw").mkdir(parents=True)
    for path in ("alpaca_zh_demo.json", "LCCC-base_train.json", "LCCC-base_test.json"):
        (tmp_path / "data/raw" / path).write_text("[]")
    (tmp_path / "tests").symlink_to(REPO / "tests")
    with pytest.raises(ConfigError) as err:
        check_paths(validate(config), "my.yaml", tmp_path)
    assert str(err.value).splitlines()[1:] == [
        "  datasets.alpaca_zh.files[1]: no such file: mine.json",
        "  datasets.lccc.files.valid: no such file: gone/valid.json",
        "  base_models.local.path: no such directory: models/qwen"]
    (tmp_path / "mine.json").write_text("[]")
    (tmp_path / "gone/valid.json").mkdir(parents=True)
    (tmp_path / "models/qwen").mkdir(parents=True)
    with pytest.raises(ConfigError, match="datasets.lccc.files.valid: is a directory, not a "
                                          "file: gone/valid.json"):
        check_paths(validate(config), "my.yaml", tmp_path)
    (tmp_path / "gone/valid.json").rmdir()
    (tmp_path / "gone/valid.json").write_text("[]")
    check_paths(validate(config), "my.yaml", tmp_path)


def test_missing_paths_fail_the_dry_run_after_a_finished_run(smoke_run, tmp_path):
    """Results exist for every job, yet a config naming a file or a model directory that is
    not there is refused before any job: the key and the path, and no Python traceback."""
    workflow = smoke_run.clone(tmp_path)
    config = yaml.safe_load(workflow.config.read_text(encoding="utf-8"))  # the run's own
    config["base_models"]["local"] = {"source": "path", "path": "results/models/tiny"}
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    workflow.run("-n")  # the model directory is there: accepted
    (workflow.workdir / "results/models/tiny").rename(workflow.workdir / "moved")
    (workflow.workdir / "data/raw/alpaca_zh_demo.json").unlink()
    proc = workflow.run("-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert output.strip().splitlines() == [
        f"invalid config in {workflow.config}:",
        "  datasets.alpaca_zh.files[0]: no such file: data/raw/alpaca_zh_demo.json",
        "  base_models.local.path: no such directory: results/models/tiny"], output
