"""Start a job on GPUs of its own: hold N distinct device slots for the job's lifetime.

Also what each job asks for (stage_resources) and how a training is launched (train_launcher),
which the rules in rules/train.smk and rules/evaluate.smk read.

    python -m workflow_scripts.launch.gpu_slots --gpus N --total M [--slots-dir DIR] -- CMD ...
    python -m workflow_scripts.launch.gpu_slots --rank -m MODULE ARGS ...   (a local_launch or torchrun rank)

Each of the machine's M GPUs is a slot file `DIR/gpu<i>.lock`; a job holds a slot by holding
an exclusive `flock` on it. The launcher takes N free slots, sets CUDA_VISIBLE_DEVICES to those
devices and replaces itself with CMD (exec), which inherits the locked descriptors. The kernel
drops a flock when the last descriptor on it closes, so the slots are freed whenever the job
ends, however it ends (SIGKILL included): there are no stale locks to clean up.

Taking slots goes through one more lock, `DIR/acquire.lock`, held only while slots are being
picked: a job waiting for two GPUs keeps its turn instead of being overtaken forever by
one-GPU jobs, and since slot holders never wait for anything, nobody deadlocks.

With no GPUs to share (M is 0, or not given and CUDA_VISIBLE_DEVICES unset) and inside a
Slurm job (Slurm gives each job its own devices), CMD starts unchanged. A job that asks for
no GPU on a machine with M > 0 gets CUDA_VISIBLE_DEVICES="" so that it cannot land on a GPU
in use. If CUDA_VISIBLE_DEVICES is already set, slot i means its i-th entry, and M defaults
to its length.
"""
from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser

POLL_SECONDS = 0.2
ENV_SLOTS_DIR = "LORA_GPU_SLOTS_DIR"


DEFAULT_THREADS = 2


def stage_resources(experiment: dict, stage: str) -> dict:
    """What one of an experiment's jobs asks for: stage `train` (the top level of its
    `resources:`), `evaluate`, `merge` or `tokenize` (their own blocks). Training's GPUs per
    node default to training.devices; evaluation and merge take one GPU when training takes
    any, and its memory and threads unless they set their own. Tokenization inherits nothing
    (None: the rule's defaults): a CPU job whose memory follows the number of samples, not the
    model, should not ask for a GPU training's memory."""
    res = experiment["resources"]
    if stage == "tokenize":
        own = res.get("tokenize", {})
        return {"gpu": 0, "mem_mb": own.get("mem_mb"), "runtime": own.get("runtime"),
                "threads": own.get("threads")}
    train_gpus = res.get("gpu", experiment["training"]["devices"])
    threads = res.get("threads", DEFAULT_THREADS)
    if stage == "train":
        return {"gpu": train_gpus, "mem_mb": res.get("mem_mb"), "runtime": res.get("runtime"),
                "threads": threads}
    own = res.get(stage, {})
    return {"gpu": own.get("gpu", min(1, train_gpus)),
            "mem_mb": own.get("mem_mb", res.get("mem_mb")), "runtime": own.get("runtime"),
            "threads": own.get("threads", threads)}


def multi_node_resources(experiment: dict) -> dict:
    """Slurm resources of a training across nodes; all None (no such key) on one node.

    The Slurm plugin must then not wrap the job in its own one-task srun ("mpi"); the job asks
    for one task per node and, with "gres", for its GPUs on each node (--gpus counts per job)."""
    nodes = experiment["training"]["nodes"]
    gpus = stage_resources(experiment, "train")["gpu"]
    if nodes == 1:
        return dict.fromkeys(("gres", "nodes", "tasks", "tasks_per_gpu", "mpi"))
    return {"gres": f"gpu:{gpus}" if gpus else None, "nodes": nodes, "tasks": nodes,
            "tasks_per_gpu": 0, "mpi": "srun"}


# Each rank (torchrun's or local_launch's) starts through this module, so that it dies with
# its launcher (die_with_launcher).
RANK_WRAPPER = "-m workflow_scripts.launch.gpu_slots --rank"


def train_launcher(training: dict) -> str:
    """The command that runs `-m workflow_scripts.training.train_adapter`: python for one process,
    local_launch for training.devices processes, srun + torchrun across training.nodes.

    Across nodes the command runs in the job's batch step, on the allocation's first node,
    which is the rendezvous (the plugin strips SLURM_JOB_NODELIST, so: `hostname`)."""
    devices, nodes = training["devices"], training["nodes"]
    if nodes > 1:
        return (f"srun --nodes {nodes} --ntasks-per-node 1 python -m torch.distributed.run "
                f"--nnodes {nodes} --nproc-per-node {devices} --rdzv-backend c10d "
                '--rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$(hostname)":$((29500 + SLURM_JOB_ID % 1000)) '
                f"{RANK_WRAPPER}")
    if devices > 1:
        # One node: local_launch, whose ranks meet through a file and talk over the loopback
        # only (torchrun's rendezvous store would listen on every interface).
        return f"python -m workflow_scripts.launch.local_launch --nproc {devices}"
    return "python"


def default_slots_dir() -> Path:
    """One directory per machine (and user) that every job of every run shares."""
    if os.environ.get(ENV_SLOTS_DIR):
        return Path(os.environ[ENV_SLOTS_DIR])
    return Path(tempfile.gettempdir()) / f"lora-zh-gpu-slots-{os.getuid()}"


def physical_devices(total: int | None, visible: str | None) -> list[str]:
    """The device ids slot 0..M-1 stand for (none: nothing to share)."""
    listed = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
    if total is None:
        return listed or []
    if total == 0:
        return []
    if listed is not None:
        if total > len(listed):
            raise SystemExit(f"gpu_slots: --total {total} but CUDA_VISIBLE_DEVICES lists only "
                             f"{len(listed)} devices ({visible})")
        return listed[:total]
    return [str(i) for i in range(total)]


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def acquire(n: int, total: int, slots_dir: Path, poll: float = POLL_SECONDS) -> dict[int, int]:
    """Slot index -> locked descriptor for n distinct slots out of total; waits until free."""
    slots_dir.mkdir(parents=True, exist_ok=True)
    turn = _open_lock(slots_dir / "acquire.lock")
    fcntl.flock(turn, fcntl.LOCK_EX)  # blocks while another job is picking its slots
    held: dict[int, int] = {}
    try:
        while True:
            for slot in range(total):
                if len(held) == n:
                    return held
                if slot in held:
                    continue
                fd = _open_lock(slots_dir / f"gpu{slot}.lock")
                if _try_lock(fd):
                    held[slot] = fd
                else:
                    os.close(fd)
            if len(held) == n:
                return held
            time.sleep(poll)
    finally:
        os.close(turn)  # closing releases the turn


def launch_env(gpus: int, total: int | None, env: dict[str, str], slots_dir: Path,
               ) -> tuple[dict[str, str], list[int]]:
    """The child's environment and the descriptors it must inherit to keep its slots."""
    env = dict(env)
    if env.get("SLURM_JOB_ID"):
        return env, []
    devices = physical_devices(total, env.get("CUDA_VISIBLE_DEVICES"))
    if not devices:
        return env, []  # nothing known to share: start as asked
    if gpus > len(devices):
        raise SystemExit(f"gpu_slots: the job asks for {gpus} GPUs but this machine has "
                         f"{len(devices)} (the profile's `resources: gpu`)")
    if gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env, []
    held = acquire(gpus, len(devices), slots_dir)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[s] for s in sorted(held))
    return env, list(held.values())


def die_with_launcher() -> None:
    """End this process when the one that started it ends (Linux's parent-death signal).

    torchrun starts each rank in a session of its own, so when the launcher is SIGKILLed
    (and with it the slots it holds) its ranks would otherwise run on, on GPUs already free
    for the next job, and finish writing outputs of a job that Snakemake counts as dead."""
    import ctypes
    import ctypes.util
    import signal

    pr_set_pdeathsig = 1
    launcher = os.getppid()
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(pr_set_pdeathsig,
                                                                    signal.SIGKILL)
    if os.getppid() != launcher:  # it ended before the signal was set up
        os._exit(1)


def run_rank(argv: list[str]) -> None:
    """`--rank -m MODULE ARGS...`: run MODULE as __main__ in a rank that dies with its launcher."""
    import runpy

    if len(argv) < 2 or argv[0] != "-m":
        raise SystemExit("gpu_slots: usage: --rank -m MODULE [ARGS ...]")
    if sys.platform.startswith("linux"):
        die_with_launcher()
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rank"]:
        return run_rank(argv[1:])
    if "--" not in argv:
        raise SystemExit("gpu_slots: usage: --gpus N [--total M] [--slots-dir DIR] -- CMD ...")
    split = argv.index("--")
    parser = cli_parser(__doc__)
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the job needs")
    parser.add_argument("--total", type=int, default=None,
                        help="GPUs on this machine (default: CUDA_VISIBLE_DEVICES's count)")
    parser.add_argument("--slots-dir", type=Path, default=None,
                        help=f"where the per-GPU lock files live (default: ${ENV_SLOTS_DIR}, else a folder "
                             "under the temporary directory, one per user)")
    args = parser.parse_args(argv[:split])
    cmd = argv[split + 1:]
    if not cmd or args.gpus < 0:
        parser.error("a command after -- and --gpus >= 0 are required")
    env, fds = launch_env(args.gpus, args.total, dict(os.environ),
                          args.slots_dir or default_slots_dir())
    for fd in fds:
        os.set_inheritable(fd, True)
    print(f"gpu_slots: CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unchanged>')!s}",
          file=sys.stderr, flush=True)
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        hint = " (training.nodes > 1 runs on Slurm only)" if cmd[0] == "srun" else ""
        raise SystemExit(f"gpu_slots: {cmd[0]}: command not found{hint}") from None


if __name__ == "__main__":
    main()
