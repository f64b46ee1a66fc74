#!/usr/bin/env bash
# Recipe probes on a GPU machine (see diffusion_recipe_probe.py), as run to choose the
# diffusion recipe of docs/benchmarks.md: trains a shapes evaluator, then four recipes side
# by side, each reporting DDIM-50 prompt fidelity at guidance 0, 2, 4 every 400 steps.
#   OUT=/tmp/out bash benchmarks/diffusion_gpu_probe.sh
set -u
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/out}
export TINYGEN_EVALUATOR=$OUT/evaluator
python -m tinygen train evaluator --out "$OUT/evaluator" --no-install --no-progress \
  --device cuda > "$OUT/evaluator.log" 2>&1 &
P="python benchmarks/diffusion_recipe_probe.py --device cuda --out $OUT/probe --eval-every 400"
$P --name r124_b48_1600 --mult 1,2,4 --batch 48 --iters 1600 --min-snr 5 > "$OUT/a.log" 2>&1 &
$P --name r122_b64_1600 --mult 1,2,2 --batch 64 --iters 1600 --min-snr 5 > "$OUT/b.log" 2>&1 &
$P --name r124_b48_2400 --mult 1,2,4 --batch 48 --iters 2400 --min-snr 5 > "$OUT/c.log" 2>&1 &
$P --name r124_b48_1600_nosnr --mult 1,2,4 --batch 48 --iters 1600 > "$OUT/d.log" 2>&1 &
wait
tail -n 4 "$OUT"/evaluator.log
tail -n 12 "$OUT"/[abcd].log
