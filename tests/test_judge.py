"""The judge (evaluation/judge.py) against a real OpenAI-compatible server on a loopback
port (tests/judge_server.py), through the real `openai` client: pairwise in both orders,
cached, unparseable replies counted, a failing judge reported with nothing lost, the key
never written; and end to end in the workflow (judge jobs, judge.tsv, the report)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from judge_server import JudgeServer, start
from report_fixtures import SMALL_EXPERIMENT, build_small, run_pipeline

from workflow_scripts.common.io_utils import read_jsonl, write_json, write_jsonl
from workflow_scripts.evaluation import judge
from workflow_scripts.evaluation.bootstrap import MIN_ITEMS, TOO_FEW
from workflow_scripts.evaluation.judge import CRITERIA, TEMPLATE, parse
from workflow_scripts.report.judge_table import judge_rows

KEY_ENV, KEY = "LORA_ZH_TEST_JUDGE_KEY", "sk-test-not-a-real-key-7f3a"


@pytest.fixture(scope="module")
def server():
    judge = JudgeServer(KEY)
    uv = start(judge)
    yield judge
    uv.should_exit = True


def run_judge(server: JudgeServer, model: str, root: Path, *extra: str):
    config = {"base_url": server.url, "model": model, "api_key_env": KEY_ENV}
    env = {**os.environ, KEY_ENV: KEY}
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.evaluation.judge", "--config",
         json.dumps(config), "--base-eval", str(root / "base"), "--eval", str(root / "tuned"),
         "--cache-dir", str(root / "cache"), "--out", str(root / "judgments.jsonl"),
         "--backoff-s", "0.01", *extra], capture_output=True, text=True, env=env)


@pytest.fixture
def evals(tmp_path) -> Path:
    """A base and a fine-tuned evaluation with 5 shared prompts (and one the base lacks)."""
    base = [{"id": f"p{i}", "prompt": f"问题{i}", "prediction": "好" * (i + 1)} for i in range(5)]
    tuned = [{"id": f"p{i}", "prompt": f"问题{i}", "prediction": "好的" * (i % 3)}
             for i in range(6)]
    for name, rows in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "predictions.jsonl", rows)
    return tmp_path


def test_replies_parse_only_in_the_asked_shape():
    good = '{"A": {"relevance": 7, "fluency": 8, "instruction_following": 6}, ' \
           '"B": {"relevance": 3, "fluency": 4.5, "instruction_following": 2}, "winner": "a"}'
    assert parse("评审结果：" + good + " 以上。") == {
        "A": {"relevance": 7.0, "fluency": 8.0, "instruction_following": 6.0},
        "B": {"relevance": 3.0, "fluency": 4.5, "instruction_following": 2.0}, "winner": "A"}
    assert parse(good.replace('"a"', '"Tie"'))["winner"] == "tie"
    for bad in ("A 更好", good.replace("7", "11"), good.replace('"a"', '"C"'),
                good.replace('"fluency": 8, ', ""), good[:-5], good.replace("6", "0")):
        assert parse(bad) is None, bad
    example = TEMPLATE.rsplit("\n", 1)[-1].replace("{{", "{").replace("}}", "}")
    assert '"winner": "A"' in example and parse(example) is None  # asked 1-10, echoed 0


def test_both_orders_judged_then_cached(server, evals):
    before = server.count("judge-fair")
    first = run_judge(server, "judge-fair", evals)
    assert first.returncode == 0, first.stderr
    rows = list(read_jsonl(evals / "judgments.jsonl"))
    assert sorted((r["id"], r["order"]) for r in rows) == sorted(
        (f"p{i}", o) for i in range(5) for o in ("base_first", "finetuned_first"))
    assert server.count("judge-fair") - before == 10
    shown = {(c["A"], c["B"]) for c in server.calls[before:]}
    assert ("好好好", "好的好的") in shown and ("好的好的", "好好好") in shown  # both orders
    p4 = {r["order"]: r for r in rows if r["id"] == "p4"}  # base 好好好好好, fine-tuned 好的
    assert p4["base_first"]["winner"] == p4["finetuned_first"]["winner"] == "base"
    assert p4["finetuned_first"]["scores"] == {"base": dict.fromkeys(CRITERIA, 7.0),
                                               "finetuned": dict.fromkeys(CRITERIA, 4.0)}
    assert json.loads(first.stdout) == {"judgments": 10, "new_calls": 10, "from_cache": 0,
                                        "unparseable": 0, "truncated": 0, "refused": 0}
    again = run_judge(server, "judge-fair", evals)
    assert server.count("judge-fair") - before == 10  # no new call
    assert json.loads(again.stdout)["from_cache"] == 10
    assert [{k: v for k, v in r.items() if k != "cached"} for r in
            read_jsonl(evals / "judgments.jsonl")] == [
        {k: v for k, v in r.items() if k != "cached"} for r in rows]


def test_unparseable_replies_are_counted_and_kept(server, evals):
    done = run_judge(server, "judge-garbage", evals)
    assert done.returncode == 0, done.stderr
    rows = list(read_jsonl(evals / "judgments.jsonl"))
    bad = [r for r in rows if r["status"] == "unparseable"]
    assert len(rows) == 10 and len(bad) == 5 and json.loads(done.stdout)["unparseable"] == 5
    assert all(r["reply"] == "我觉得 A 更好，因为它更长。" for r in bad)


def test_a_failing_judge_is_an_error_naming_it_and_keeps_what_it_judged(server, evals):
    server.healthy_calls = 3 + server.count("judge-flaky")
    failed = run_judge(server, "judge-flaky", evals, "--workers", "1", "--attempts", "3")
    assert failed.returncode != 0 and not (evals / "judgments.jsonl").exists()
    assert f"judge 'judge-flaky' at {server.url} failed 3 times; last: HTTP 503" in failed.stderr
    assert len(list((evals / "cache").rglob("*.json"))) == 3  # the replies it gave are kept
    server.healthy_calls = 10**9
    before = server.count("judge-flaky")
    assert run_judge(server, "judge-flaky", evals).returncode == 0
    assert server.count("judge-flaky") - before == 7  # only what was missing
    slow = run_judge(server, "judge-slow", evals, "--attempts", "2", "--timeout-s", "0.5")
    assert slow.returncode != 0 and "failed 2 times; last: APITimeoutError" in slow.stderr


def rows_by_status(root: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in read_jsonl(root / "judgments.jsonl"):
        found.setdefault(row["status"], []).append(row)
    return found


def test_a_judge_echoing_the_format_example_is_unparseable(server, evals):
    done = run_judge(server, "judge-echo", evals)
    assert done.returncode == 0, done.stderr
    assert list(rows_by_status(evals)) == ["unparseable"]  # not 0/0/0 with "A" winning
    assert json.loads(done.stdout)["unparseable"] == 10


def test_a_refused_item_is_recorded_and_the_job_goes_on(server, evals):
    before = server.count("judge-filters")
    done = run_judge(server, "judge-filters", evals)
    assert done.returncode == 0, done.stderr
    statuses = rows_by_status(evals)
    assert {(r["id"], r["reason"]) for r in statuses["refused"]} == {("p3", "content_filter")}
    assert len(statuses["refused"]) == 2 and len(statuses["ok"]) == 8
    again = run_judge(server, "judge-filters", evals)  # reruns succeed, asking only p3 again
    assert again.returncode == 0 and server.count("judge-filters") - before == 12
    assert json.loads(again.stdout) == {"judgments": 10, "new_calls": 2, "from_cache": 8,
                                             "unparseable": 0, "truncated": 0, "refused": 2}
    write_jsonl(evals / "results" / "eval" / "tuned" / "judgments.jsonl",
                list(read_jsonl(evals / "judgments.jsonl")))
    run = {"experiments": {"tuned": {"base_model": "m", "dataset": "d"}},
           "judge": {"model": "judge-filters"}}
    win = judge_rows(run, evals / "results", seed=0, resamples=50)[0]
    assert (win["criterion"], win["n"], win["judgments"], win["refused"],
            win["unparseable"]) == ("win_rate", 4, 10, 2, 0)
    # an empty reply is asked again (a hiccup?), then recorded as a refusal too
    before = server.count("judge-empty")
    empty = run_judge(server, "judge-empty", evals, "--attempts", "3")
    assert empty.returncode == 0, empty.stderr
    assert {r["reason"] for r in rows_by_status(evals)["refused"]} == {"empty reply"}
    assert server.count("judge-empty") - before == 8 + 2 * 3
    # a judge that refuses everything: every item recorded, the job still ends
    refuses = run_judge(server, "judge-refuses", evals)
    assert refuses.returncode == 0 and json.loads(refuses.stdout)["refused"] == 10


def test_a_reply_cut_at_the_token_limit_is_asked_again_and_not_cached(server, evals):
    before = len(server.calls)
    done = run_judge(server, "judge-verbose", evals)
    assert done.returncode == 0 and list(rows_by_status(evals)) == ["ok"]
    asked = [c["max_tokens"] for c in server.calls[before:]]
    assert sorted(asked) == [512] * 10 + [2048] * 10  # each cut reply asked with more room
    before = server.count("judge-cut")
    cut = run_judge(server, "judge-cut", evals)
    assert cut.returncode == 0 and json.loads(cut.stdout)["truncated"] == 10
    assert run_judge(server, "judge-cut", evals).returncode == 0
    assert server.count("judge-cut") - before == 2 * 20  # nothing cached: asked again


def test_a_report_whose_judge_never_parsed(server, tmp_path, monkeypatch):
    # a weak judge model, 8 of 8 replies unparseable: the tables and the report say so
    run = build_small(tmp_path, samples=4)
    tuned = tmp_path / "results" / "eval" / SMALL_EXPERIMENT
    config = {"base_url": server.url, "model": "judge-echo", "api_key_env": KEY_ENV}
    monkeypatch.setenv(KEY_ENV, KEY)
    judge.main(["--config", json.dumps(config), "--base-eval",
                str(tmp_path / run["experiments"][SMALL_EXPERIMENT]["base_eval"]), "--eval",
                str(tuned), "--cache-dir", str(tmp_path / "cache"), "--out",
                str(tuned / "judgments.jsonl")])
    write_json(tmp_path / "run.json", run | {"judge": config})
    results = run_pipeline(tmp_path)
    table = pd.read_csv(results / "metrics" / "judge.tsv", sep="\t")
    row = table.iloc[0]
    assert len(table) == 1 and (row["criterion"], row["n"]) == ("win_rate", 0)
    assert (row["judgments"], row["unparseable"], row["verdict"]) == (8, 8, TOO_FEW)
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert "### Judged by judge-echo" in md
    assert f"| {TOO_FEW} | 0 | 8 of 8 | 0 of 8 |" in md


def test_the_cache_tells_endpoints_apart(server, evals):
    assert run_judge(server, "judge-fair", evals).returncode == 0
    other = JudgeServer(KEY)  # another endpoint serving a model of the same name
    uv = start(other)
    try:
        assert run_judge(other, "judge-fair", evals).returncode == 0
        assert other.count("judge-fair") == 10
    finally:
        uv.should_exit = True


def test_the_key_comes_from_the_environment_only(server, evals):
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    config = json.dumps({"base_url": server.url, "model": "judge-fair", "api_key_env": KEY_ENV})
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.evaluation.judge",
                           "--config", config, "--base-eval", str(evals / "base"), "--eval",
                           str(evals / "tuned"), "--cache-dir", str(evals / "c"), "--out",
                           str(evals / "j.jsonl")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and f"environment variable {KEY_ENV}" in proc.stderr
    run_judge(server, "judge-fair", evals)
    assert not any(KEY.encode() in p.read_bytes() for p in evals.rglob("*") if p.is_file())


def judge_config(workflow, server: JudgeServer, model: str) -> None:
    config = yaml.safe_load(workflow.config.read_text())
    config["judge"] = {"base_url": server.url, "model": model, "api_key_env": KEY_ENV}
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True))


def test_judge_end_to_end_in_the_workflow(smoke_run, server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    flow = smoke_run.clone(tmp_path)
    judge_config(flow, server, "judge-fair")
    planned = flow.planned_jobs()
    assert planned.pop("judge") == len(list((flow.workdir / "results" / "eval").glob(
        "*/predictions.jsonl")))
    assert set(planned) <= {"snapshot_config", "collect_metrics", "render_report", "all"}
    before = server.count("judge-fair")
    flow.run("--cores", "1")  # one judge job at a time: experiments share answers to ask once
    results = flow.workdir / "results"
    judgments = {p.parent.name: list(read_jsonl(p)) for p in results.glob("eval/*/judgments.jsonl")}
    for name, rows in judgments.items():  # both orders of every prompt both models answered
        ids = {r["id"] for r in read_jsonl(results / "eval" / name / "predictions.jsonl")}
        assert sorted((r["id"], r["order"]) for r in rows) == sorted(
            (i, o) for i in ids for o in ("base_first", "finetuned_first"))
    n = sum(len(rows) for rows in judgments.values())
    asked = len(list((results / "judge_cache").rglob("*.json")))  # distinct pairs
    assert 0 < asked <= n and server.count("judge-fair") - before == asked
    table = pd.read_csv(results / "metrics" / "judge.tsv", sep="\t")
    assert set(table["experiment"]) == set(judgments)
    assert set(table["criterion"]) == {"win_rate", *CRITERIA}
    assert (table["unparseable"] == 0).all() and (table["refused"] == 0).all()
    # the smoke config answers 4 or 2 prompts: each in Holm's family only from 6 prompts on
    assert ((table["n"] < MIN_ITEMS) == (table["verdict"] == TOO_FEW)).all()
    assert (table["p_holm"].notna() == (table["n"] >= MIN_ITEMS)).all()
    for name, rows in judgments.items():
        assert (table.loc[table["experiment"] == name, "judgments"] == len(rows)).all()
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert "### Judged by judge-fair" in md and "win rate (fine-tuned)" in md
    # re-judging everything hits the cache: not one new call, even with jobs side by side
    flow.run("--cores", "2", "--forcerun", "judge", "--until", "judge")
    assert server.count("judge-fair") - before == asked
    # a judge whose replies do not parse: counted in the table and the report
    judge_config(flow, server, "judge-garbage")
    flow.run("--cores", "2")
    table = pd.read_csv(results / "metrics" / "judge.tsv", sep="\t")
    assert table["unparseable"].sum() > 0 and (table["judgments"] > 0).all()
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert "### Judged by judge-garbage" in md
    secrets = [p for p in flow.workdir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert secrets == []
