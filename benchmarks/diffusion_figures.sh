#!/usr/bin/env bash
# The diffusion figures of docs/benchmarks.md, as they were run on the 2-core CPU:
#   bash benchmarks/diffusion_figures.sh
# One torch thread per process: this 2.9M-parameter U-Net trains at ~68 images/s on one
# thread and only ~72 on two (and 2-process DDP gave ~77), so the second core is worth more
# as a second job. Lane A trains the 30-minute class-conditional model; lane B meanwhile
# trains the unconditional model and the noisy classifier for classifier guidance. Then the
# evaluations run two at a time. Each step logs to runs/<name>.log and stamps its start/end
# time (seconds since the epoch) into runs/diffusion_figures2.times.
set -u
export OMP_NUM_THREADS=1
EVALUATOR=${EVALUATOR:-runs/evaluator}
TIMES=runs/diffusion_figures2.times
stamp() { echo "$1 $(date +%s)" >> "$TIMES"; }
mkdir -p runs

lane_a() {
  # the class-conditional model: at most 30 minutes (SIGINT at 1800 s would save it)
  stamp train_start
  timeout -s INT 1800 tinygen train diffusion --data shapes --cond class \
    --objective v_prediction --preset shapes --precision bf16 --out runs/diffusion-30min \
    --no-progress > runs/diffusion-30min.log 2>&1
  stamp train_end
}

lane_b() {
  # classifier guidance needs an unconditional model and a noisy classifier
  tinygen train diffusion --data shapes --cond none --objective v_prediction --preset shapes \
    --precision bf16 --max-iters 1000 --eval-interval 500 --out runs/diffusion-uncond \
    --no-progress > runs/diffusion-uncond.log 2>&1
  tinygen train noisy-classifier --data shapes --preset shapes --precision bf16 \
    --max-iters 600 --eval-interval 300 --out runs/noisy-classifier --no-progress \
    > runs/noisy-classifier.log 2>&1
  stamp cg_train_end
  tinygen eval diffusion --run runs/diffusion-uncond --classifier runs/noisy-classifier \
    --classifier-scales 0,2,4,8 --steps 25 --n 64 --evaluator "$EVALUATOR" \
    --out runs/diffusion-uncond/eval-cg > runs/diffusion-eval-cg.log 2>&1
  stamp cg_end
}

lane_a & lane_b & wait

# fidelity / feature distance: guidance x DDIM steps (lane A), and DDIM-50 against
# DDPM-1000 on the same 64 labels and seeds (lane B)
tinygen eval diffusion --run runs/diffusion-30min --guidance 0,1,2,4 --steps 10,25,50 \
  --n 128 --evaluator "$EVALUATOR" --out runs/diffusion-30min/eval-ddim \
  > runs/diffusion-eval-ddim.log 2>&1 &
tinygen eval diffusion --run runs/diffusion-30min --guidance 2 --steps 50,1000 --n 64 \
  --evaluator "$EVALUATOR" --out runs/diffusion-30min/eval-ddpm \
  > runs/diffusion-eval-ddpm.log 2>&1 &
wait
stamp eval_end

# speed: DDIM-50 sampling at batch 64, and U-Net training against diffusers
python benchmarks/diffusion_sampling_speed.py --run runs/diffusion-30min --batch 64 \
  --steps 50 --repeats 2 > runs/diffusion-sampling-speed.log 2>&1
python benchmarks/diffusion_train_speed.py --batch 48 --repeats 6 \
  > runs/diffusion-train-speed.log 2>&1
stamp speed_end
