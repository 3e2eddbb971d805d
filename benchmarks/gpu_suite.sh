#!/usr/bin/env bash
# The GPU benchmark suite: one script for one lent H100 / H200, finished within GPU_SUITE_BUDGET seconds
# (default 450 s, under 8 minutes with start-up), every step under its own `timeout`.
#
#     bash benchmarks/gpu_suite.sh                       # from the repository root (or anywhere)
#     PYTHON=/path/to/python GPU_SUITE_BUDGET=420 bash benchmarks/gpu_suite.sh
#
# Writes benchmarks/results/<gpu name>/ : suite.log (everything printed), env.txt (GPU, driver, versions,
# commit), summary.txt (one line per step: exit status and seconds; 124 = hit its timeout), and per step
# <step>.txt (its output) and, where the benchmark writes one, <step>.json.  Steps, most important first (a
# step that no longer fits the budget is skipped, and summary.txt says so):
#
#   1. generate     bench_generate.py: warm 20-step 512-px generation of internvl3-2b_sana-1.6b_512 built at
#                   real size with random weights, bf16: batch-1 latency, and batch 4 throughput
#   2. train        bench_train.py: stage I and II model-only steps of the three LIM variants (bf16)
#   3. grpo         bench_grpo.py: one real-size GRPO epoch, part by part (rollout, rewards, update)
#   4. peak_memory  bench_train.py stage I at the stage-I config's per-GPU batch (train.batch_size /
#                   GPUS / train.grad_accum of configs/internvl3-2b_sana-1.6b_512_stage1.yaml; GPUS=8 unless
#                   set), 1 timed step: does it fit on this GPU, and with what peak?
#   5. train_trainer  bench_train.py --trainer (the project's Trainer at real size), when bench_train.py has it
#   6. deepspeed_zero2  benchmarks/gpu_suite/check_deepspeed_zero2.py, when deepspeed is installed
#
# The images are noise (random weights): only times and memory mean anything.

set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python; fi
fi
BUDGET=${GPU_SUITE_BUDGET:-450}
SIZE=internvl3-2b_sana-1.6b_512
GPUS=${GPUS:-8}
START=$(date +%s)

GPU=$("$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))" 2>/dev/null) \
  || { echo "gpu_suite: no CUDA GPU visible to $PY; nothing to do" >&2; exit 1; }
SLUG=$(printf '%s' "$GPU" | tr -cs 'A-Za-z0-9._-' '_' | sed 's/^_*//; s/_*$//')
OUT="$ROOT/benchmarks/results/${SLUG:-gpu}"
mkdir -p "$OUT"
: > "$OUT/summary.txt"
exec > >(tee -a "$OUT/suite.log") 2>&1
echo "gpu_suite: $GPU, budget ${BUDGET}s, results in $OUT ($(date -u +%FT%TZ))"

{
  echo "gpu: $GPU"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
       "$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# step NAME LIMIT_S CMD...: run CMD (from the repository root) under `timeout`, at most LIMIT_S seconds and
# never past the budget; its output goes to NAME.txt and its exit status and time to summary.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 15 ))
  if (( left < 30 )); then
    echo "== $name: skipped, the budget is spent (${left}s left)" | tee -a "$OUT/summary.txt"
    return 0
  fi
  local t=$(( limit < left ? limit : left ))
  echo "== $name (timeout ${t}s): $*"
  local s=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - s ))
  echo "$name: exit $rc in ${took}s$([[ $rc == 124 || $rc == 137 ]] && echo ' (timed out)')" \
    | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.txt"
}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
B="$ROOT/benchmarks"

step generate 90 "$PY" "$B/bench_generate.py" --size "$SIZE" --device cuda --dtype bf16 --batch 1,4 \
  --steps 20 --warmup 2 --repeats 5 --json "$OUT/generate.json"

step train 200 "$PY" "$B/bench_train.py" --size "$SIZE" --device cuda --dtype bf16 --batch 32 --steps 3 --warmup 1 \
  --json "$OUT/train.json"

step grpo 120 "$PY" "$B/bench_grpo.py" --size "$SIZE" --device cuda --dtype bf16 --prompts 4 --group-size 8 \
  --sde-steps 10 --train-batch 8 --rollout-batch 32 --epochs 1 --warmup 1 --json "$OUT/grpo.json"

PER_GPU=$("$PY" - "$GPUS" <<'EOF'
import sys
from parauni.train.config import load_config
cfg = load_config("src/parauni/configs/internvl3-2b_sana-1.6b_512_stage1.yaml", [])
gpus = int(sys.argv[1])
print(max(1, cfg.train.batch_size // gpus // cfg.train.grad_accum))
EOF
) || PER_GPU=64
echo "stage-I per-GPU batch: $PER_GPU (train.batch_size over $GPUS GPUs and train.grad_accum)"
step peak_memory 120 "$PY" "$B/bench_train.py" --size "$SIZE" --device cuda --dtype bf16 --stages I \
  --batch "$PER_GPU" --steps 1 --warmup 1 --json "$OUT/peak_memory.json"

if grep -q -- '"--trainer"' "$B/bench_train.py"; then
  step train_trainer 150 "$PY" "$B/bench_train.py" --trainer --size "$SIZE" --device cuda --dtype bf16 \
    --batch 32 --steps 3 --warmup 1
else
  echo "== train_trainer: skipped, bench_train.py has no --trainer option yet" | tee -a "$OUT/summary.txt"
fi

if "$PY" -c "import deepspeed" > /dev/null 2>&1; then
  step deepspeed_zero2 150 "$PY" "$B/gpu_suite/check_deepspeed_zero2.py" --out "$OUT/deepspeed_zero2"
else
  echo "== deepspeed_zero2: skipped, deepspeed is not installed (pip install deepspeed)" | tee -a "$OUT/summary.txt"
fi

echo "gpu_suite: done in $(( $(date +%s) - START ))s; summary:"
cat "$OUT/summary.txt"
