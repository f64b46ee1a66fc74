#!/usr/bin/env bash
# The diffusion figures of docs/benchmarks.md, in the order they were run, one after the
# other (the whole script under `flock /tmp/tinygen-cpu.lock` on the shared CPU):
#   flock /tmp/tinygen-cpu.lock bash benchmarks/diffusion_figures.sh
# Each step logs to runs/<name>.log and records its start/end time (seconds since epoch).
set -u
# threads sleep instead of spinning while waiting: on a shared CPU, spinning OpenMP threads
# slow a 2-thread run 5x whenever another process is busy (measured: 7.5 s vs 1.3 s a step)
export OMP_WAIT_POLICY=PASSIVE
EVALUATOR=${EVALUATOR:-runs/evaluator}
stamp() { echo "$1 $(date +%s)" >> runs/diffusion_figures.times; }
mkdir -p runs
# 1. class-conditional model, at most 30 minutes of training (SIGINT at 1800 s saves it)
stamp train_start
timeout -s INT 1800 tinygen train diffusion --data shapes --cond class \
  --objective v_prediction --preset shapes --out runs/diffusion-v --no-progress \
  > runs/diffusion-v.log 2>&1
stamp train_end
# 2. fidelity / feature distance: guidance x DDIM steps, then DDPM-1000 on fewer images
tinygen eval diffusion --run runs/diffusion-v --guidance 0,1,2,4 --steps 10,25,50 --n 128 \
  --evaluator "$EVALUATOR" --out runs/diffusion-v/eval-ddim > runs/diffusion-eval-ddim.log 2>&1
stamp ddim_end
# 3. speed: DDIM-50 sampling at batch 64, and U-Net training against diffusers
python benchmarks/diffusion_sampling_speed.py --run runs/diffusion-v --batch 64 --steps 50 \
  --repeats 2 > runs/diffusion-sampling-speed.log 2>&1
python benchmarks/diffusion_train_speed.py --batch 48 --repeats 6 \
  > runs/diffusion-train-speed.log 2>&1
stamp speed_end
tinygen eval diffusion --run runs/diffusion-v --guidance 0,2 --steps 1000 --n 32 \
  --batch-size 32 --evaluator "$EVALUATOR" --out runs/diffusion-v/eval-ddpm \
  > runs/diffusion-eval-ddpm.log 2>&1
stamp ddpm_end
# 4. classifier guidance on an unconditional model
tinygen train diffusion --data shapes --cond none --objective v_prediction --preset shapes \
  --max-iters 500 --eval-interval 250 --out runs/diffusion-uncond --no-progress \
  > runs/diffusion-uncond.log 2>&1
tinygen train noisy-classifier --data shapes --preset shapes --max-iters 400 \
  --eval-interval 200 --out runs/noisy-classifier --no-progress > runs/noisy-classifier.log 2>&1
stamp cg_train_end
tinygen eval diffusion --run runs/diffusion-uncond --classifier runs/noisy-classifier \
  --classifier-scales 0,2,4,8 --steps 25 --n 48 --evaluator "$EVALUATOR" \
  --out runs/diffusion-uncond/eval-cg > runs/diffusion-eval-cg.log 2>&1
stamp cg_end
