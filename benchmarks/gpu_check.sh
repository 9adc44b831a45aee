#!/usr/bin/env bash
# The GPU half of the benchmarks as one short prepared run (at most $BUDGET seconds, 510 by default). It needs a CUDA
# build of torch, the shared data (a folder with benchmarks/CSun_Hays80, CBSD68, CSet14; $MDF_LOSS_DATA) and writes
# everything into ${OUT:-benchmarks/results/gpu}.
#
#   bash benchmarks/gpu_check.sh
#
# Part A times, one process at a time, with nothing else on the GPU:
#   - the loss alone at batch 16 x 256 px: the authors' formula (as written, and with frozen parameters), exact
#     (fp32, bf16, bf16 + compile), the stochastic modes, VGG16 and LPIPS-AlexNet (benchmarks/loss_speed.py);
#   - a whole training step of the quick DnCNN with each loss (benchmarks/step_cost.py);
#   - phase 1 at the `paper` preset with few iterations per scale: the per-scale ms/iteration, multiplied by the
#     preset's iterations, gives a full run's time, and is reported as such (benchmarks/train_speed.py).
# Part B then runs one process at a time until the deadline. (Side by side they starve: on 2026-11-30 three quality
# processes and five task-specificity workers shared one H200 for 400 s and not one of their 600-step trainings
# finished, where one process alone trains one in about 10 s. Without MPS the GPU time-slices between processes, and
# these small networks are bound by kernel launches.)
#   - the peak GPU memory of one forward + backward of each loss, each in a fresh process;
#   - the quality of the stochastic and bf16 modes as a training loss, seeds 0, 1, 2 (benchmarks/fast_mode_quality.py);
#   - the task-specificity experiments until the deadline; a later run carries runs/task_specificity_gpu back (its
#     results.json files) and goes on where this one stopped (benchmarks/task_specificity.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
BUDGET=${BUDGET:-510}  # seconds from the start by which everything has stopped
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() {  # step NAME MAX_SECONDS COMMAND...: run with a time limit (never past the budget); a failure is logged, not fatal
  local name=$1 secs=$2; shift 2
  local l; l=$(left); (( secs > l )) && secs=$l
  if (( secs < 5 )); then echo "== $name: skipped, budget spent"; return; fi
  echo "== $name (limit ${secs}s) at +$(( $(date +%s) - T0 ))s"
  timeout "$secs" "$@"; local rc=$?
  echo "== $name: rc=$rc at +$(( $(date +%s) - T0 ))s"
}
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda); sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"

# ---- A: timings, alone
step loss_speed 170 python3 benchmarks/loss_speed.py --device cuda --repeats 10 --configs 16x256 --no-memory \
  --methods reference,reference-frozen,exact,exact-bf16,exact-bf16-compile,sample0.5,sample0.25,sample0.125,bf16-sample0.25,vgg16,lpips-alex \
  --out "$OUT/loss_speed_gpu.json" 2>&1 | tail -n 20
step step_cost 70 python3 benchmarks/step_cost.py --device cuda --rounds 9 \
  --methods l1,reference,reference-frozen,exact,bf16,sample0.5,sample0.25,sample0.125,bf16+sample0.25,vgg16 \
  --out "$OUT/step_cost_gpu.json" 2>&1 | grep -v '^round' | tail -n 16
step train_speed 75 python3 benchmarks/train_speed.py --device cuda --preset paper --iters 40 --out "$OUT/train_speed_gpu.json" > "$OUT/train_speed.log" 2>&1
tail -n 5 "$OUT/train_speed.log"

# ---- B: one process at a time until the deadline
mkdir -p "$OUT/work"
for m in reference reference-frozen exact exact-bf16 exact-bf16-compile sample0.25 vgg16; do
  l=$(left); (( l < 5 )) && break
  r=$(timeout "$l" python3 benchmarks/loss_speed.py --child $m --batch 16 --size 256 --num-scales 8 --device cuda 2>/dev/null | tail -n 1)
  echo "{\"method\": \"$m\", \"memory\": ${r:-null}}"
done > "$OUT/loss_memory_gpu.jsonl"
step quality 200 python3 benchmarks/fast_mode_quality.py --device cuda --seeds 0,1,2 \
  --modes exact,sample0.5,sample0.25,sample0.125,bf16,bf16+sample0.25 \
  --out "$OUT/work/quality_gpu.json" > /dev/null 2> "$OUT/work/quality_gpu.log"
step task_specificity 600 python3 benchmarks/task_specificity.py --device cuda --runs runs/task_specificity_gpu \
  > /dev/null 2> "$OUT/work/task_specificity.log"
python3 benchmarks/task_specificity.py --device cuda --runs runs/task_specificity_gpu --aggregate-only --out "$OUT/work/task_specificity_gpu" > /dev/null 2>&1
find runs/task_specificity_gpu -name results.json | tar czf "$OUT/work/ts_runs.tgz" -T - 2>/dev/null
tar czf "$OUT/bundle.tgz" -C "$OUT" work && rm -rf "$OUT/work"
echo "== done at +$(( $(date +%s) - T0 ))s"; ls -la "$OUT"
