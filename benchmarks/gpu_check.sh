#!/usr/bin/env bash
# The GPU half of the speed benchmarks as one short prepared run (not yet run: no GPU has been available to the
# project). It needs a CUDA build of torch and writes its JSON into ${OUT:-benchmarks/results}. The phase-1 `paper`
# preset takes about 20 minutes in eager PyTorch on a data-centre GPU, too long for one short run, so it runs with
# fewer iterations per scale; the per-scale ms/iteration in the JSON gives the full run's time by multiplication,
# and must be reported as such.
#
#   bash benchmarks/gpu_check.sh            # about 5-8 minutes on a current data-centre GPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch ' + torch.__version__ + ')')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_check_device.txt"
# Loss cost at batch 16, 256 px: reference, exact, exact + bf16, exact + bf16 + compile, the fast candidates, VGG16, LPIPS.
python benchmarks/loss_speed.py --device cuda --repeats 10 --configs 16x256 --out "$OUT/loss_speed_gpu.json"
# Phase 1, `paper` preset, 200 iterations per scale (of SinGAN's 2000).
python benchmarks/train_speed.py --device cuda --preset paper --iters 200 --out "$OUT/train_speed_gpu_200iters.json"
