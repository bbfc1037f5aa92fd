"""The workflow used as a Snakemake module from a user's own project (README, "Use it from
your own project"): the project directory holds the Snakefile with the `module` statement,
the config, the data and the results; the workflow is a local clone beside it.

* A cut smoke config run that way (every stage's rule and the report, as the prefixed
  `lora_zh_*` rules) ends in the same tables, row for row, as the direct smoke run, except
  for cost fields (times, memory) and Holm's family-wide adjustment, which depends on how
  many comparisons the run makes; a second dry run has nothing to do.
* Loaded from git (`gitfile`, the offline stand-in for `github(..., tag=...)`), there is no
  code on disk: without the package installed Snakemake stops at start-up with the pip
  command to run; with it installed the DAG builds from the installed package's files.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_runner import REPO, Workflow, deps_python, make_workflow
from workflow_scripts.studio.catalog import Catalog
from workflow_scripts.studio.logs import log_listing

MODULE_SNAKEFILE = """\
configfile: "config/config.yaml"


module lora_zh:
    snakefile: {snakefile}
    config: config


use rule * from lora_zh as lora_zh_*
"""
# Cost fields (they differ from run to run); what the cut run measures less of: Holm's
# adjustment over all the run's comparisons, and token lengths, measured only for the
# datasets that some experiment trains on.
COST_COLUMN = re.compile(r"time|_per_s$|memory|elapsed|peak_cuda")
CUT_COLUMN = re.compile(r"^lengths_tokens_")
FAMILY_COLUMNS = ("p_holm", "verdict")
KEPT_EXPERIMENT = "lccc-qlora"


def _cut_config(smoke: Path) -> dict:
    """The smoke config cut to one QLoRA experiment, merged and scored on the exam: every
    stage's rule runs (data, scratch model, tokenize, train, evaluate, base evaluations,
    exam, merge, tables, report) on the same data and base model as the direct run."""
    config = yaml.safe_load(smoke.read_text())
    pretrain = config["base_models"]["tiny"]["pretrain"]["datasets"]
    config["datasets"] = {name: config["datasets"][name] for name in pretrain}
    config["experiments"] = {KEPT_EXPERIMENT: config["experiments"][KEPT_EXPERIMENT]}
    config["sweeps"] = {}
    config["merge"] = [KEPT_EXPERIMENT]
    return config


def _project(tmp_path: Path, snakefile: str, config: dict) -> tuple[Path, Path]:
    """A user's project (the module statement, config/config.yaml and the data the smoke
    config reads) and a copy of the workflow beside it."""
    scratch = make_workflow(tmp_path / "scratch")
    project = scratch.workdir.rename(tmp_path / "project")
    (project / "config.yaml").unlink()
    (project / "config").mkdir()
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (project / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=snakefile))
    return project, scratch.code


def _snakemake(project: Path, *args: str, python: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Snakemake as the user starts it in the project: no -s, no --directory."""
    cmd = [python or deps_python(), "-m", "snakemake", *args]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True,
                          env=Workflow.environment())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in table if COST_COLUMN.search(c) or CUT_COLUMN.search(c)
            or ("p_holm" in table and c in FAMILY_COLUMNS)]
    return table.drop(columns=drop).fillna("")


def _rows(table: pd.DataFrame, columns: list[str]) -> set[tuple]:
    return set(table[columns].itertuples(index=False, name=None))


@pytest.mark.slow
def test_module_project_matches_the_direct_run(smoke_run, tmp_path):
    project, code = _project(tmp_path, '"../lora-zh-workflow/Snakefile"',
                             _cut_config(REPO / "tests" / "configs" / "smoke.yaml"))
    code.rename(tmp_path / "lora-zh-workflow")  # a local clone or a git submodule

    # deps_python has the dependencies but not the package: jobs find it in the module.
    run = _snakemake(project, "--cores", "2")
    ran = set(re.findall(r"\(Rule: (lora_zh_\w+)\)", run.stdout + run.stderr))  # finished
    assert ran >= {f"lora_zh_{r}" for r in (
        "prepare_dataset", "build_base_model", "tokenize_dataset", "train_adapter", "evaluate",
        "evaluate_base", "prepare_benchmark", "merge_adapter", "collect_metrics",
        "render_report")}, ran

    # Results in the project, the same tables as the direct run's, row for row.
    assert (project / "results/report/training_report.html").stat().st_size > 0
    assert (project / f"results/merged/{KEPT_EXPERIMENT}").is_dir()
    direct_dir = smoke_run.workdir / "results" / "metrics"
    tables = sorted(p.name for p in direct_dir.glob("*.tsv"))
    assert tables == sorted(p.name for p in (project / "results/metrics").glob("*.tsv"))
    for name in tables:
        ours = _comparable(pd.read_csv(project / "results/metrics" / name, sep="\t", dtype=str))
        theirs = _comparable(pd.read_csv(direct_dir / name, sep="\t", dtype=str))
        columns = [c for c in ours if c in theirs]
        assert set(ours.columns) - set(columns) <= {c for c in ours if ours[c].isna().all()}, name
        missing = _rows(ours, columns) - _rows(theirs, columns)
        assert not missing, f"{name}: rows of the module run that the direct run lacks: {missing}"
    experiments = pd.read_csv(project / "results/metrics/experiments.tsv", sep="\t")
    assert list(experiments["experiment"]) == [KEPT_EXPERIMENT]
    assert len(pd.read_csv(project / "results/metrics/comparison.tsv", sep="\t")) > 0

    # The studio reads the project's logs where the prefixed rules wrote them.
    paths = Catalog(project / "config" / "config.yaml", project).paths(KEPT_EXPERIMENT)
    assert paths.train_log.is_file() and paths.eval_log.is_file() and paths.progress.is_file()
    assert any(row["name"] == paths.train_log.relative_to(project).as_posix()
               for row in log_listing(project))

    # Nothing left to do, from the project, as the user would check.
    again = _snakemake(project, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


@pytest.fixture
def git_project(tmp_path) -> Path:
    """A project whose module is the workflow committed and tagged in a git repository
    (under wf/: Snakemake 9.27's gitfile mis-joins the include paths of a Snakefile at the
    repository's root)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "remote"
    smoke = yaml.safe_load((REPO / "tests" / "configs" / "smoke.yaml").read_text())
    project, code = _project(tmp_path, f'gitfile("{repo}", path="wf/Snakefile", tag="v1")', smoke)
    repo.mkdir()
    code.rename(repo / "wf")
    shutil.copy2(REPO / "pyproject.toml", repo / "wf")  # what pip installs the package from
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "workflow"], ["tag", "v1"]):
        subprocess.run([*git, *args], check=True)
    return project


def test_git_module_without_the_package_names_the_fix(git_project):
    proc = _snakemake(git_project, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    repo = git_project.parent / "remote"
    assert f"pip install 'git+file://{repo}@v1'" in out, out[-3000:]
    assert "ModuleNotFoundError" not in out and "Traceback" not in out, out[-3000:]


def test_git_module_with_the_package_installed_builds_the_dag(git_project):
    # The test interpreter has the package installed (setup.sh: pip install -e .).
    proc = _snakemake(git_project, "-n", "-p", python=sys.executable)
    out = proc.stdout + proc.stderr
    assert "MissingInputException" not in out
    installed = Path(__import__("workflow_scripts").__file__).parent
    assert f"{installed}/data/prepare_dataset.py" in out  # code inputs: the installed files
    assert "rule lora_zh_render_report:" in out and "reports/templates/report.md.j2" in out


def test_prefixed_rules_keep_what_names_them(git_project):
    """Local rules stay local under the prefix (`localrule: True` registers the rule's
    final name; a `localrules:` list would not be renamed), and the studio's log paths are
    the rules' `log:` paths, which the prefix does not touch."""
    script = (
        "import json\n"
        "from pathlib import Path\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.io import strip_wildcard_constraints\n"
        "from snakemake.settings.types import OutputSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings(quiet=True)) as api:\n"
        "    w = api.workflow(resource_settings=ResourceSettings(cores=1),\n"
        "                     snakefile=Path('Snakefile'), workdir=Path('.'))\n"
        "    w.dag()\n"
        "    wf = w._workflow\n"
        "    logs = {r.name: strip_wildcard_constraints(r.log[0]) for r in wf.rules if r.log}\n"
        "    print(json.dumps([sorted(wf._localrules), logs]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=git_project, capture_output=True,
                          text=True, env=Workflow.environment())
    assert proc.returncode == 0, proc.stderr[-3000:]
    local, logs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"lora_zh_collect_metrics", "lora_zh_render_report", "lora_zh_fetch_base_model",
            "lora_zh_snapshot_config", "lora_zh_prepare_benchmark"} <= set(local)
    assert not {"lora_zh_train_adapter", "lora_zh_evaluate"} & set(local)
    # where the studio reads a training's and an evaluation's logs (studio/catalog.py)
    assert logs["lora_zh_train_adapter"] == "logs/train_adapter/{experiment}.log"
    assert logs["lora_zh_evaluate"] == "logs/evaluate/{experiment}.log"


def _environment_with_package(path: Path, repo: Path, tag: str) -> str:
    """A Python environment with the dependencies (as deps_python) and the package installed
    by pip from the git repository at `tag`, as a user installs it; its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site_dir = next((path / "lib").glob("python3*")) / "site-packages"
    deps = Path(deps_python()).parent.parent
    shutil.copy2(next((deps / "lib").glob("python3*/site-packages/test_dependencies.pth")), site_dir)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site_dir),
                    f"git+file://{repo}@{tag}#subdirectory=wf"], check=True)
    return str(path / "bin" / "python")


@pytest.mark.slow
def test_git_module_checks_the_installed_version(git_project, tmp_path):
    repo = git_project.parent / "remote"
    subprocess.run(["git", "-C", str(repo), "tag", "v2"], check=True)  # the same code, retagged
    python = _environment_with_package(tmp_path / "env", repo, "v1")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "v1"], capture_output=True,
                            text=True, check=True).stdout.strip()

    same = _snakemake(git_project, "-n", "-p", python=python)
    assert "Warning: the installed" not in same.stderr
    site_dir = Path(python).parent.parent
    assert re.search(rf"{site_dir}/lib/python3[.\d]*/site-packages/workflow_scripts/"
                     r"training/train_adapter\.py", same.stdout)

    snakefile = git_project / "Snakefile"
    snakefile.write_text(snakefile.read_text().replace('tag="v1"', 'tag="v2"'))
    other = _snakemake(git_project, "-n", python=python)
    assert "the installed workflow_scripts is from v1, this module from v2" in other.stderr
    assert f"pip install 'git+file://{repo}@v2'" in other.stderr

    # Provenance of an installed package: the commit pip recorded (run_info.json, tracking).
    recorded = subprocess.run(
        [python, "-c", "from workflow_scripts.common.run_info import git_commit; print(git_commit())"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=Workflow.environment())
    assert recorded.stdout.strip() == commit


def test_studio_lists_the_prefixed_rules_slurm_logs(tmp_path):
    """Slurm names a job's log directory after the rule (rule_lora_zh_train_adapter under a
    module); the studio's Logs page files it by its root, whatever the rule's name."""
    slurm = tmp_path / "logs/slurm/rule_lora_zh_train_adapter/experiment_lccc-qlora/4242.log"
    rule = tmp_path / "logs/train_adapter/lccc-qlora.log"
    for path in (slurm, rule):
        path.parent.mkdir(parents=True)
        path.write_text("log\n")
    kinds = {row["name"]: row["kind"] for row in log_listing(tmp_path)}
    assert kinds == {slurm.relative_to(tmp_path).as_posix(): "slurm",
                     rule.relative_to(tmp_path).as_posix(): "rule"}
