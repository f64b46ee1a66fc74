#!/usr/bin/env bash
# The diffusion figures of docs/benchmarks.md, on the 2-core CPU:
#   bash benchmarks/diffusion_figures.sh
# One torch thread per process: this 2.9M-parameter U-Net trains at ~60 images/s on one
# thread and only ~72 on two, while two one-thread processes under DDP reach ~77, so the
# 30-minute model trains data-parallel and every other job runs as a one-thread process.
# Each step logs to runs/<name>.log and stamps its end time (seconds since the epoch) into
# runs/diffusion_figures.times.
set -u
export OMP_NUM_THREADS=1
EVALUATOR=${EVALUATOR:-runs/evaluator}
TIMES=runs/diffusion_figures.times
stamp() { echo "$1 $(date +%s)" >> "$TIMES"; }
mkdir -p runs

# 1. the class-conditional model: at most 30 minutes on the whole CPU (took 1,567 s)
stamp train_start
timeout -s INT 1800 torchrun --standalone --nproc_per_node 2 -m tinygen train diffusion \
  --data shapes --cond class --objective v_prediction --preset shapes --precision bf16 \
  --schedule cosine --batch-size 24 --max-iters 2500 --out runs/diffusion-ddp --no-progress \
  > runs/diffusion-ddp.log 2>&1
stamp train_end

# 2. two lanes: the guidance x steps grid of that model, and classifier guidance
lane_a() {
  tinygen eval diffusion --run runs/diffusion-ddp --guidance 0,1,2,4 --steps 10,25,50 \
    --n 128 --evaluator "$EVALUATOR" --out runs/diffusion-ddp/eval-ddim \
    > runs/diffusion-ddp-eval-ddim.log 2>&1
  stamp ddim_end
  # DDIM-50 against DDPM-1000 on the same labels and seeds
  tinygen eval diffusion --run runs/diffusion-ddp --guidance 2 --steps 50,1000 --n 32 \
    --evaluator "$EVALUATOR" --out runs/diffusion-ddp/eval-ddpm \
    > runs/diffusion-ddp-eval-ddpm.log 2>&1
  stamp ddpm_end
}
lane_b() {
  tinygen train diffusion --data shapes --cond none --objective v_prediction --preset shapes \
    --schedule linear --precision bf16 --max-iters 1000 --eval-interval 500 --out runs/diffusion-uncond \
    --no-progress > runs/diffusion-uncond.log 2>&1
  tinygen train noisy-classifier --data shapes --preset shapes --schedule linear --precision bf16 \
    --max-iters 1500 --ema-decay 0 --eval-interval 500 --out runs/noisy-classifier \
    --no-progress > runs/noisy-classifier.log 2>&1
  tinygen eval diffusion --run runs/diffusion-uncond --classifier runs/noisy-classifier \
    --classifier-scales 0,2,4,8 --steps 25 --n 64 --evaluator "$EVALUATOR" \
    --out runs/diffusion-uncond/eval-cg > runs/diffusion-eval-cg.log 2>&1
  stamp cg_end
}
lane_a & lane_b & wait

# 3. speed: DDIM-50 sampling at batch 64, and U-Net training against diffusers (+ bf16)
python benchmarks/diffusion_sampling_speed.py --run runs/diffusion-ddp --batch 64 \
  --steps 50 --repeats 2 > runs/diffusion-sampling-speed.log 2>&1
OMP_NUM_THREADS=2 python benchmarks/diffusion_train_speed.py --batch 48 --repeats 6 --bf16 \
  > runs/diffusion-train-speed.log 2>&1
stamp speed_end
