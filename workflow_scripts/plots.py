"""Report plots drawn from the tables in results/metrics/.

    python -m workflow_scripts.plots --metrics-dir results/metrics --out-dir results/report/plots

Rank plots are drawn only when some experiments differ in nothing but lora.r;
`expected_plots` says which files a set of experiments yields.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_scripts.collect_metrics import RANK_KEYS, groups_differing_only_in  # noqa: E402
from workflow_scripts.io_utils import read_json  # noqa: E402

EMA_ALPHA = 0.3
ALWAYS = ("training_loss", "eval_loss", "base_vs_finetuned")
RANK_PLOTS = ("rank_metrics", "rank_cost")


def expected_plots(experiments: dict[str, dict]) -> list[str]:
    """Names (without .png) of the plots `draw_all` writes for these experiments."""
    rank_study = bool(groups_differing_only_in(experiments, RANK_KEYS))
    return list(ALWAYS) + (list(RANK_PLOTS) if rank_study else [])


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(frame: pd.DataFrame, ax: plt.Axes, rotation: int) -> None:
    """Grouped bars, or a "no data" note for a table without rows."""
    if frame.empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        frame.plot.bar(ax=ax, rot=rotation)


def plot_training_loss(log: pd.DataFrame, path: Path) -> Path:
    """Raw training loss, faint, under its exponential moving average."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    train = log.dropna(subset=["loss"]) if "loss" in log else log.iloc[0:0]
    for i, (name, rows) in enumerate(train.groupby("experiment", sort=False)):
        color = f"C{i % 10}"
        ax.plot(rows["step"], rows["loss"], color=color, alpha=0.25, linewidth=1)
        smooth = rows["loss"].ewm(alpha=EMA_ALPHA).mean()
        ax.plot(rows["step"], smooth, color=color, linewidth=2, label=name)
    ax.set(xlabel="step", ylabel="training loss", title=f"Training loss (EMA alpha={EMA_ALPHA})")
    if ax.has_data():
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return save(fig, path)


def plot_eval_loss(experiments: pd.DataFrame, path: Path) -> Path:
    """Validation loss from training and test loss from evaluation, side by side."""
    table = experiments.set_index("experiment")[["eval_loss", "test_loss"]].astype(float)
    table.columns = ["validation loss (training)", "test loss (evaluation)"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars(table, ax, 30)
    ax.set(xlabel="", ylabel="loss", title="Evaluation loss per experiment")
    if not table.empty:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return save(fig, path)


def plot_base_vs_finetuned(comparison: pd.DataFrame, path: Path) -> Path:
    metrics = ["bleu4", "rougeL", "chrf"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 4.5), sharey=False)
    for ax, metric in zip(axes, metrics):
        rows = comparison[comparison["metric"] == metric].set_index("experiment")
        bars(rows[["base", "finetuned"]].astype(float), ax, 45)
        ax.set(title=metric, xlabel="", ylabel="score (0-100)")
        ax.tick_params(axis="x", labelsize="small")
    fig.suptitle("Base model vs fine-tuned")
    return save(fig, path)


def rank_tables(experiments: pd.DataFrame, configs: dict[str, dict]) -> list[pd.DataFrame]:
    """One table per group of experiments that differ only in rank, sorted by rank."""
    by_name = experiments.set_index("experiment")
    groups = groups_differing_only_in(configs, RANK_KEYS)
    return [by_name.loc[names].sort_values("r") for names in groups]


def plot_against_rank(groups: list[pd.DataFrame], columns: dict[str, str], title: str,
                      path: Path) -> Path:
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 4))
    for ax, (column, label) in zip(axes, columns.items()):
        for group in groups:
            first = group.iloc[0]
            ax.plot(group["r"], group[column].astype(float), marker="o",
                    label=f"{first['base_model']} / {first['dataset']}")
        ranks = sorted({int(r) for group in groups for r in group["r"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.minorticks_off()
        ax.set(xlabel="LoRA rank r", ylabel=label, title=label)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return save(fig, path)


def draw_all(metrics_dir: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    experiments = pd.read_csv(metrics_dir / "experiments.tsv", sep="\t")
    log = pd.read_csv(metrics_dir / "training_log.tsv", sep="\t")
    comparison = pd.read_csv(metrics_dir / "comparison.tsv", sep="\t")
    configs = read_json(metrics_dir / "experiments.json")
    paths = [plot_training_loss(log, out_dir / "training_loss.png"),
             plot_eval_loss(experiments, out_dir / "eval_loss.png"),
             plot_base_vs_finetuned(comparison, out_dir / "base_vs_finetuned.png")]
    groups = rank_tables(experiments, configs)
    if groups:
        quality = {"bleu4": "BLEU-4", "rougeL": "ROUGE-L", "final_loss": "final training loss"}
        cost = {"wall_time_s": "training time (s)", "peak_memory_mb": "peak memory (MB)"}
        paths.append(plot_against_rank(groups, quality, "Quality vs rank",
                                       out_dir / "rank_metrics.png"))
        paths.append(plot_against_rank(groups, cost, "Cost vs rank", out_dir / "rank_cost.png"))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-dir", default=Path("results/metrics"), type=Path)
    parser.add_argument("--out-dir", default=Path("results/report/plots"), type=Path)
    args = parser.parse_args(argv)
    draw_all(args.metrics_dir, args.out_dir)


if __name__ == "__main__":
    main()
