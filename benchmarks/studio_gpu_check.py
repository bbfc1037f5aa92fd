"""The studio served from a device, asked by concurrent clients (benchmarks/gpu_check.sh).

    python benchmarks/studio_gpu_check.py [--device cuda|cpu] [--requests 24] [--json PATH]

Builds a random Qwen2 base (saved in bf16 on CUDA, so that the mixed-adapter forward meets
fp32 adapters on a bf16 base) with two random LoRA adapters (random_chat_models.py), starts
the studio with its own command line (`python -m workflow_scripts.studio`, a real uvicorn
on a free localhost port), and sends `--requests` concurrent chats through the official
`openai` client: greedy and sampled (temperature, top-p, a seed), plain and streamed, to
both adapters and the base, so that greedy and sampled rows of different adapters share
batches. It checks that every request gets an answer (no error, no hang), that the model
sits on `--device`, and reports (without failing on them: bf16 numerics may round a batched
step differently) how many greedy answers equal the same request asked alone, and whether
a seed's answer asked alone equals its answer in the crowd.

`--device cpu` runs the same check on this CPU (fp32; CUDA hidden from the studio), so the
script is known to work before a GPU ever runs it. Exit status 0 when every request got an
answer on the asked device.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--requests", type=int, default=24, help="concurrent chats")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for all answers")
    return parser.parse_args(argv)


def build_workdir(root: Path, device: str) -> None:
    """A studio working directory: base `rand` (bf16 for CUDA) and adapters a0, a1."""
    import torch
    from transformers import AutoModelForCausalLM

    from random_chat_models import studio_workdir

    studio_workdir(root, adapters=2)
    if device == "cuda":
        model = AutoModelForCausalLM.from_pretrained(root / "rand", dtype=torch.float32)
        model.to(torch.bfloat16).save_pretrained(root / "rand")


def free_port() -> int:
    from workflow_scripts.studio.background import free_port as port

    return port()


def start_studio(root: Path, port: int, device: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the studio places models on CUDA when it sees one
    log = open(root / "studio.log", "w")
    return subprocess.Popen([sys.executable, "-m", "workflow_scripts.studio", "--config",
                             str(root / "config.yaml"), "--directory", str(root), "--port", str(port),
                             "--max-tokens-cap", "256"], cwd=root, env=env, stdout=log, stderr=log)


def wait_until_up(url: str, process: subprocess.Popen, root: Path, limit_s: float = 120) -> None:
    import httpx2

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the studio exited with {process.returncode}:\n"
                             + (root / "studio.log").read_text()[-3000:])
        try:
            if httpx2.get(url + "/v1/models", timeout=5).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the studio did not answer on {url} within {limit_s:.0f} s")


def requests_for(count: int, max_tokens: int) -> list[dict]:
    """Greedy and sampled, plain and streamed, over both adapters and the base."""
    prompts = ["你好", "北京今天天气怎么样？", "上海明天下雨吗？", "查询城市天气", "写一首诗"]
    out = []
    for i in range(count):
        request = {"model": ["a0", "a1", "rand"][i % 3], "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                   "stream": i % 4 >= 2}
        if i % 2:
            request |= {"temperature": 0.8, "top_p": 0.9, "seed": 1000 + i}
        out.append(request)
    return out


async def ask(client, request: dict) -> dict:
    """The answer's text, token count and finish reason, or the error it got."""
    started = time.perf_counter()
    try:
        if request["stream"]:
            text, reason, tokens = [], None, None
            stream = await client.chat.completions.create(
                **request, stream_options={"include_usage": True})
            async for chunk in stream:
                for choice in chunk.choices:
                    text.append(choice.delta.content or "")
                    reason = choice.finish_reason or reason
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            answer = {"text": "".join(text), "finish_reason": reason, "tokens": tokens}
        else:
            reply = await client.chat.completions.create(**request)
            answer = {"text": reply.choices[0].message.content or "",
                      "finish_reason": reply.choices[0].finish_reason,
                      "tokens": reply.usage.completion_tokens}
    except Exception as err:  # counted and shown: the check is that there are none
        answer = {"error": f"{type(err).__name__}: {err}"}
    return answer | {"seconds": round(time.perf_counter() - started, 3)}


async def ask_all(url: str, requests: list[dict], limit_s: float) -> list[dict]:
    import openai

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0,
                                  timeout=limit_s) as client:
        return await asyncio.wait_for(asyncio.gather(*(ask(client, r) for r in requests)), limit_s)


def answered(answer: dict) -> bool:
    return "error" not in answer and answer["finish_reason"] in ("stop", "length") \
        and (answer["tokens"] or 0) >= 1


def model_device(url: str) -> str | None:
    """Where the studio put the base model, from its load view (None if it does not say)."""
    import httpx2

    view = httpx2.get(url + "/api/chat/load", timeout=10).json()
    return view["bases"].get("rand", {}).get("device")


NEEDED = ("fastapi", "uvicorn", "openai", "httpx2", "pydantic", "jinja2", "yaml")


def run(args: argparse.Namespace) -> dict:
    import importlib.util

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"missing modules: {', '.join(missing)} (carry their wheels: see "
                         f"benchmarks/gpu_check.sh)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here (use --device cpu)")
    with tempfile.TemporaryDirectory(prefix="studio-gpu-check-") as scratch:
        root = Path(scratch)
        build_workdir(root, args.device)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_studio(root, port, args.device)
        try:
            wait_until_up(url, process, root)
            requests = requests_for(args.requests, args.max_tokens)
            started = time.perf_counter()
            crowd = asyncio.run(ask_all(url, requests, args.timeout))
            seconds = time.perf_counter() - started
            greedy = [i for i, r in enumerate(requests) if "temperature" not in r][:6]
            sampled = next(i for i, r in enumerate(requests) if "temperature" in r)
            alone = {i: asyncio.run(ask_all(url, [requests[i]], args.timeout))[0]
                     for i in [*greedy, sampled]}
            device = model_device(url)
        finally:
            process.terminate()
            process.wait(30)
        summary = {
            "device": args.device, "model_device": device, "requests": len(requests),
            "answered": sum(answered(a) for a in crowd), "seconds": round(seconds, 2),
            "tokens": sum(a.get("tokens") or 0 for a in crowd),
            "errors": [a["error"] for a in crowd if "error" in a],
            "greedy_equal_alone": f"{sum(alone[i].get('text') == crowd[i].get('text') for i in greedy)}"
                                  f"/{len(greedy)}",
            "seed_equal_alone": alone[sampled].get("text") == crowd[sampled].get("text"),
            "studio_log_tail": (root / "studio.log").read_text()[-2000:],
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "studio_log_tail"}, indent=2,
                     ensure_ascii=False))
    if summary["errors"] or summary["answered"] < summary["requests"]:
        print("studio log (tail):\n" + summary["studio_log_tail"])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    on_device = summary["model_device"] is None or summary["model_device"].startswith(args.device)
    ok = summary["answered"] == summary["requests"] and on_device
    print(f"studio check: {summary['answered']}/{summary['requests']} answered on "
          f"{summary['model_device']}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
