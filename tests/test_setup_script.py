"""scripts/setup.sh builds .venv with Python 3.11 only (the version envs/requirements.lock is
resolved for) and stops, before installing anything, on any other."""
from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def other_python() -> str | None:
    """A real interpreter of another version on this machine, if there is one."""
    candidates = sorted(glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*")
                        + glob.glob(str(Path.home() / ".pyenv/versions/3.*/bin/python3")))
    for path in candidates:
        proc = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] != (3, 11))"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == "True":
            return path
    return None


OTHER = other_python()
needs_other = pytest.mark.skipif(OTHER is None, reason="no Python but 3.11 on this machine")


def setup_copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts/setup.sh", tmp_path / "scripts/setup.sh")
    return tmp_path / "scripts/setup.sh"


@needs_other
def test_another_python_is_refused_before_anything_is_installed(tmp_path):
    script = setup_copy(tmp_path)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": OTHER})
    assert proc.returncode == 1
    assert "needs Python 3.11" in proc.stderr and "PYTHON=/path/to/python3.11" in proc.stderr
    assert not (tmp_path / ".venv").exists()


@needs_other
def test_an_existing_venv_of_another_python_is_refused(tmp_path):
    script = setup_copy(tmp_path)
    subprocess.run([OTHER, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and ".venv is not Python 3.11" in proc.stderr
    assert not list((tmp_path / ".venv").glob("lib/python3*/site-packages/pip"))
