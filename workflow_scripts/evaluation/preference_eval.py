"""A preference experiment on its held-out pairs, paired against its starting point.

    python -m workflow_scripts.evaluation.preference_eval --config JOB_JSON --model-dir M \\
        --adapter-dir results/adapters/E --tokenized-dir T --start-dir S --out-dir results/eval/E

The policy (the base model, 4-bit for QLoRA, with the experiment's adapter) scores every
answer of the tokenized test split (preference_tokenize.py) through the routine the reference
job and training use (preference_logps.score_rows: summed answer log-probs, chunked, no
gradients); the starting point's scores of the same rows are the reference job's
(`{start}/test.parquet`: the SFT adapter it continued, or the base). Writes
`preference_pairs.jsonl` (per row: id, both answers' token counts, policy and start log-probs)
and `preference.json` (the figures below, each with a 95% bootstrap interval resampling pairs,
evaluation/bootstrap.py). collect_metrics recomputes the same figures from the pairs file with
the run's resamples (report/preference_table.py).

Pairs (chosen c, rejected r; π the policy's summed log-prob of an answer, s the start's,
β the experiment's beta; the implicit reward of an answer is β(π − s)):

- `reward_accuracy`: share of pairs whose chosen answer gained more than the rejected one,
  (π_c − s_c) > (π_r − s_r). A tie counts a half, so the starting point scores exactly 0.5
  (all its rewards are 0) and the difference is accuracy − 0.5 (TRL's logged
  rewards/accuracies counts ties as 0: it reads 0 before the first update).
- `reward_margin`: mean β[(π_c − s_c) − (π_r − s_r)]; 0 at the start, tested against 0.
- `ranking_accuracy`: share of pairs with π_c > π_r (ties a half), the policy's against the
  start's s_c > s_r, a paired difference.
- `chosen_logp_per_token`, `rejected_logp_per_token`: token-weighted mean log-prob of the
  chosen (rejected) answers, policy against start, a paired difference: whether DPO made the
  chosen answers themselves less likely (the known failure) shows as "lower".

Unpaired (KTO) rows (a completion with a desirable/undesirable `label`; their `kl` answers,
mismatched completions, are scored but not reported):

- `reward_accuracy`: share of completions whose reward has the sign of their label (desirable
  above 0, undesirable below; 0 counts a half), against 0.5.
- `reward_margin`: mean reward signed by the label (+ desirable, − undesirable), against 0.
- `desirable_reward`, `undesirable_reward`: mean reward of each kind, against 0.
- `desirable_logp_per_token`, `undesirable_logp_per_token`: as chosen_logp_per_token.

Reference-free losses (ORPO, SimPO) are scored the same way, with their β, against the
starting point: the implicit reward is then a yardstick, not what they optimised.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_json, read_jsonl, write_json, write_jsonl
from workflow_scripts.evaluation import bootstrap

TIE = 0.5  # what a tie scores in every accuracy here
PAIRWISE_METRICS = ("reward_accuracy", "reward_margin", "ranking_accuracy",
                    "chosen_logp_per_token", "rejected_logp_per_token")
KTO_METRICS = ("reward_accuracy", "reward_margin", "desirable_reward", "undesirable_reward",
               "desirable_logp_per_token", "undesirable_logp_per_token")
# whether higher is better (None: a change to describe, "higher" or "lower", not a verdict)
HIGHER_IS_BETTER = {"reward_accuracy": True, "reward_margin": True, "ranking_accuracy": True,
                    "chosen_logp_per_token": None, "rejected_logp_per_token": None,
                    "desirable_reward": True, "undesirable_reward": False,
                    "desirable_logp_per_token": None, "undesirable_logp_per_token": None}
PAIRS_FILE, SUMMARY_FILE = "preference_pairs.jsonl", "preference.json"


# The figures ------------------------------------------------------------------------------

def wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a > b, TIE where equal, 0 where a < b."""
    return np.where(a > b, 1.0, np.where(a == b, TIE, 0.0))


def figure(start: bootstrap.Interval, policy: bootstrap.Interval, difference: bootstrap.Interval,
           higher_is_better: bool | None) -> dict[str, Any]:
    """One metric: the start's and the policy's value with intervals, the paired difference
    policy − start with its interval and p-value, the verdict and the number of items."""
    out = {"n": difference.n, "verdict": bootstrap.verdict(difference, higher_is_better),
           "p_value": difference.p_value}
    for name, iv in (("start", start), ("policy", policy), ("difference", difference)):
        out.update({name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high})
    return out


def fixed(value: float, n: int) -> bootstrap.Interval:
    """The starting point's value of a reward figure: exact by construction, no interval."""
    return bootstrap.Interval(value, float("nan"), float("nan"), n=n)


def against(value: float, values: np.ndarray, higher: bool | None, seed: int,
            resamples: int) -> dict[str, Any]:
    """A mean of per-item `values` whose starting point is exactly `value`."""
    policy = bootstrap.mean_interval(values, resamples, seed)
    gap = bootstrap.mean_interval(values - value, resamples, seed)
    return figure(fixed(value, len(values)), policy, gap, higher)


def per_token(logps: tuple[np.ndarray, np.ndarray], tokens: np.ndarray, higher: bool | None,
              seed: int, resamples: int) -> dict[str, Any]:
    """Token-weighted mean log-prob, start (`logps[0]`) against policy (`logps[1]`)."""
    start, policy = ((values, tokens) for values in logps)
    return figure(bootstrap.ratio_interval(*start, resamples=resamples, seed=seed),
                  bootstrap.ratio_interval(*policy, resamples=resamples, seed=seed),
                  bootstrap.paired_ratio_difference(start, policy, resamples, seed), higher)


def columns(rows: list[dict], *keys: str) -> list[np.ndarray]:
    return [np.asarray([row[key] for row in rows], dtype=float) for key in keys]


def pairwise_metrics(rows: list[dict], beta: float, seed: int,
                     resamples: int) -> dict[str, dict]:
    pc, sc, pr, sr, nc, nr = columns(rows, "chosen_logp", "start_chosen_logp", "rejected_logp",
                                     "start_rejected_logp", "chosen_tokens", "rejected_tokens")
    gain_c, gain_r = pc - sc, pr - sr
    start_rank, policy_rank = wins(sc, sr), wins(pc, pr)
    h = HIGHER_IS_BETTER
    return {
        "reward_accuracy": against(TIE, wins(gain_c, gain_r), h["reward_accuracy"], seed,
                                   resamples),
        "reward_margin": against(0.0, beta * (gain_c - gain_r), h["reward_margin"], seed,
                                 resamples),
        "ranking_accuracy": figure(
            bootstrap.mean_interval(start_rank, resamples, seed),
            bootstrap.mean_interval(policy_rank, resamples, seed),
            bootstrap.paired_mean_difference(start_rank, policy_rank, resamples, seed),
            h["ranking_accuracy"]),
        "chosen_logp_per_token": per_token((sc, pc), nc, h["chosen_logp_per_token"], seed,
                                           resamples),
        "rejected_logp_per_token": per_token((sr, pr), nr, h["rejected_logp_per_token"], seed,
                                             resamples),
    }


def kto_metrics(rows: list[dict], beta: float, seed: int, resamples: int) -> dict[str, dict]:
    policy, start, tokens = columns(rows, "completion_logp", "start_completion_logp",
                                    "completion_tokens")
    good = np.asarray([bool(row["label"]) for row in rows], dtype=bool)
    reward = beta * (policy - start)
    signed = np.where(good, reward, -reward)
    h = HIGHER_IS_BETTER
    out = {"reward_accuracy": against(TIE, wins(signed, np.zeros_like(signed)),
                                      h["reward_accuracy"], seed, resamples),
           "reward_margin": against(0.0, signed, h["reward_margin"], seed, resamples)}
    for kind, mask in (("desirable", good), ("undesirable", ~good)):
        out[f"{kind}_reward"] = against(0.0, reward[mask], h[f"{kind}_reward"], seed, resamples)
        out[f"{kind}_logp_per_token"] = per_token(
            (start[mask], policy[mask]), tokens[mask], h[f"{kind}_logp_per_token"], seed,
            resamples)
    return out


def preference_metrics(rows: list[dict], kind: str, beta: float, seed: int,
                       resamples: int = bootstrap.RESAMPLES) -> dict[str, dict]:
    """Every figure of the module doc for preference_pairs.jsonl `rows` of `kind`
    ("pairwise" or "kto"), by metric name."""
    compute: Callable = kto_metrics if kind == "kto" else pairwise_metrics
    return compute(rows, beta, seed, resamples)


# The job ----------------------------------------------------------------------------------

def evaluation_job(plan, name: str) -> dict[str, Any]:
    """The job of experiment `name` of a training.preference_plan.PreferencePlan (the rule's
    --config): scored as its starting point's reference job scored it (quantization, batch
    size, seed), with its loss settings."""
    experiment, reference = plan.experiments[name], plan.reference_settings(name)
    return {"experiment": name, "start": experiment.get("init_from") or "base",
            "preference": experiment["preference"], "seed": reference["seed"],
            "quantization": reference["quantization"], "batch_size": reference["batch_size"],
            "trust_remote_code": reference["model"].get("trust_remote_code", False)}


def pair_rows(policy: list[dict], start: dict[str, list], roles: tuple[str, str],
              labels: list | None, where: Path) -> list[dict]:
    """preference_pairs.jsonl rows: the policy's scores joined with the start's (same rows in
    the same order, the same answer tokens), and KTO labels."""
    rows = []
    for i, scored in enumerate(policy):
        row = {"id": scored["id"]}
        for role in roles:
            if start[f"{role}_tokens"][i] != scored[f"{role}_tokens"]:
                raise SystemExit(f"{where}: row {scored['id']}: the {role} answer has "
                                 f"{start[f'{role}_tokens'][i]} tokens there and "
                                 f"{scored[f'{role}_tokens']} here; rerun reference_logps")
            row.update({f"{role}_tokens": scored[f"{role}_tokens"],
                        f"{role}_logp": scored[f"{role}_logp"],
                        f"start_{role}_logp": start[f"{role}_logp"][i]})
        if labels is not None:
            row["label"] = bool(labels[i])
        rows.append(row)
    return rows


def score_policy(job: dict, model_dir: str, adapter_dir: str, tokenized_dir: Path,
                 start_dir: Path) -> tuple[list[dict], str]:
    """(preference_pairs.jsonl rows, the data's kind) of the test split."""
    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.training.preference_logps import score_rows
    from workflow_scripts.training.preference_tokenize import load_split, roles_of
    from workflow_scripts.training.reference_logps import load_reference, read_scores

    dataset, kind = load_split(tokenized_dir, "test")
    start_file = start_dir / "test.parquet"
    start = read_scores(start_file, dataset["id"])
    trust = job.get("trust_remote_code", False)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust)
    model = load_reference(model_dir, adapter_dir, job.get("quantization"), trust)
    roles = roles_of(kind)
    scored = list(score_rows(model, dataset, roles, tokenizer.pad_token_id, job["batch_size"]))
    labels = dataset["label"] if kind == "kto" else None
    return pair_rows(scored, start, roles, labels, start_file), kind


def finite(value):
    """JSON has no NaN: a missing figure is null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def summary(job: dict, rows: list[dict], kind: str, resamples: int) -> dict[str, Any]:
    spec = job["preference"]
    metrics = preference_metrics(rows, kind, spec["beta"], job["seed"], resamples)
    return {"experiment": job["experiment"], "start": job["start"], "kind": kind,
            "loss": spec["loss"], "parameters": {k: v for k, v in spec.items() if k != "loss"},
            "n": len(rows), "seed": job["seed"], "resamples": resamples, "tie": TIE,
            "metrics": {name: {k: finite(v) for k, v in figures.items()}
                        for name, figures in metrics.items()}}


def read_pairs(eval_dir: Path) -> tuple[dict, list[dict]] | None:
    """(preference.json, preference_pairs.jsonl rows) of an evaluation, or None when the
    job has not written them."""
    if not (eval_dir / SUMMARY_FILE).is_file() or not (eval_dir / PAIRS_FILE).is_file():
        return None
    return read_json(eval_dir / SUMMARY_FILE), list(read_jsonl(eval_dir / PAIRS_FILE))


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the job as JSON: experiment, start, "
                        "preference (loss, beta, ...), quantization, batch_size, seed, "
                        "trust_remote_code")
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--adapter-dir", required=True, help="the preference adapter")
    parser.add_argument("--tokenized-dir", required=True, type=Path,
                        help="preference_tokenize's output (its test.arrow is scored)")
    parser.add_argument("--start-dir", required=True, type=Path,
                        help="the starting point's scores (reference_logps's output)")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--resamples", type=int, default=bootstrap.RESAMPLES)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(job["seed"])
    rows, kind = score_policy(job, args.model_dir, args.adapter_dir, args.tokenized_dir,
                              args.start_dir)
    result = summary(job, rows, kind, args.resamples)
    write_jsonl(args.out_dir / PAIRS_FILE, rows)
    write_json(args.out_dir / SUMMARY_FILE, result)
    print(json.dumps({k: result["metrics"][k]["policy"] for k in result["metrics"]}))


if __name__ == "__main__":
    main()
