"""Preference evaluation: the figures on hand-made log-probs, and the job on a random tiny model
with random adapters (tests/random_chat_models.py) scoring hand-written pairs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from random_chat_models import random_adapter, random_base

from workflow_scripts.common.io_utils import read_json, read_jsonl, write_jsonl
from workflow_scripts.evaluation import bootstrap, preference_eval
from workflow_scripts.evaluation.preference_eval import preference_metrics

RESAMPLES = 200
PROMPTS = ["介绍一下北京。", "推荐一本书。", "如何保持健康？", "列出三种水果。", "描述一下秋天。",
           "什么是人工智能？", "怎样做番茄炒蛋？", "翻译：Good morning", "写一句关于春天的诗。"]


def pair(i: int, chosen: tuple[float, float], rejected: tuple[float, float],
         tokens: tuple[int, int] = (10, 10)) -> dict:
    """A preference_pairs.jsonl row: (start, policy) summed log-probs of each answer."""
    return {"id": f"p{i}", "chosen_tokens": tokens[0], "rejected_tokens": tokens[1],
            "start_chosen_logp": chosen[0], "chosen_logp": chosen[1],
            "start_rejected_logp": rejected[0], "rejected_logp": rejected[1]}


# The figures on constructed log-probs ----------------------------------------------------

def test_a_policy_equal_to_its_start_has_margin_zero_and_accuracy_one_half():
    rows = [pair(i, (-20.0 - i, -20.0 - i), (-25.0 + 2 * i, -25.0 + 2 * i)) for i in range(8)]
    m = preference_metrics(rows, "pairwise", beta=0.1, seed=0, resamples=RESAMPLES)
    # every reward is 0: each pair is a tie, worth a half
    assert m["reward_accuracy"]["policy"] == 0.5 == m["reward_accuracy"]["start"]
    assert m["reward_accuracy"]["difference"] == 0.0
    assert m["reward_margin"]["policy"] == 0.0 and m["reward_margin"]["p_value"] == 1.0
    for name in ("ranking_accuracy", "chosen_logp_per_token", "rejected_logp_per_token"):
        assert m[name]["difference"] == 0.0 and m[name]["policy"] == m[name]["start"]
        assert m[name]["verdict"] == bootstrap.UNCLEAR
    # ranking by the start's own log-probs: chosen above rejected in pairs 0 and 1, tie never
    assert m["ranking_accuracy"]["start"] == pytest.approx(2 / 8)


def test_pairwise_figures_on_a_constructed_case():
    beta = 0.5
    # pairs 0-5: chosen +2 nats, rejected -1 (margin 3); pair 6: both +1 (a tie of gains);
    # pair 7: chosen -1, rejected +1 (margin -2)
    gains = [(2.0, -1.0)] * 6 + [(1.0, 1.0), (-1.0, 1.0)]
    rows = [pair(i, (-30.0, -30.0 + gc), (-29.0, -29.0 + gr), tokens=(10, 20))
            for i, (gc, gr) in enumerate(gains)]
    m = preference_metrics(rows, "pairwise", beta=beta, seed=3, resamples=RESAMPLES)
    assert m["reward_accuracy"]["policy"] == pytest.approx((6 + 0.5) / 8)
    assert m["reward_accuracy"]["difference"] == pytest.approx((6 + 0.5) / 8 - 0.5)
    margins = [beta * (gc - gr) for gc, gr in gains]
    assert m["reward_margin"]["policy"] == pytest.approx(np.mean(margins))
    expected = bootstrap.mean_interval(margins, RESAMPLES, 3)
    assert (m["reward_margin"]["difference_low"], m["reward_margin"]["difference_high"],
            m["reward_margin"]["p_value"]) == (expected.low, expected.high, expected.p_value)
    # the start ranks rejected (-29) above chosen (-30) everywhere; the policy flips 6 pairs
    # (-28 > -30) and ties none: pair 6 is -29 vs -28, pair 7 -31 vs -28
    assert m["ranking_accuracy"]["start"] == 0.0
    assert m["ranking_accuracy"]["policy"] == pytest.approx(6 / 8)
    assert m["ranking_accuracy"]["difference"] == pytest.approx(6 / 8)
    # token-weighted: sum of the gains over the 10-token chosen answers
    assert m["chosen_logp_per_token"]["difference"] == pytest.approx(sum(g for g, _ in gains) / 80)
    assert m["chosen_logp_per_token"]["start"] == pytest.approx(-3.0)
    assert m["rejected_logp_per_token"]["difference"] == pytest.approx(
        sum(g for _, g in gains) / 160)
    for figures in m.values():
        assert figures["n"] == 8
        assert figures["difference_low"] <= figures["difference"] <= figures["difference_high"]
        assert 0 < figures["p_value"] <= 1
    assert m["reward_margin"]["verdict"] == bootstrap.BETTER
    assert m["chosen_logp_per_token"]["verdict"] == bootstrap.HIGHER


def test_a_falling_chosen_log_prob_reads_lower_even_with_a_positive_margin():
    # the known DPO failure: both answers lose, the rejected one more
    rows = [pair(i, (-20.0, -22.0 - 0.1 * i), (-20.0, -26.0)) for i in range(10)]
    m = preference_metrics(rows, "pairwise", beta=0.1, seed=0, resamples=RESAMPLES)
    assert m["reward_margin"]["verdict"] == bootstrap.BETTER
    assert m["chosen_logp_per_token"]["verdict"] == bootstrap.LOWER


def test_too_few_pairs_claim_nothing():
    rows = [pair(i, (-20.0, -10.0), (-20.0, -30.0)) for i in range(bootstrap.MIN_ITEMS - 1)]
    m = preference_metrics(rows, "pairwise", beta=0.1, seed=0, resamples=RESAMPLES)
    assert {f["verdict"] for f in m.values()} == {bootstrap.TOO_FEW}
    assert all(math.isnan(f["p_value"]) for f in m.values())


def kto_row(i: int, label: bool, start: float, policy: float, tokens: int = 5) -> dict:
    return {"id": f"k{i}", "label": label, "completion_tokens": tokens, "kl_tokens": 7,
            "start_completion_logp": start, "completion_logp": policy,
            "start_kl_logp": -40.0, "kl_logp": -41.0}


def test_kto_figures_sign_rewards_by_label():
    beta = 0.2
    # desirable completions gain 1, 1, 1, 1, 0 nats; undesirable ones lose 2, 2, 2 and one gains 1
    rows = ([kto_row(i, True, -10.0, -10.0 + g) for i, g in enumerate([1, 1, 1, 1, 0])]
            + [kto_row(5 + i, False, -12.0, -12.0 + g) for i, g in enumerate([-2, -2, -2, 1])])
    m = preference_metrics(rows, "kto", beta=beta, seed=1, resamples=RESAMPLES)
    assert set(m) == set(preference_eval.KTO_METRICS)
    assert m["reward_accuracy"]["policy"] == pytest.approx((4 + 0.5 + 3) / 9)
    signed = [beta * g for g in [1, 1, 1, 1, 0]] + [-beta * g for g in [-2, -2, -2, 1]]
    assert m["reward_margin"]["policy"] == pytest.approx(np.mean(signed))
    assert m["desirable_reward"]["policy"] == pytest.approx(beta * 4 / 5)
    assert m["desirable_reward"]["n"] == 5 and m["undesirable_reward"]["n"] == 4
    assert m["undesirable_reward"]["policy"] == pytest.approx(beta * -5 / 4)
    assert m["desirable_logp_per_token"]["difference"] == pytest.approx(4 / 25)
    # 4 undesirable completions: fewer than MIN_ITEMS, no claim
    assert m["undesirable_reward"]["verdict"] == bootstrap.TOO_FEW
    assert m["undesirable_logp_per_token"]["verdict"] == bootstrap.TOO_FEW


def test_kto_with_one_kind_only_leaves_the_other_empty():
    rows = [kto_row(i, True, -10.0, -9.0) for i in range(8)]
    m = preference_metrics(rows, "kto", beta=0.1, seed=0, resamples=RESAMPLES)
    assert m["undesirable_reward"]["n"] == 0 and math.isnan(m["undesirable_reward"]["policy"])
    assert m["undesirable_reward"]["verdict"] == bootstrap.TOO_FEW
    assert m["desirable_reward"]["verdict"] == bootstrap.BETTER


# The job on a real (tiny, random) model -------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference_eval")
    base = random_base(root / "base", hidden=32, layers=1)
    return {"root": root, "base": base,
            "start": random_adapter(base, root / "start", seed=1, trainable_tokens=False),
            "other": random_adapter(base, root / "other", seed=2, trainable_tokens=False)}


def write_pairs(data_dir, kto: bool) -> None:
    for split, prompts in (("train", PROMPTS[:3]), ("valid", PROMPTS[:2]), ("test", PROMPTS)):
        rows = []
        for i, prompt in enumerate(prompts):
            record = {"id": f"{split}-{i}", "messages": [{"role": "user", "content": prompt}]}
            if kto:
                record.update(completion=f"好的，第{i}个回答。" * (1 + i % 2), label=i % 3 != 0)
            else:
                record.update(chosen=f"这是一个好回答{i}。", rejected="不知道。" * (1 + i % 3))
            rows.append(record)
        write_jsonl(data_dir / f"{split}.pairs.jsonl", rows)


def prepared(models, kto: bool):
    """(tokenized dir, the start adapter's scores dir) for hand-written pairs."""
    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.training import reference_logps
    from workflow_scripts.training.preference_tokenize import tokenize_pairs

    root = models["root"] / ("kto" if kto else "pairs")
    write_pairs(root / "data", kto)
    tokenized = root / "tokenized"
    tokenize_pairs(root / "data", str(models["base"]), {"max_length": 96}, tokenized)
    reference = reference_logps.load_reference(str(models["base"]), str(models["start"]), None,
                                               False)
    reference_logps.score_splits(reference, load_tokenizer(str(models["base"])), tokenized,
                                 root / "start_scores", batch_size=4)
    return tokenized, root / "start_scores"


def run_job(models, tokenized, start_scores, adapter: str, out, beta=0.1, loss="dpo"):
    job = {"experiment": "pref", "start": "sft", "preference": {"loss": loss, "beta": beta},
           "quantization": None, "batch_size": 4, "seed": 0, "trust_remote_code": False}
    preference_eval.main(["--config", json.dumps(job), "--model-dir", str(models["base"]),
                          "--adapter-dir", str(models[adapter]), "--tokenized-dir", str(tokenized),
                          "--start-dir", str(start_scores), "--out-dir", str(out),
                          "--resamples", str(RESAMPLES)])
    return read_json(out / "preference.json"), list(read_jsonl(out / "preference_pairs.jsonl"))


def test_the_starting_adapter_itself_scores_no_preference(models, tmp_path):
    tokenized, start = prepared(models, kto=False)
    summary, rows = run_job(models, tokenized, start, "start", tmp_path)
    assert [r["id"] for r in rows] == [f"test-{i}" for i in range(len(PROMPTS))]
    assert all(r["chosen_logp"] == r["start_chosen_logp"] and
               r["rejected_logp"] == r["start_rejected_logp"] for r in rows)
    m = summary["metrics"]
    assert m["reward_margin"]["policy"] == 0.0 and m["reward_accuracy"]["policy"] == 0.5
    assert m["chosen_logp_per_token"]["difference"] == 0.0
    assert (summary["kind"], summary["n"], summary["tie"]) == ("pairwise", len(PROMPTS), 0.5)


def test_another_adapter_is_scored_against_the_start(models, tmp_path):
    tokenized, start = prepared(models, kto=False)
    summary, rows = run_job(models, tokenized, start, "other", tmp_path, beta=0.25)
    assert all(r["chosen_tokens"] > 0 and r["rejected_tokens"] > 0 for r in rows)
    assert any(r["chosen_logp"] != r["start_chosen_logp"] for r in rows)
    margins = [0.25 * ((r["chosen_logp"] - r["start_chosen_logp"])
                       - (r["rejected_logp"] - r["start_rejected_logp"])) for r in rows]
    m = summary["metrics"]
    assert m["reward_margin"]["policy"] == pytest.approx(np.mean(margins))
    assert set(m) == set(preference_eval.PAIRWISE_METRICS)
    for figures in m.values():
        assert figures["n"] == len(PROMPTS) and figures["p_value"] is not None
        assert figures["difference_low"] <= figures["difference"] <= figures["difference_high"]
    # the same figures from the pairs file (what collect_metrics recomputes)
    again = preference_metrics(rows, "pairwise", 0.25, 0, RESAMPLES)
    assert again["reward_margin"]["difference_low"] == m["reward_margin"]["difference_low"]


def test_kto_rows_carry_their_labels(models, tmp_path):
    tokenized, start = prepared(models, kto=True)
    summary, rows = run_job(models, tokenized, start, "other", tmp_path, loss="kto")
    assert [r["label"] for r in rows] == [i % 3 != 0 for i in range(len(PROMPTS))]
    assert {"completion_logp", "start_completion_logp", "kl_logp", "start_kl_logp"} <= set(rows[0])
    assert summary["kind"] == "kto" and set(summary["metrics"]) == set(preference_eval.KTO_METRICS)
    assert summary["metrics"]["desirable_reward"]["n"] == 6


def test_scores_of_other_rows_are_refused(models, tmp_path):
    tokenized, start = prepared(models, kto=False)
    import pyarrow.parquet as pq

    table = pq.read_table(start / "test.parquet")
    moved = tmp_path / "moved"
    moved.mkdir()
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), moved / "test.parquet")
    with pytest.raises(SystemExit, match="not the tokenized rows"):
        run_job(models, tokenized, moved, "other", tmp_path / "out")
