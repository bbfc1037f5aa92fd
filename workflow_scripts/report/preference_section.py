"""The report's "Preference tuning" section, from results/metrics/preference.tsv and
training_log.tsv: each preference experiment against its starting point (paired, in the run's
Holm family), a plot of the loss or beta study with 95% intervals grouped by starting point,
and the training curves of rewards/margins and rewards/accuracies."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.report.formatting import NA, Table, ci, diff, fmt, missing
from workflow_scripts.report.preference_table import PARAMETERS, is_preference

LABELS = {"reward_accuracy": "reward accuracy", "reward_margin": "reward margin",
          "ranking_accuracy": "ranking accuracy (log π(c) > log π(r))",
          "chosen_logp_per_token": "chosen log-prob per token",
          "rejected_logp_per_token": "rejected log-prob per token",
          "desirable_reward": "desirable reward", "undesirable_reward": "undesirable reward",
          "desirable_logp_per_token": "desirable log-prob per token",
          "undesirable_logp_per_token": "undesirable log-prob per token"}
SYMBOLS = {"beta": "β", "gamma": "γ", "label_smoothing": "ε", "sft_weight": "sft",
           "desirable_weight": "w+", "undesirable_weight": "w−"}
# the study plot's panels: (metric, figure shown, the value of "no change", title); a KTO
# experiment's panel of chosen answers shows its desirable completions
PANELS = (("reward_accuracy", "policy", 0.5, "reward accuracy (start: 0.5)"),
          ("reward_margin", "policy", 0.0, "reward margin β·Δ (start: 0)"),
          ("chosen_logp_per_token", "difference", 0.0,
           "Δ log-prob per token of chosen\n(KTO: desirable) answers, policy − start"))
KTO_PANEL = {"chosen_logp_per_token": "desirable_logp_per_token"}
COLORS = {"better": "tab:green", "worse": "tab:red", "higher": "tab:blue", "lower": "tab:orange"}
CURVES = (("rewards/margins", "rewards/margins"), ("rewards/accuracies", "rewards/accuracies"))


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t") if path.is_file() and path.stat().st_size else pd.DataFrame()


def settings_label(row: dict) -> str:
    """"dpo β=0.1", with every other parameter the loss takes that is set and not 0."""
    parts = [f"{SYMBOLS[k]}={fmt(row.get(k), 3)}" for k in PARAMETERS
             if not missing(row.get(k)) and (k == "beta" or row.get(k) != 0)]
    return " ".join([str(row["loss"]), *parts])


def ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by starting point, then by loss and beta: a study reads down a group."""
    return table.sort_values(["start", "loss", "beta", "experiment"], kind="stable")


def results_table(table: pd.DataFrame) -> Table:
    out = Table(["experiment", "start", "loss", "pairs", "metric", "start value",
                 "policy [95% CI]", "policy − start [95% CI]", "p (Holm)", "verdict"])
    for row in ordered(table).to_dict("records"):
        out.rows.append([row["experiment"], row["start"], settings_label(row), fmt(row["n"]),
                         LABELS.get(row["metric"], row["metric"]), ci(row, "start_value"),
                         ci(row, "policy"), diff(row), fmt(row.get("p_holm")),
                         row["verdict"] if isinstance(row.get("verdict"), str) else NA])
    return out


def panel_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per experiment for a panel: `metric`, or its KTO counterpart."""
    kto = KTO_PANEL.get(metric, metric)
    picked = table[((table["kind"] != "kto") & (table["metric"] == metric))
                   | ((table["kind"] == "kto") & (table["metric"] == kto))]
    return ordered(picked)


def draw_study(table: pd.DataFrame, path: Path) -> None:
    """Per panel, each experiment's figure with its 95% interval, grouped by starting point;
    coloured by verdict (grey: no clear difference, or too few pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workflow_scripts.report.plots import error_bars, use_cjk_font

    use_cjk_font()
    count = table["experiment"].nunique()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 1.6 + 0.45 * count), sharey=True)
    for ax, (metric, column, still, title) in zip(axes, PANELS):
        rows = panel_rows(table, metric).reset_index(drop=True)
        y = np.arange(len(rows))
        bars = error_bars(rows[column], rows[f"{column}_low"], rows[f"{column}_high"])
        for i, row in rows.iterrows():
            ax.errorbar(row[column], y[i], xerr=bars[:, i:i + 1], fmt="o", capsize=3,
                        color=COLORS.get(row["verdict"], "tab:gray"))
        for i in np.flatnonzero(rows["start"].to_numpy()[1:] != rows["start"].to_numpy()[:-1]):
            ax.axhline(i + 0.5, color="lightgray", linewidth=0.8)
        ax.axvline(still, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{r['experiment']}\n(from {r['start']}: {settings_label(r)})"
                          for r in rows.to_dict("records")], fontsize="small")
        ax.set(title=title)
    axes[0].invert_yaxis()
    fig.suptitle("Preference experiments against their starting points, paired 95% intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_curves(log: pd.DataFrame, names: list[str], path: Path) -> None:
    """rewards/margins and rewards/accuracies against step, per experiment (validation: dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workflow_scripts.report.plots import no_data

    fig, axes = plt.subplots(1, len(CURVES), figsize=(12, 4))
    for ax, (column, title) in zip(axes, CURVES):
        for i, name in enumerate(names):
            rows = log[log["experiment"] == name] if "experiment" in log else log.iloc[0:0]
            color = f"C{i % 10}"
            if column in rows:
                train = rows.dropna(subset=[column])
                ax.plot(train["step"], train[column], color=color, linewidth=1.5, label=name)
            if f"eval_{column}" in rows:
                evals = rows.dropna(subset=[f"eval_{column}"])
                ax.plot(evals["step"], evals[f"eval_{column}"], "o", color=color, markersize=4)
        ax.set(xlabel="step", title=title)
        if ax.has_data():
            ax.legend(fontsize="small")
        else:
            no_data(ax)
    fig.suptitle("Preference training (line: training batches; dots: validation pairs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embedded(path: Path, caption: str) -> dict:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"path": f"plots/{path.name}", "caption": caption,
            "data_uri": f"data:image/png;base64,{data}"}


def preference_section(run: dict, metrics_dir: Path, plot_dir: Path) -> dict:
    """{"table": Table, "plots": [{path, caption, data_uri}]}; no rows and no plots when the
    run has no evaluated preference experiment."""
    table = read_table(metrics_dir / "preference.tsv")
    if table.empty:
        return {"table": Table([]), "plots": []}
    names = [n for n, c in run["experiments"].items() if is_preference(c)]
    draw_study(table, plot_dir / "preference_study.png")
    draw_curves(read_table(metrics_dir / "training_log.tsv"), names,
                plot_dir / "preference_training.png")
    return {"table": results_table(table), "plots": [
        embedded(plot_dir / "preference_study.png",
                 "Each preference experiment's reward accuracy and reward margin on the held-out "
                 "pairs, and the change of its chosen answers' log-prob per token, against its "
                 "starting point (grey lines separate starting points); bars are paired 95% "
                 "intervals; colours are the verdicts Holm's correction keeps: green better, "
                 "red worse, blue higher, orange lower, grey no clear difference."),
        embedded(plot_dir / "preference_training.png",
                 "rewards/margins and rewards/accuracies as training logged them (TRL's "
                 "definitions: ties count 0 in the accuracy), per experiment.")]}
