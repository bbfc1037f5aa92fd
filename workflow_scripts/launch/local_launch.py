"""Data-parallel processes on one machine, with nothing listening beyond the loopback.

    python -m workflow_scripts.launch.local_launch --nproc N -m MODULE ARGS ...

torchrun's rendezvous (and `init_process_group`'s default env:// store) is a TCPStore, which
listens on every interface with no bind option. Here the ranks meet through a FileStore in
a private temporary directory instead (`init_from_launcher`, called by each rank before
anything distributed starts), and gloo's and NCCL's own sockets use the loopback interface.

Each rank gets torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE) and
starts through `gpu_slots --rank`, so it dies with this launcher even on a SIGKILL. When one
rank fails the others are stopped and the launcher exits with the failed rank's status;
SIGTERM and SIGINT are passed on to every rank.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.launch.gpu_slots import RANK_WRAPPER

ENV_STORE = "LORA_DIST_STORE"
GRACE_SECONDS = 20


def rank_env(rank: int, nproc: int, store: Path, base: dict[str, str]) -> dict[str, str]:
    return dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", ROLE_RANK=str(rank),
                ROLE_WORLD_SIZE=str(nproc), GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo",
                **{ENV_STORE: str(store)})


def stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    """Send `sig` to the ranks still running; SIGKILL those left after the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def supervise(procs: list[subprocess.Popen], poll: float = 0.2) -> int:
    """Wait for every rank; on the first failure stop the rest and return its status."""
    while True:
        codes = [proc.poll() for proc in procs]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            stop(procs)
            return failed if failed > 0 else 128 - failed  # a signal: the shell's convention
        if all(c == 0 for c in codes):
            return 0
        time.sleep(poll)


def launch(nproc: int, module_argv: list[str]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="lora-zh-dist-"))  # mode 0700: this user only
    store = workdir / "store"
    cmd = [sys.executable, *RANK_WRAPPER.split(), *module_argv]
    procs: list[subprocess.Popen] = []

    def forward(signum, _frame):
        stop(procs, signum)
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for rank in range(nproc):
            procs.append(subprocess.Popen(cmd, env=rank_env(rank, nproc, store, dict(os.environ))))
        return supervise(procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)


def init_from_launcher() -> None:
    """In a rank started by this launcher: join the process group through the FileStore
    (gloo on the CPU, NCCL on this rank's GPU), before the Trainer would start its own
    env:// group. Nothing to do outside this launcher."""
    path, world = os.environ.get(ENV_STORE), int(os.environ.get("WORLD_SIZE", "1"))
    if not path or world < 2:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl"
    dist.init_process_group(backend, store=dist.FileStore(path, world),
                            rank=int(os.environ["RANK"]), world_size=world)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli_parser(__doc__,
                        usage="%(prog)s --nproc N -m MODULE [ARGS ...]")
    parser.add_argument("--nproc", type=int, required=True, help="processes (one per GPU)")
    cut = argv.index("-m") if "-m" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    if args.nproc < 1 or len(argv) - cut < 2:
        parser.error("give --nproc N (at least 1) and -m MODULE")
    sys.exit(launch(args.nproc, argv[cut:]))


if __name__ == "__main__":
    main()
