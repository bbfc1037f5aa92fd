"""What a training run records as it goes: its clocks, per-step timings and the progress file.

A run may be several processes (killed, then resumed from a checkpoint). The clock's totals
are saved into every checkpoint (`run_clock.json`, written before the Trainer's
`trainer_state.json`, so a complete checkpoint has one), and the per-log-step rows are
appended to `timings.jsonl` next to the checkpoints, so the wall time, the time spent in
training steps and the peak memory cover every process of the run.

The progress file (`--progress-file`) gets one JSON line per event, flushed at once, for
whoever follows the run live; see docs/training.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from workflow_scripts.common.io_utils import read_jsonl
from workflow_scripts.common.resource_usage import max_peaks, peak_memory

CLOCK_FILE = "run_clock.json"


def cuda_synchronize() -> None:
    """Wait for queued GPU work, so that a clock read after it includes it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class RunClock:
    """Wall time of the run and time spent inside optimizer steps, continued across resumes.

    Step time runs from `step_begin` to `step_end`: data loading, forward, backward and the
    optimizer step, but not logging, evaluation or checkpoint saving.
    """

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.offset = float(saved.get("elapsed_s", 0.0))
        self.step_time = float(saved.get("train_step_time_s", 0.0))
        self.started = time.perf_counter()
        self._step_started: float | None = None

    def start(self) -> None:
        """Start this process's share of the wall time (the training loop begins)."""
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.started

    def step_begin(self) -> None:
        cuda_synchronize()
        self._step_started = time.perf_counter()

    def step_end(self) -> None:
        if self._step_started is not None:
            cuda_synchronize()
            self.step_time += time.perf_counter() - self._step_started
            self._step_started = None

    def state(self) -> dict[str, float]:
        return {"elapsed_s": round(self.elapsed(), 3), "train_step_time_s": round(self.step_time, 3)}


def save_clock(checkpoint: Path, clock: RunClock) -> None:
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / CLOCK_FILE).write_text(json.dumps(clock.state()), encoding="utf-8")


def load_clock(checkpoint: Path | None) -> dict:
    """The clock totals saved with `checkpoint`; empty for a fresh start."""
    if checkpoint is None or not (checkpoint / CLOCK_FILE).exists():
        return {}
    return json.loads((checkpoint / CLOCK_FILE).read_text(encoding="utf-8"))


class ProgressFile:
    """Appends one JSON object per event to `path` (nothing when `path` is None)."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def tokens_per_s(tokens: int, seconds: float) -> float | None:
    return round(tokens / seconds, 2) if seconds > 0 else None


class RunRecorder(TrainerCallback):
    """Writes the timing rows and the progress events (on the main process only).

    `timings` is the append-only file next to the checkpoints: its rows are keyed by step (a
    later row for the same step wins) and carry each process's memory peaks so far.
    """

    def __init__(self, clock: RunClock, timings: Path, progress: ProgressFile, resumed: bool):
        self.clock = clock
        self.timings = timings
        self.progress = progress
        self.resumed = resumed
        earlier = list(read_jsonl(timings)) if timings.exists() else []
        self.rows: dict[int, dict] = {r["step"]: r for r in earlier}
        self.earlier_peaks = max_peaks(earlier)

    def peaks(self) -> dict[str, float]:
        """Memory peaks over every process of the run, this one included."""
        return max_peaks([self.earlier_peaks, peak_memory()])

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.start()
        self.clock.step_begin()
        if state.is_world_process_zero:
            self.progress.write("start", step=state.global_step, max_steps=state.max_steps,
                                epochs=state.num_train_epochs, resumed=self.resumed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = logs or {}
        memory = peak_memory()
        row = {"step": state.global_step, "elapsed_s": round(self.clock.elapsed(), 3),
               "memory_mb": memory["peak_memory_mb"], **memory}
        self.rows[state.global_step] = row
        with open(self.timings, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if "loss" in logs:
            tokens = int(state.num_input_tokens_seen)
            self.progress.write(
                "log", step=state.global_step, max_steps=state.max_steps,
                epoch=round(state.epoch or 0.0, 4), loss=logs["loss"],
                learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                elapsed_s=row["elapsed_s"], train_tokens=tokens,
                tokens_per_s=tokens_per_s(tokens, self.clock.step_time))
        if "eval_loss" in logs:
            self.progress.write("eval", step=state.global_step, eval_loss=logs["eval_loss"])
