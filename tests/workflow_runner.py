"""Run the real workflow in a scratch directory, as a user would from the command line."""
from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = REPO / "tests" / "configs" / "smoke.yaml"
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "config", "reports", "envs")


@dataclass
class Workflow:
    """A copy of the workflow code and a working directory with data and a config.yaml."""

    code: Path
    workdir: Path

    @property
    def config(self) -> Path:
        return self.workdir / "config.yaml"

    def command(self, *args: str) -> list[str]:
        """Snakemake as a user runs it, from an environment that has the dependencies but
        not this package: the rules themselves point jobs at the copy next to the Snakefile."""
        return [deps_python(), "-m", "snakemake", "-s", str(self.code / "Snakefile"),
                "--directory", str(self.workdir), "--configfile", str(self.config), *args]

    @staticmethod
    def environment() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = self.command(*args)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir,
                              env=self.environment())
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    def start(self, *args: str) -> "Started":
        """`run` in the background; `Started.wait` gives its result."""
        out = open(self.workdir.parent / "snakemake.out", "w+")
        cmd = self.command(*args)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                cwd=self.workdir, env=self.environment())
        return Started(cmd, proc, out)

    def env(self) -> dict[str, str]:
        """For commands run beside the workflow (compare, the studio): this copy's package
        and the test interpreter's `python`, as in an activated environment."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code), env.get("PYTHONPATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def planned_jobs(self, *args: str) -> dict[str, int]:
        """Rule -> job count a dry run would execute ({} when there is nothing to do)."""
        proc = self.run("-n", *args, "--quiet", "rules")  # --quiet takes values: last
        counts: dict[str, int] = {}
        in_table = False
        for line in (proc.stdout + proc.stderr).splitlines():
            parts = line.split()
            if parts[:2] == ["job", "count"]:
                in_table = True
            elif in_table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
        return counts

    def clone(self, dest: Path) -> "Workflow":
        """An independent copy of code and results, timestamps kept."""
        shutil.copytree(self.code, dest / "code", symlinks=True)
        shutil.copytree(self.workdir, dest / "work", symlinks=True)
        return Workflow(dest / "code", dest / "work")


@dataclass
class Started:
    """A workflow run going on in the background."""

    cmd: list[str]
    proc: subprocess.Popen
    out: IO[str]

    def wait(self) -> None:
        """Until it ends; an AssertionError with its output's end if it failed."""
        code = self.proc.wait()
        self.out.seek(0)
        output = self.out.read()
        if code != 0:
            raise AssertionError(f"{' '.join(self.cmd)} failed ({code}):\n{output[-12000:]}")


@cache
def deps_python() -> str:
    """A Python with the test interpreter's dependencies but without this package.

    A venv whose site-packages holds one .pth line naming the test interpreter's
    site-packages: that puts the dependencies on the path, while the .pth files in there
    (the editable install of workflow_scripts among them) are not processed."""
    key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"lora-zh-deps-only-{key}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        lib = next((venv / "lib").glob("python3*")) / "site-packages"
        (lib / "test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return str(python)


def make_workflow(path: Path, config: Path = SMOKE_CONFIG) -> Workflow:
    code, workdir = path / "code", path / "work"
    code.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, code / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, code / part)
    shutil.copytree(REPO / "data" / "raw", workdir / "data" / "raw")
    shutil.copytree(REPO / "data" / "exams", workdir / "data" / "exams")
    shutil.copytree(REPO / "tests" / "data", workdir / "tests" / "data",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", "templates"))
    shutil.copy(config, workdir / "config.yaml")
    return Workflow(code, workdir)
