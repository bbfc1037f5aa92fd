"""Report plots drawn from the tables in results/metrics/.

    python -m workflow_scripts.report.plots --metrics-dir results/metrics --out-dir results/report/plots

Error bars are the 95% bootstrap intervals of collect_metrics. Rank plots are drawn for rank
studies (sweeps varying lora.r), the method plot for LoRA-vs-QLoRA studies;
`expected_plots` says which files a studies table yields.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.report.memory_columns import memory_panels  # noqa: E402
from workflow_scripts.report.studies import METHOD, RANK  # noqa: E402

ALWAYS = ("training_loss", "test_loss", "base_vs_finetuned")
SMOOTH_SHARE = 0.1  # the loss curve is a centred mean over 10% of the logged steps
VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red"}
UNCLEAR_COLOR = "tab:gray"
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "AR PL UMing CN")


def use_cjk_font() -> str | None:
    """Put an installed CJK font first, so Chinese dataset or model names draw as text
    (Debian: fonts-noto-cjk); without one, matplotlib draws boxes for those characters."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_FONTS if name in installed), None)
    if found:
        plt.rcParams["font.sans-serif"] = [found, *plt.rcParams["font.sans-serif"]]
    return found


def expected_plots(studies: pd.DataFrame) -> list[str]:
    """Names (without .png) of the plots `draw_all` writes for these studies."""
    kinds = set(studies["kind"]) if not studies.empty else set()
    return (list(ALWAYS) + (["rank_metrics", "rank_cost"] if RANK in kinds else [])
            + (["method_cost"] if METHOD in kinds else []))


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def no_data(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def smooth(losses: pd.Series) -> pd.Series:
    """Centred rolling mean: each step's loss is one small batch's and jumps from step to step."""
    window = max(1, int(round(len(losses) * SMOOTH_SHARE)))
    return losses.rolling(window, center=True, min_periods=1).mean()


def plot_training_loss(log: pd.DataFrame, experiments: pd.DataFrame, path: Path) -> Path:
    """One panel per (dataset, base model): smoothed training loss, raw faint, eval dots."""
    groups = list(experiments.groupby(["dataset", "base_model"], sort=True))
    groups = groups or [(("", ""), experiments)]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, ((dataset, model), members) in zip(axes[0], groups):
        for i, name in enumerate(members["experiment"]):
            rows = log[log["experiment"] == name] if not log.empty else log
            train = rows.dropna(subset=["loss"]) if "loss" in rows else rows.iloc[0:0]
            if train.empty:
                continue
            color = f"C{i % 10}"
            ax.plot(train["step"], train["loss"], color=color, alpha=0.2, linewidth=0.8)
            ax.plot(train["step"], smooth(train["loss"]), color=color, linewidth=2, label=name)
            if "eval_loss" in rows:
                evals = rows.dropna(subset=["eval_loss"])
                ax.plot(evals["step"], evals["eval_loss"], "o", color=color, markersize=4)
        ax.set(xlabel="step", ylabel="loss", title=f"{dataset} / {model}".strip(" /"))
        if ax.has_data():
            ax.legend(fontsize="small")
        else:
            no_data(ax)
    fig.suptitle("Training loss (line: centred mean over 10% of steps; dots: validation loss)")
    return save(fig, path)


def error_bars(values: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """matplotlib's yerr/xerr from an interval; missing bounds give no bar."""
    lower = (values - low).fillna(0).clip(lower=0)
    upper = (high - values).fillna(0).clip(lower=0)
    return np.vstack([lower.to_numpy(float), upper.to_numpy(float)])


def plot_base_vs_finetuned(comparison: pd.DataFrame, path: Path) -> Path:
    """Paired difference to the base per experiment, coloured by the verdict."""
    metrics = {"loss": "Δ test loss (lower is better)", "bleu4": "Δ BLEU-4",
               "rougeL": "Δ ROUGE-L"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 1.2 + 0.45 * max(
        1, comparison["experiment"].nunique() if not comparison.empty else 1)), sharey=True)
    for ax, (metric, label) in zip(axes, metrics.items()):
        rows = comparison[comparison["metric"] == metric].dropna(subset=["difference"]) \
            if not comparison.empty else comparison
        if rows.empty:
            no_data(ax)
            continue
        y = np.arange(len(rows))
        colors = [VERDICT_COLORS.get(v, UNCLEAR_COLOR) for v in rows["verdict"]]
        xerr = error_bars(rows["difference"], rows["difference_low"], rows["difference_high"])
        for i in range(len(rows)):
            ax.errorbar(rows["difference"].iloc[i], y[i], xerr=xerr[:, i:i + 1], fmt="o",
                        color=colors[i], capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, rows["experiment"])
        ax.invert_yaxis()
        ax.set(title=label, xlabel="fine-tuned − base")
    fig.suptitle("Fine-tuned vs base, paired 95% intervals "
                 "(green better, red worse, grey no clear difference)")
    return save(fig, path)


def plot_test_loss(ranking: pd.DataFrame, path: Path) -> Path:
    """Test loss with its interval per experiment, one panel per (dataset, base model),
    ordered as ranked; experiments clearly worse than the first are drawn grey."""
    groups = list(ranking.groupby(["dataset", "base_model"], sort=True)) if not ranking.empty \
        else [(("", ""), ranking)]
    height = 1.2 + 0.4 * max(len(g) for _, g in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), height), squeeze=False)
    for ax, ((dataset, model), group) in zip(axes[0], groups):
        if group.empty:
            no_data(ax)
            continue
        group = group.sort_values("position")
        y = np.arange(len(group))
        colors = ["tab:gray" if v == "worse" else "tab:blue" for v in group["verdict"]]
        xerr = error_bars(group["test_loss"], group["test_loss_low"], group["test_loss_high"])
        for i in range(len(group)):
            ax.errorbar(group["test_loss"].iloc[i], y[i], xerr=xerr[:, i:i + 1], fmt="o",
                        color=colors[i], capsize=3)
        ax.set_yticks(y, group["experiment"])
        ax.invert_yaxis()
        ax.set(title=f"{dataset} / {model}", xlabel="test loss")
    fig.suptitle("Test loss with 95% intervals (blue: lowest, or not clearly higher than it)")
    return save(fig, path)


def study_members(studies: pd.DataFrame, experiments: pd.DataFrame,
                  kind: str) -> list[pd.DataFrame]:
    by_name = experiments.set_index("experiment", drop=False)
    return [by_name.loc[list(members["experiment"])].assign(study=study)
            for study, members in studies[studies["kind"] == kind].groupby("study", sort=False)]


def plot_against_rank(groups: list[pd.DataFrame], columns: dict[str, str], title: str,
                      path: Path) -> Path:
    """Each column against rank, one line per rank study; error bars where intervals exist."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
    for ax, (column, label) in zip(axes[0], columns.items()):
        for group in groups:
            group = group.sort_values("r")
            values = group[column].astype(float)
            yerr = (error_bars(values, group[f"{column}_low"], group[f"{column}_high"])
                    if f"{column}_low" in group else None)
            ax.errorbar(group["r"], values, yerr=yerr, marker="o", capsize=3,
                        label=group["study"].iloc[0])
        ranks = sorted({int(r) for group in groups for r in group["r"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.minorticks_off()
        ax.set(xlabel="LoRA rank r", title=label)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return save(fig, path)


def plot_method_cost(groups: list[pd.DataFrame], path: Path) -> Path:
    """Memory, time and test loss (with interval) per member of each LoRA-vs-QLoRA study."""
    frame = pd.concat(groups)
    labels = [f"{m}\n({s})" for m, s in zip(frame["method"], frame["study"])]
    x = np.arange(len(frame))
    panels = memory_panels(frame) | {"wall_time_s": "training time (s)", "test_loss": "test loss"}
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.8))
    for ax, (column, label) in zip(axes, panels.items()):
        values = frame[column].astype(float)
        yerr = (error_bars(values, frame[f"{column}_low"], frame[f"{column}_high"])
                if f"{column}_low" in frame else None)
        ax.bar(x, values, yerr=yerr, capsize=4, color=[f"C{i % 10}" for i in range(len(x))])
        ax.set_xticks(x, labels, fontsize="small")
        ax.set(title=label)
    fig.suptitle("LoRA vs QLoRA: cost and test loss")
    return save(fig, path)


def draw_all(metrics_dir: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    use_cjk_font()
    read = lambda name: pd.read_csv(metrics_dir / f"{name}.tsv", sep="\t")  # noqa: E731
    experiments, log, comparison, studies, ranking = (read(n) for n in (
        "experiments", "training_log", "comparison", "studies", "ranking"))
    paths = [plot_training_loss(log, experiments, out_dir / "training_loss.png"),
             plot_test_loss(ranking, out_dir / "test_loss.png"),
             plot_base_vs_finetuned(comparison, out_dir / "base_vs_finetuned.png")]
    if RANK in set(studies["kind"]):
        groups = study_members(studies, experiments, RANK)
        quality = {"test_loss": "test loss", "bleu4": "BLEU-4", "rougeL": "ROUGE-L"}
        cost = {"wall_time_s": "training time (s)", **memory_panels(pd.concat(groups)),
                "trainable_params": "trainable parameters"}
        paths.append(plot_against_rank(groups, quality, "Quality vs rank (95% intervals)",
                                       out_dir / "rank_metrics.png"))
        paths.append(plot_against_rank(groups, cost, "Cost vs rank", out_dir / "rank_cost.png"))
    if METHOD in set(studies["kind"]):
        paths.append(plot_method_cost(study_members(studies, experiments, METHOD),
                                      out_dir / "method_cost.png"))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--metrics-dir", default=Path("results/metrics"), type=Path,
                        help="collect_metrics' tables")
    parser.add_argument("--out-dir", default=Path("results/report/plots"), type=Path,
                        help="where the PNG figures go")
    args = parser.parse_args(argv)
    draw_all(args.metrics_dir, args.out_dir)


if __name__ == "__main__":
    main()
