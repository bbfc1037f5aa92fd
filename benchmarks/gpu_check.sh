#!/usr/bin/env bash
# The GPU check (issue 13): one prepared command for a machine with one NVIDIA GPU and no
# network. It runs
#   1. the tests marked `cuda` (tests/test_cuda.py: bf16 training; QLoRA training, evaluation
#      and merge on the GPU; packing with SDPA, and with flash attention when installed);
#   2. gpu_slots on the real device (a job asking for one GPU sees one, a job asking for none
#      sees none);
#   3. benchmarks/bench_training.py on a Qwen2-0.5B-shaped random model: tokens/s of this
#      trainer (grouped, packed) against padding to 512 and against TRL's SFTTrainer, and peak
#      allocated and reserved GPU memory of LoRA against QLoRA;
#   4. benchmarks/bench_scale.py --section memory key: the loss's peak memory with a 151,936-row
#      vocabulary, full logits against the chunked loss, in CUDA bytes (max_memory_allocated
#      and max_memory_reserved; evaluation 16 x 1024, training 4 x 1024), and the checkpoint
#      key's first and second start on a 2 GB model directory;
#   5. benchmarks/studio_gpu_check.py: the studio started on the GPU (its own command line,
#      a real uvicorn on a free localhost port; a random bf16 Qwen2 with two fp32 LoRA
#      adapters) and 24 concurrent greedy and sampled, plain and streamed chats to both
#      adapters and the base through the `openai` client: every request must get an answer;
#      studio.json also says how many greedy answers equal the request asked alone.
#      Without a GPU it is skipped; `python benchmarks/studio_gpu_check.py --device cpu`
#      runs the same check on the CPU (tests/test_studio_engine.py runs it so).
# Without a GPU, parts 1, 3, 4 and 5 are skipped (the tests report "skipped") and it still ends with
# status 0 (tests/test_benchmarks.py checks that). Target: under 8 minutes on one H100.
# Put bench.log's tables, the GPU's name and the date in docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh [tests|slots|bench|scale|studio|all]     # default: all
#
# Logs go to $OUT if set (the device machine's folder that comes back), else to
# benchmarks/out/gpu_check/: environment.txt, tests.log, slots.log, bench.log, scale.log,
# studio.log, studio.json.
#
# Carrying what the machine lacks. Its python3 (3.12) has torch, transformers, peft,
# accelerate, pandas, jinja2, matplotlib, sacrebleu, tensorboard, pyyaml, but not
# bitsandbytes, datasets, jsonschema or trl. Here, in the repository root, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#     jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
#     rpds-py==2026.9.1 trl==1.16.0
#
# and, for part 5 (the studio and the `openai` client, if its python3 lacks them), the same
# command with: fastapi==0.163.2 starlette==1.10.0 uvicorn==0.54.0 h11==0.16.0 click==8.5.1
#     annotated-doc==0.0.7 opentelemetry-api==1.45.2 importlib_metadata==9.1.0 zipp==4.1.2
#     pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
#     typing_extensions==4.16.0 anyio==4.16.0 sniffio==1.3.1 idna==3.20 openai==3.51.0
#     jiter==0.19.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 certifi==2026.10.18
#     tqdm==4.70.1   (part 5 says which module is missing otherwise, and fails)
#
# Measured 2026-11-27: 43.4 MiB of wheels (bitsandbytes alone 41.1 MiB) plus a 1.9 MiB
# working tree, so one call carries everything (limit 64 MiB): run with `carry: [".whl"]`
# and the command `bash benchmarks/gpu_check.sh`; this script installs .whl/*.whl into
# /tmp/gpu-check-site when the folder is there. Not carried, because nothing here needs them
# on the GPU: snakemake (no workflow runs) and the text-metric libraries nltk, jieba and
# rouge-chinese (metrics are computed on the CPU; jieba alone is an 18.4 MiB wheel, built
# with `pip wheel --no-deps jieba==0.42.1` since it has no wheel on PyPI). Should the
# wheels outgrow 64 MiB, split the check into two calls: `tests` and `slots` with the
# wheels, then `bench` with them again.
set -uo pipefail
cd "$(dirname "$0")/.."

PARTS=${1:-all}
LOGS=${OUT:-benchmarks/out/gpu_check}
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-check-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

status=0
run_part() {  # name, command...: log to $LOGS/name.log, remember a failure, go on
  local name=$1; shift
  echo "== $name: $*"
  local started=$SECONDS
  "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [ "$rc" -eq 0 ] || status=1
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers, peft; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  "$PY" -c "import bitsandbytes, datasets, trl; print('bitsandbytes', bitsandbytes.__version__, 'datasets', datasets.__version__, 'trl', trl.__version__)" 2>&1 | tail -n 1
} | tee "$LOGS/environment.txt"
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

if [[ $PARTS == all || $PARTS == tests ]]; then
  # -p no:cacheprovider: the working tree may be read-only or thrown away
  run_part tests "$PY" -m pytest -p no:cacheprovider -ra -m cuda tests/test_cuda.py
fi

if [[ $PARTS == all || $PARTS == slots ]]; then
  slots=$(mktemp -d)
  count='import torch; print(torch.cuda.device_count())'
  check_slots() {
    local one none want=$HAS_CUDA
    one=$("$PY" -m workflow_scripts.launch.gpu_slots --gpus "$want" --total "$want" --slots-dir "$slots" -- "$PY" -c "$count") || return 1
    none=$("$PY" -m workflow_scripts.launch.gpu_slots --gpus 0 --total 1 --slots-dir "$slots" -- "$PY" -c "$count") || return 1
    echo "devices seen: asking for $want: $one; asking for none: $none"
    [ "$one" = "$want" ] && [ "$none" = 0 ]
  }
  run_part slots check_slots
  rm -rf "$slots"
fi

if [[ $PARTS == all || $PARTS == bench ]]; then
  if [ "$HAS_CUDA" != 1 ]; then
    echo "== bench: skipped (no CUDA GPU; a 0.5B model on this CPU would take hours)"
  else
    trl_site=$("$PY" -c "import trl, os; print(os.path.dirname(os.path.dirname(trl.__file__)))" 2>/dev/null)
    # 512 records: 64 steps of batch 8, so that the first steps' CUDA warm-up is a small share
    run_part bench "$PY" benchmarks/bench_training.py --shape qwen2-0.5b --samples 512 \
      --trl-site "${trl_site:-}"
  fi
fi

if [[ $PARTS == all || $PARTS == scale ]]; then
  if [ "$HAS_CUDA" != 1 ]; then
    echo "== scale: skipped (no CUDA GPU; on a CPU run benchmarks/bench_scale.py itself)"
  else
    run_part scale "$PY" benchmarks/bench_scale.py --section memory key --json "$LOGS/scale.json"
  fi
fi

if [[ $PARTS == all || $PARTS == studio ]]; then
  if [ "$HAS_CUDA" != 1 ]; then
    echo "== studio: skipped (no CUDA GPU; on a CPU run benchmarks/studio_gpu_check.py --device cpu)"
  else
    run_part studio "$PY" benchmarks/studio_gpu_check.py --device cuda --json "$LOGS/studio.json"
  fi
fi

echo "gpu_check: logs in $LOGS; $( [ "$HAS_CUDA" = 1 ] && echo "ran on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" || echo "no GPU: CUDA parts skipped")"
exit $status
