"""The one-machine launcher: every rank gets its identity and a private rendezvous file, a
failed rank stops the others and its status is the launcher's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RANK = (
    "import json, os, stat, sys, time\n"
    "keys = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GLOO_SOCKET_IFNAME', 'LORA_DIST_STORE')\n"
    "row = {k: os.environ.get(k) for k in keys}\n"
    "row['store_dir_mode'] = oct(stat.S_IMODE(os.stat(os.path.dirname(row['LORA_DIST_STORE'])).st_mode))\n"
    "open(sys.argv[1] + '/rank' + row['RANK'], 'w').write(json.dumps(row))\n"
    "if row['RANK'] == '1' and len(sys.argv) > 2: sys.exit(int(sys.argv[2]))\n"
    "time.sleep(60 if len(sys.argv) > 2 else 0)\n"
)


def launch(tmp_path: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "rank_probe.py").write_text(RANK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "workflow_scripts.launch.local_launch", "--nproc",
                           str(nproc), "-m", "rank_probe", str(tmp_path), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_each_rank_knows_its_place_and_the_store_is_private(tmp_path):
    proc = launch(tmp_path, 3)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(3)]
    assert [(r["RANK"], r["LOCAL_RANK"], r["WORLD_SIZE"]) for r in rows] == [
        ("0", "0", "3"), ("1", "1", "3"), ("2", "2", "3")]
    assert {r["GLOO_SOCKET_IFNAME"] for r in rows} == {"lo"}
    assert len({r["LORA_DIST_STORE"] for r in rows}) == 1
    assert rows[0]["store_dir_mode"] == "0o700"
    assert not Path(rows[0]["LORA_DIST_STORE"]).parent.exists()  # removed at the end


def test_a_failed_rank_stops_the_others_with_its_status(tmp_path):
    started = time.monotonic()
    proc = launch(tmp_path, 2, "3")
    assert proc.returncode == 3
    assert time.monotonic() - started < 45  # rank 0 would sleep for 60 s
