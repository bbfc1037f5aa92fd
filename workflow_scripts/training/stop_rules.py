"""Stop a training early by the rules its job carries (a search trial's round file, made by
workflow_scripts/search/pruning.py): a loss that is no longer finite stops it as diverged; a
best validation loss so far above the threshold at an eval step stops it as pruned. The
adapter and the curve up to the stop are written as for any run; train_metrics.json says
why it stopped (`stop`: state, step, reason).

A job killed and started again stops where it would have: no checkpoint is saved at the
step that stops a run (a resumed run trains up to that step again and reaches the same
verdict), and a resumed run's best validation loss counts the evaluations before its
checkpoint."""
from __future__ import annotations

import math

from transformers import TrainerCallback


class StopRules(TrainerCallback):
    def __init__(self, rules: dict):
        self.thresholds = {int(step): float(value) for step, value in rules.get("thresholds", [])}
        self.nonfinite = bool(rules.get("nonfinite", True))
        self.pruner = rules.get("pruner", "none")
        self.best = math.inf
        self.stopped: dict | None = None

    def stop(self, control, state: str, step: int, reason: str) -> None:
        if self.stopped is None:
            self.stopped = {"state": state, "step": step, "reason": reason}
        control.should_training_stop = True
        control.should_save = False

    def on_train_begin(self, args, state, control, **kwargs):
        for entry in state.log_history:  # restored from the checkpoint a run resumes from
            loss = entry.get("eval_loss")
            if loss is not None and math.isfinite(loss):
                self.best = min(self.best, loss)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.nonfinite and loss is not None and not math.isfinite(loss):
            self.stop(control, "diverged", state.global_step,
                      f"training loss is {loss} at step {state.global_step}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        step = state.global_step
        if not math.isfinite(loss):
            if self.nonfinite:
                self.stop(control, "diverged", step, f"validation loss is {loss} at step {step}")
            return
        self.best = min(self.best, loss)
        limit = self.thresholds.get(step)
        # a run at its last step has spent its compute: it ends complete, not pruned
        if limit is not None and self.best > limit and step < state.max_steps:
            self.stop(control, "pruned", step,
                      f"best validation loss {self.best:.4g} by step {step} is above the "
                      f"{self.pruner} threshold {limit:.4g} of earlier trials")
