"""The package's shape: imports run one way through the layers, each rule runs modules of its
own stage, and `pip install .` gives a package that imports from anywhere."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "workflow_scripts"

# Bottom up (docs/architecture.md). A module may import from its own layer and below.
LAYERS = {"common": 0, "launch": 1, "data": 2, "models": 3, "training": 4, "evaluation": 5,
          "export": 6, "search": 6, "report": 7, "compare": 8, "studio": 8, "tracking": 8}
# What each rule file may start with `python -m` besides its own stage: GPU slots.
RULE_STAGES = {"data": "data", "models": "models", "train": "training", "preference": "training",
               "evaluate": "evaluation", "export": "export", "report": "report", "track": "tracking",
               "search": "search"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The top-level part of workflow_scripts a module belongs to (None for the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def imported_modules(path: Path) -> set[str]:
    """Every workflow_scripts module a file imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from workflow_scripts.x import y` may name a submodule y
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if is_module(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
    return {m for m in found if m == "workflow_scripts" or m.startswith("workflow_scripts.")}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_known_layer():
    top = sorted({layer_of(m) for m in import_graph()} - {None})
    assert top == sorted(LAYERS), "a new top-level part of workflow_scripts needs a layer"
    modules = [p for p in PACKAGE.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
    assert len(modules) <= 3, f"workflow_scripts/ should hold stage packages: {modules}"


def test_imports_never_reach_a_higher_layer_or_the_studio():
    wrong = []
    for module, imports in import_graph().items():
        own = layer_of(module)
        for target in imports:
            theirs = layer_of(target)
            if own is None or theirs is None or own == theirs:
                continue
            if theirs == "studio" or LAYERS[theirs] > LAYERS[own] or (
                    LAYERS[theirs] == LAYERS[own]):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    known = set(graph)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module] & known):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from workflow_scripts.report.plots import draw_all\n")
    assert imported_modules(bad) == {"workflow_scripts.report.plots"}


def test_each_rule_file_runs_only_its_own_stage():
    for rule_file, stage in RULE_STAGES.items():
        text = (REPO / "rules" / f"{rule_file}.smk").read_text(encoding="utf-8")
        modules = set(re.findall(r"-m (workflow_scripts[\w.]*)", text))
        assert modules, rule_file
        for module in modules:
            assert layer_of(module) in (stage, "launch"), f"rules/{rule_file}.smk runs {module}"
            assert is_module(module), module


def test_code_inputs_name_existing_modules():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text(encoding="utf-8")
        for call in re.findall(r"code\(([^)]*)\)|_CODE = \(([^)]*)\)", text, re.S):
            for name in re.findall(r'"([\w/]+)"', "".join(call)):
                assert (PACKAGE / f"{name}.py").is_file(), f"{smk.name}: {name}"


@pytest.mark.slow
def test_pip_install_gives_every_module_outside_the_checkout(tmp_path):
    """A non-editable install into a temporary target imports every module of the package,
    templates and static files included, from a directory that is not the checkout."""
    source, target = tmp_path / "source", tmp_path / "site"
    source.mkdir()  # a copy, so that the build leaves nothing in the checkout
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(PACKAGE, source / "workflow_scripts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    expected = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))
    script = (
        "import importlib, pkgutil, sys, workflow_scripts as w\n"
        "assert w.__file__.startswith(sys.argv[1]), w.__file__\n"
        "names = sorted(['workflow_scripts'] + [m.name for m in "
        "pkgutil.walk_packages(w.__path__, 'workflow_scripts.')])\n"
        "[importlib.import_module(n) for n in names]\n"
        "from importlib.resources import files\n"
        "assert files('workflow_scripts.studio').joinpath('templates').is_dir()\n"
        "print('\\n'.join(names))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    # -S keeps the checkout's editable install (a .pth file) out; the dependencies come
    # from the running interpreter's site-packages, added after the target.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = os.pathsep.join([str(target), *deps])
    proc = subprocess.run([sys.executable, "-S", "-c", script, str(target)], env=env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == expected


def test_the_workflow_runner_has_the_dependencies_but_not_the_package(tmp_path):
    """Every workflow the tests run (the smoke run included) starts from this interpreter,
    so the rules' own PYTHONPATH is what lets jobs import workflow_scripts."""
    from workflow_runner import deps_python

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util as u, torch, snakemake, transformers; " \
            "print(u.find_spec('workflow_scripts'))"
    proc = subprocess.run([deps_python(), "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
