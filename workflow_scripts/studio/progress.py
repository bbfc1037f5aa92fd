"""A training's live state from its progress file, and loss curves from finished logs.

The progress file (`logs/train_adapter/{experiment}.progress.jsonl`) gets one JSON line per
event as training goes: `start` (again on each resume), `log`, `eval` and `end`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from workflow_scripts.studio.files import read_jsonl_cached


@dataclass
class Progress:
    """Where a training stands; `train` and `eval` are [step, loss] points for the curve."""

    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eval_loss: float | None = None
    started: float | None = None  # unix time of the latest (re)start
    start_step: int = 0
    last_time: float | None = None
    ended: bool = False
    resumes: int = 0
    train: list[list[float]] = field(default_factory=list)
    eval: list[list[float]] = field(default_factory=list)

    def apply(self, row: dict) -> None:
        event, step = row.get("event"), row.get("step")
        self.last_time = row.get("time", self.last_time)
        if event == "start":
            self._restart(row)
        elif event == "log" and step is not None:
            self.step = step
            self.max_steps = row.get("max_steps", self.max_steps)
            for key in ("epoch", "loss", "learning_rate", "tokens_per_s"):
                if row.get(key) is not None:
                    setattr(self, key, row[key])
            if row.get("loss") is not None:
                self.train.append([step, row["loss"]])
        elif event == "eval" and row.get("eval_loss") is not None:
            self.eval_loss = row["eval_loss"]
            self.eval.append([step, row["eval_loss"]])
        elif event == "end":
            self.ended = True
            self.step = step if step is not None else self.step

    def _restart(self, row: dict) -> None:
        """A (re)start: steps after the resumed checkpoint will be trained again."""
        if self.started is not None:
            self.resumes += 1
        self.started, self.ended = row.get("time"), False
        self.start_step = self.step = row.get("step") or 0
        self.max_steps = row.get("max_steps", self.max_steps)
        self.train = [p for p in self.train if p[0] <= self.step]
        self.eval = [p for p in self.eval if p[0] <= self.step]

    def timing(self, now: float) -> dict:
        """Elapsed seconds since the latest start, and the estimated seconds remaining."""
        if self.started is None:
            return {"elapsed_s": None, "remaining_s": None}
        end = self.last_time if self.ended else now
        elapsed = max(0.0, end - self.started)
        remaining = None
        done_steps = self.step - self.start_step
        if not self.ended and (self.max_steps or 0) > 0 and done_steps > 0 and self.last_time:
            per_step = (self.last_time - self.started) / done_steps
            remaining = max(0.0, per_step * (self.max_steps - self.step))
        elif self.ended:
            remaining = 0.0
        return {"elapsed_s": round(elapsed, 1),
                "remaining_s": None if remaining is None else round(remaining, 1)}

    def summary(self, now: float, with_curve: bool = True) -> dict:
        out = asdict(self)
        if not with_curve:
            out.pop("train")
            out.pop("eval")
        out.update(self.timing(now))
        return out


def read_progress(path: Path) -> Progress | None:
    """The state a progress file describes, or None if there is no file (yet)."""
    rows = read_jsonl_cached(path)
    if not rows:
        return None
    progress = Progress()
    for row in rows:
        progress.apply(row)
    return progress


# a preference experiment's curves besides its loss (TRL's names, in trainer_log.jsonl)
REWARD_CURVES = ("rewards/margins", "rewards/accuracies")


def curves_from_trainer_log(path: Path) -> dict:
    """Training and validation loss points of a finished `trainer_log.jsonl`; for a
    preference experiment also `rewards`: {name: {"train": points, "eval": points}} for each
    of REWARD_CURVES it logged."""
    train, evals = [], []
    rewards: dict[str, dict[str, list]] = {}
    for row in read_jsonl_cached(path):
        step = row.get("step")
        if step is None:
            continue
        if row.get("loss") is not None:
            train.append([step, row["loss"]])
        if row.get("eval_loss") is not None:
            evals.append([step, row["eval_loss"]])
        for name in REWARD_CURVES:
            for kind, key in (("train", name), ("eval", f"eval_{name}")):
                if row.get(key) is not None:
                    rewards.setdefault(name, {"train": [], "eval": []})[kind].append([step, row[key]])
    return {"train": train, "eval": evals} | ({"rewards": rewards} if rewards else {})
