#!/usr/bin/env bash
# Recipe probes on a GPU machine (see diffusion_recipe_probe.py); results under $OUT.
set -u
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=2 TINYGEN_EVALUATOR=$PWD/benchmarks/.evaluator
OUT=${OUT:-/tmp/out}
P="python benchmarks/diffusion_recipe_probe.py --device cuda --out /tmp/probe --n 128 --eval-every 1000"
pids=()
$P --name a --iters 4000 --min-snr 5 > "$OUT/a.log" 2>&1 & pids+=($!)
$P --name b --iters 4000 --min-snr 5 --lr 3e-3 > "$OUT/b.log" 2>&1 & pids+=($!)
$P --name c --iters 4000 --min-snr 5 --lr 2e-3 --mult 1,2,4 --batch 48 > "$OUT/c.log" 2>&1 & pids+=($!)
$P --name d --iters 4000 --min-snr 5 --objective v_prediction > "$OUT/d.log" 2>&1 & pids+=($!)
$P --name e --iters 4000 --lr 2e-3 --ema 0.99 > "$OUT/e.log" 2>&1 & pids+=($!)
$P --name f --iters 4000 --min-snr 5 --base 64 > "$OUT/f.log" 2>&1 & pids+=($!)
( sleep 175; kill -INT "${pids[@]}" 2>/dev/null ) &
wait "${pids[@]}"
for n in a b c d e f; do cp /tmp/probe/$n/run/samples.png "$OUT/$n.png" 2>/dev/null; done
tail -n 12 "$OUT"/[a-f].log
