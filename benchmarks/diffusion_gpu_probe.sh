#!/usr/bin/env bash
# Recipe probes on a GPU machine (see diffusion_recipe_probe.py); results under $OUT/probe.
set -u
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/out}
python -c "import torch; print(torch.__version__, torch.cuda.is_available())"
if [ ! -f runs/evaluator/config.json ]; then
  python -m tinygen train evaluator --out "$OUT/evaluator" --no-install --no-progress \
    --device cuda > "$OUT/evaluator.log" 2>&1
  export TINYGEN_EVALUATOR=$OUT/evaluator
else
  export TINYGEN_EVALUATOR=$PWD/runs/evaluator
fi
tail -3 "$OUT/evaluator.log" 2>/dev/null
P="python benchmarks/diffusion_recipe_probe.py --device cuda --out $OUT/probe --eval-every 500"
$P --name a32_1500 --base 32 --iters 1500 > "$OUT/a.log" 2>&1 &
$P --name a32_3000 --base 32 --iters 3000 > "$OUT/b.log" 2>&1 &
$P --name c48_1500 --base 48 --iters 1500 > "$OUT/c.log" 2>&1 &
$P --name d32r2_1500 --base 32 --res 2 --iters 1500 > "$OUT/d.log" 2>&1 &
$P --name e32v_1500 --base 32 --iters 1500 --objective v_prediction --min-snr 5 > "$OUT/e.log" 2>&1 &
$P --name f32b32_3000 --base 32 --iters 3000 --batch 32 > "$OUT/f.log" 2>&1 &
wait
rm -rf "$OUT"/probe/*/run/*.pt
tail -n 20 "$OUT"/*.log
