"""Statistics that hold: which differences get a verdict, what is resampled together, and
the family-wise error of the run's claims (evaluation/bootstrap.py, metric_intervals.py,
report/family.py, report/summary.py)."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from report_fixtures import SMALL_EXPERIMENT, build_small, run_pipeline, summary_lines

from workflow_scripts.common.io_utils import write_jsonl
from workflow_scripts.evaluation import metric_intervals
from workflow_scripts.evaluation.bootstrap import (UNCLEAR, Interval, cluster_mean_interval,
                                                   holm, mean_interval,
                                                   paired_cluster_mean_difference)
from workflow_scripts.evaluation.metric_intervals import EvalRun
from workflow_scripts.report import family, summary


def test_answer_length_is_shown_as_a_change_not_as_better_or_worse():
    longer, shorter = Interval(5.0, 2.0, 8.0, n=40), Interval(-5.0, -8.0, -2.0, n=40)
    assert metric_intervals.verdict("mean_answer_chars", longer) == "higher"
    assert metric_intervals.verdict("mean_answer_chars", shorter) == "lower"
    assert metric_intervals.verdict("mean_answer_chars", Interval(1, -1, 3, n=40)) == UNCLEAR
    assert metric_intervals.verdict("bleu4", longer) == "better"


def tool_run(path: Path, scores: list[int], conversations: list[str]) -> EvalRun:
    rows = [{"id": f"{c}#{i}", "conversation": c, **dict.fromkeys(
        ("tool_valid", "tool_name_correct", "tool_args_exact"), s)}
        for i, (s, c) in enumerate(zip(scores, conversations))]
    return EvalRun(path, {"tool_valid_share": float(np.mean(scores))}, [], [], rows)


def test_tool_call_intervals_resample_conversations_not_turns(tmp_path):
    # 8 conversations of 4 call turns each: a conversation's turns all succeed or all fail
    conversations = [f"c{i // 4}" for i in range(32)]
    scores = [int(i // 4 in (0, 2, 3, 6)) for i in range(32)]
    run = tool_run(tmp_path, scores, conversations)
    got = metric_intervals.interval(run, "tool_valid_share", seed=1)
    assert got == cluster_mean_interval(scores, conversations, seed=1)
    turns = mean_interval(scores, seed=1)  # as if the 32 turns were independent
    assert got.high - got.low > 1.5 * (turns.high - turns.low)
    base = tool_run(tmp_path, [0] * 32, conversations)
    diff, n = metric_intervals.paired_difference(base, run, "tool_valid_share", seed=1)
    assert n == 32 and diff == paired_cluster_mean_difference([0] * 32, scores, conversations,
                                                              seed=1)


def test_cluster_interval_of_independent_singletons_is_the_plain_interval():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    clustered = cluster_mean_interval(values, [str(i) for i in range(6)], seed=2)
    assert clustered.estimate == pytest.approx(4 / 6)
    assert clustered.low <= clustered.estimate <= clustered.high
    with pytest.raises(ValueError, match="6 values but 5 cluster ids"):
        cluster_mean_interval(values, list("abcde"))


def test_stopped_share_has_a_per_sample_interval(tmp_path):
    samples = [{"id": str(i), "prediction": "好", "reference": "好", "stopped": i % 3 != 0}
               for i in range(30)]
    run = EvalRun(tmp_path, {"stopped_share": 20 / 30}, samples, [], [])
    iv = metric_intervals.interval(run, "stopped_share", seed=0)
    assert iv.estimate == pytest.approx(20 / 30) and iv.low < iv.estimate < iv.high


def ar1_log(names: list[str], n: int = 100, phi: float = 0.95) -> pd.DataFrame:
    """Training logs that wander (autocorrelated noise) around a flat loss of 3."""
    rng, frames = np.random.default_rng(5), []
    for name in names:
        x, noise = np.zeros(n), rng.normal(scale=0.05, size=n)
        for i in range(1, n):
            x[i] = phi * x[i - 1] + noise[i]
        frames.append(pd.DataFrame({"experiment": name, "step": np.arange(1, n + 1) * 5,
                                    "loss": 3.0 + x}))
    return pd.concat(frames, ignore_index=True)


def test_no_trend_is_claimed_from_autocorrelated_training_losses():
    names = [f"e{i}" for i in range(8)]
    sentence = summary.trend_sentence(pd.DataFrame({"experiment": names}), ar1_log(names))
    for claim in ("falling", "rising", "flat"):
        assert claim not in sentence
    assert "not tested" in sentence and "autocorrelated" in sentence
    log = ar1_log(["e0"])
    later, earlier = log["loss"].iloc[-20:].mean(), log["loss"].iloc[-40:-20].mean()
    assert summary.loss_trend(log, "e0") == pytest.approx((earlier, later))


def test_holm_matches_the_textbook_procedure():
    adjusted = holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])


def paired(verdicts: list[str], p: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"experiment": [f"e{i}" for i in range(len(p))], "verdict": verdicts,
                         "p_value": p})


def test_claims_across_tables_keep_the_family_wise_error():
    # 20 comparisons: one clear, one marginal (p = 0.02 alone, not after 20 tests)
    comparison = paired(["better", "worse"] + [UNCLEAR] * 15 + ["not tested"],
                        [1e-6, 0.02] + [0.5] * 15 + [float("nan")])
    ranking = paired(["worse", UNCLEAR], [0.001, 0.3])
    tested = family.control({"comparison": comparison, "ranking": ranking})
    assert list(tested["comparison"]["verdict"][:2]) == ["better", UNCLEAR]
    assert tested["comparison"]["verdict"].iloc[-1] == "not tested"
    assert tested["ranking"]["verdict"].iloc[0] == "worse"
    assert tested["ranking"]["p_holm"].iloc[0] == pytest.approx(0.001 * 18)
    assert family.family_size(list(tested.values())) == 19
    sentence = summary.family_sentence(tested)
    assert sentence.startswith("This report makes 19 paired comparisons")
    assert "2 better/worse claims remain after Holm's correction" in sentence


def test_p_values_come_with_paired_intervals():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    clear = metric_intervals.bootstrap.paired_mean_difference(base, base + 1.0 + 0.1 * rng.normal(size=40))
    noise = metric_intervals.bootstrap.paired_mean_difference(base, base + rng.normal(size=40))
    assert clear.p_value < 1e-10 and clear.excludes_zero()
    assert noise.p_value > 0.05 and not noise.excludes_zero()


def test_the_judge_joins_the_family_in_the_summary():
    comparison = paired(["better", UNCLEAR], [1e-6, 0.5])
    judge = paired(["better"], [1e-4]).assign(criterion="win_rate")
    tested = family.control({"comparison": comparison, "judge": judge})
    sentence = summary.family_sentence(tested)
    assert sentence.startswith("This report makes 3 paired comparisons")
    assert "the judge's win rates and scores" in sentence


def test_general_text_and_benchmarks_are_in_the_one_family(tmp_path):
    run = build_small(tmp_path, samples=8)
    base_dir = tmp_path / run["experiments"][SMALL_EXPERIMENT]["base_eval"]
    tuned_dir = tmp_path / "results" / "eval" / SMALL_EXPERIMENT
    for directory, right, loss in ((base_dir, 20, 3.0), (tuned_dir, 26, 3.2)):
        # 40 questions: the adapter also gets 6 more right (alone p ~ 0.008)
        write_jsonl(directory / "benchmarks.jsonl",
                    [{"benchmark": "exam", "id": f"q{i}", "acc": float(i < right)}
                     for i in range(40)])
        write_jsonl(directory / "general_text.jsonl",
                    [{"text": "wiki", "id": f"w{i}", "loss_sum": (loss + 0.1 * (i % 3)) * 20,
                      "n_tokens": 20} for i in range(30)])
    results = run_pipeline(tmp_path)
    bench = pd.read_csv(results / "metrics" / "benchmarks.tsv", sep="\t").iloc[0]
    assert bench["difference_low"] > 0 and bench["p_value"] < 0.05 < bench["p_holm"]
    assert bench["verdict"] == UNCLEAR  # a marginal gain the whole run's family does not keep
    general = pd.read_csv(results / "metrics" / "general_text.tsv", sep="\t").iloc[0]
    assert general["p_holm"] < 0.05 and general["verdict"] == "worse"  # the cost: forgetting
    tables = [pd.read_csv(results / "metrics" / f"{name}.tsv", sep="\t") for name in
              ("comparison", "ranking", "quantization", "general_text", "benchmarks")]
    n = sum(int(t["p_holm"].notna().sum()) for t in tables)
    line = next(x for x in summary_lines((results / "report" / "training_report.md")
                                         .read_text(encoding="utf-8")) if "paired comp" in x)
    assert line.startswith(f"This report makes {n} paired comparisons")
    assert "general-text losses" in line and "benchmark accuracies" in line
