"""Judge a fine-tuned model's generated answers against its base's, pairwise, in both orders.

    python -m workflow_scripts.evaluation.judge --config '{"base_url": ..., "model": ...,
        "api_key_env": ...}' --base-eval results/eval/base/M/D/KEY --eval results/eval/EXP \\
        --cache-dir results/judge_cache --out results/eval/EXP/judgments.jsonl

For every test prompt both models answered (predictions.jsonl, same ids), the judge sees the
question and the two answers as A and B, once with the base's answer first and once with the
fine-tuned one first (a judge that prefers a position then cancels out), and scores each
answer out of 10 on relevance (对话相关性), fluency (中文流畅度) and instruction following
(指令跟随度), and names the better one. Replies are cached (judge_client.ReplyCache, keyed
by endpoint, model, template and the pair shown), so a rerun or a new experiment calls the
judge only for pairs it has not seen. A reply that does not parse (not the asked JSON, a
score outside 1-10, the prompt's own all-zero example echoed back) is kept as
"unparseable" with its text, never dropped. A reply cut at the token limit that does not
parse is asked once more with four times the tokens, and if still cut is kept as
"truncated" and not cached, so the next run asks again. A refusal (a content filter, an
empty reply) is kept as "refused" with its reason and not cached: the job goes on. A judge
that keeps failing (timeouts, HTTP errors) stops the job with an error naming the endpoint;
the replies it gave stay in the cache.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_jsonl, write_jsonl
from workflow_scripts.evaluation.judge_client import MAX_TOKENS, Judge, JudgeError, Reply, ReplyCache

CRITERIA = {"relevance": "对话相关性", "fluency": "中文流畅度",
            "instruction_following": "指令跟随度"}
ORDERS = {"base_first": ("base", "finetuned"), "finetuned_first": ("finetuned", "base")}
SYSTEM = ("你是一名公正、严格的中文对话质量评审。你会看到一个用户问题和两个助手回答（A 和 B）。"
          "回答的先后顺序是随机的，不代表质量。")
TEMPLATE = """用户问题：
{question}

回答 A：
{first}

回答 B：
{second}

请分别从以下三个方面为回答 A 和回答 B 打分，每项 1 到 10 分的整数：
- relevance（对话相关性）：回答是否切题、回应了问题；
- fluency（中文流畅度）：中文是否通顺、自然、没有重复和乱码；
- instruction_following（指令跟随度）：是否按问题的要求完成了任务。
然后判断哪个回答整体更好（"A"、"B" 或 "tie"）。
只输出一个 JSON 对象，不要输出其他内容，格式如下：
{{"A": {{"relevance": 0, "fluency": 0, "instruction_following": 0}}, "B": {{"relevance": 0, "fluency": 0, "instruction_following": 0}}, "winner": "A"}}"""
TEMPLATE_ID = hashlib.sha256((SYSTEM + TEMPLATE).encode()).hexdigest()[:12]


def messages(question: str, first: str, second: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": TEMPLATE.format(question=question, first=first or "（空）",
                                                       second=second or "（空）")}]


def parse(text: str) -> dict | None:
    """{"A": {criterion: score}, "B": {...}, "winner": "A"|"B"|"tie"} from the first JSON
    object in `text` that has that shape (scores 1-10, as asked), else None: the prompt's
    format example (all scores 0) echoed back does not parse."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text or ""):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and _valid(obj):
            return {"A": {c: float(obj["A"][c]) for c in CRITERIA},
                    "B": {c: float(obj["B"][c]) for c in CRITERIA},
                    "winner": str(obj["winner"]).strip().upper().replace("TIE", "tie")}
    return None


def _valid(obj: dict) -> bool:
    if str(obj.get("winner", "")).strip().lower() not in ("a", "b", "tie"):
        return False
    for side in ("A", "B"):
        scores = obj.get(side)
        if not isinstance(scores, dict):
            return False
        for criterion in CRITERIA:
            value = scores.get(criterion)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10:
                return False
    return True


def judgment(item: dict, order: str, reply: Reply, cached: bool) -> dict:
    """One row of judgments.jsonl: the parsed reply mapped from A/B back to the models, or
    why there is none (refused, truncated, unparseable)."""
    first, second = ORDERS[order]
    row = {"id": item["id"], "order": order, "cached": cached}
    if reply.text is None:
        return row | {"status": "refused", "reason": reply.refused}
    parsed = parse(reply.text)
    if parsed is None:
        return row | {"status": "truncated" if reply.cut else "unparseable", "reply": reply.text}
    winner = {"A": first, "B": second, "tie": "tie"}[parsed["winner"]]
    return row | {"status": "ok", "winner": winner,
                  "scores": {first: parsed["A"], second: parsed["B"]}}


def paired_answers(base_eval: Path, tuned_eval: Path) -> list[dict]:
    """{id, question, base, finetuned} for every prediction id both evaluations share."""
    base = {r["id"]: r for r in read_jsonl(base_eval / "predictions.jsonl")}
    return [{"id": r["id"], "question": r.get("prompt", ""), "base": base[r["id"]]["prediction"],
             "finetuned": r["prediction"]}
            for r in read_jsonl(tuned_eval / "predictions.jsonl") if r["id"] in base]


def ask(judge: Judge, shown: tuple[str, str, str]) -> Reply:
    """The judge's reply to one pair; a reply cut at the token limit before its JSON
    parsed is asked once more with four times the tokens (a judge that reasons at length)."""
    reply = judge.reply(messages(*shown))
    if reply.cut and parse(reply.text) is None:
        reply = judge.reply(messages(*shown), max_tokens=4 * MAX_TOKENS)
    return reply


def lasting(reply: Reply) -> bool:
    """Whether a reply is the judge's lasting answer to its pair, to be cached: not a
    refusal and not a reply cut before it parsed, which the next run asks again."""
    return reply.text is not None and not (reply.cut and parse(reply.text) is None)


def judge_all(judge: Judge, cache: ReplyCache, items: list[dict], workers: int = 4) -> list[dict]:
    """Both orders of every item, from the cache where it has them, each distinct pair
    asked once. Every lasting reply is cached as soon as it arrives, so a JudgeError
    part-way keeps what was judged."""
    tasks = []
    for item in items:
        for order in ORDERS:
            first, second = (item[m] for m in ORDERS[order])
            key = cache.key(judge.base_url.rstrip("/"), judge.model, TEMPLATE_ID,
                            item["question"], first, second)
            tasks.append((item, order, key, (item["question"], first, second)))
    cached = {key: Reply(record["reply"]) for *_, key, _ in tasks
              if (record := cache.get(key)) is not None}
    missing = {key: shown for *_, key, shown in tasks if key not in cached}
    fresh: dict[str, Reply] = {}

    def answer(key: str) -> None:
        fresh[key] = reply = ask(judge, missing[key])
        if lasting(reply):
            cache.put(key, {"model": judge.model, "template": TEMPLATE_ID, "reply": reply.text})

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(answer, missing))
    return [judgment(item, order, cached.get(key) or fresh[key], cached=key in cached)
            for item, order, key, _ in tasks]


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True,
                        help="the config's judge: JSON {base_url, model, api_key_env}")
    parser.add_argument("--base-eval", required=True, type=Path,
                        help="the base model's evaluation directory (predictions.jsonl)")
    parser.add_argument("--eval", required=True, type=Path,
                        help="the fine-tuned model's evaluation directory (predictions.jsonl)")
    parser.add_argument("--cache-dir", required=True, type=Path,
                        help="where judge replies are cached across runs")
    parser.add_argument("--out", required=True, type=Path, help="judgments.jsonl to write")
    parser.add_argument("--workers", type=int, default=4, help="judge calls in flight at once")
    parser.add_argument("--attempts", type=int, default=4,
                        help="tries per call (timeouts, 5xx: then the job fails; empty "
                             "replies: then the item is recorded as refused)")
    parser.add_argument("--backoff-s", type=float, default=2.0,
                        help="wait before the first retry; doubled before each next one")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per-call timeout")
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    try:
        judge = Judge(config["base_url"], config["model"], config["api_key_env"],
                      args.attempts, args.backoff_s, args.timeout_s)
        rows = judge_all(judge, ReplyCache(args.cache_dir),
                         paired_answers(args.base_eval, args.eval), args.workers)
    except JudgeError as err:
        sys.exit(f"error: {err} (replies received so far are kept in {args.cache_dir})")
    write_jsonl(args.out, rows)
    counts = {"judgments": len(rows), "new_calls": sum(not r["cached"] for r in rows),
              "from_cache": sum(r["cached"] for r in rows),
              **{status: sum(r["status"] == status for r in rows)
                 for status in ("unparseable", "truncated", "refused")}}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
