"""The one training loop. It knows no model by name (minGPT's trainer, grown up).

A model plugs in through a `Task`: how to draw a batch, how to compute the loss, and
optional hooks. The trainer owns everything else: AdamW, the learning-rate schedule,
gradient accumulation and clipping, bf16 autocast on CUDA, torch.compile, DDP under
torchrun, evaluation, EMA, metrics, progress bar, checkpoints, resume and Ctrl-C.

Resuming is exact: the trainer state holds the weights, the optimiser, the step, the
global RNG state and the data generator's state, so a resumed run draws the same
batches and the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.train import checkpoint as ckpt
from tinygen.train.config import TrainConfig
from tinygen.train.device import announce_precision_and_threads, autocast, resolve_device
from tinygen.train.distributed import DistInfo, all_reduce_mean, setup_distributed
from tinygen.train.ema import EMA
from tinygen.train.lr import get_lr
from tinygen.train.optim import make_optimizer
from tinygen.train.plots import plot_loss
from tinygen.train.resume_config import (  # noqa: F401 - config_differences: its old home
    check_same_model_config,
    config_differences,
    record_resume,
)


@runtime_checkable
class Task(Protocol):
    """What a model must provide to be trained.

    model: the nn.Module whose parameters are trained (only those with requires_grad).
    get_batch(split, batch_size, generator): a batch (tensor, tuple or dict of tensors, on
        the CPU) drawn with `generator` so that resume reproduces the data order.
    loss(model, batch): a scalar loss; `batch` is already on the model's device.
    Optional attributes/methods, used when present:
    items_per_sample (int) and items_name (str): for the throughput display (e.g. tokens).
    after_step(model): called after each optimiser step (e.g. CLIP's temperature clamp).
    evaluate(model, step) -> dict: extra metrics at each evaluation (on rank 0).
    on_end(model, run_dir): pictures or reports at the end of training (on rank 0).
    """

    model: nn.Module

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...


@dataclass
class TrainResult:
    step: int
    best_val_loss: float
    last_val_loss: float | None
    interrupted: bool = False
    history: list[dict] = field(default_factory=list)


RUN_FILES = (
    ckpt.CONFIG_FILE,
    ckpt.MODEL_FILE,
    ckpt.BEST_FILE,
    ckpt.EMA_FILE,
    ckpt.STATE_FILE,
    ckpt.METRICS_FILE,
)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or a tuple/list/dict of tensors, to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Train `task.model` under `config`, writing the run to `run_dir`.

    run_config: what config.json records besides the training config (model_type, the
    model config, the data description) -- enough to rebuild the model with no code from
    the run. With `resume=True` the run continues from run_dir/trainer_state.pt.
    """

    def __init__(
        self,
        task: Task,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        run_config: dict | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        config.validate()
        self.task, self.config, self.run_dir = task, config, Path(run_dir)
        self.run_config = dict(run_config or {})
        self.device = resolve_device(config.device)
        self.dist: DistInfo = setup_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.progress = progress and self.dist.is_main
        self.model = task.model.to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device.type)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        self.best_val = math.inf
        # Each rank draws different batches; rank 0 alone would suffice for eval.
        self.data_gen = torch.Generator().manual_seed(config.seed + 1000 * self.dist.rank)
        torch.manual_seed(config.seed + self.dist.rank)
        if resume:
            self._load_state()
        elif self.dist.is_main:
            self._start_fresh_run()
        self.forward_model: nn.Module = self.model
        if config.compile:
            self.forward_model = torch.compile(self.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)

    # -- run directory -------------------------------------------------------------------

    def _start_fresh_run(self) -> None:
        """Start a new run in run_dir, which must not hold one unless `overwrite` is set:
        any of a run's files (config, weights, trainer state, metrics) counts, so a finished
        run whose trainer state was deleted is not trained over either."""
        ckpt.check_writable_dir(self.run_dir, "--out")
        found = [name for name in RUN_FILES if (self.run_dir / name).exists()]
        if found and not self.config.overwrite:
            raise TinygenError(
                f"{self.run_dir} already holds a run ({', '.join(found)}); add --resume to "
                "continue it, --overwrite to replace it, or pass another --out"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in found:  # --overwrite: nothing of the old run may pass for the new one's
            (self.run_dir / name).unlink()
        ckpt.write_json(self.run_dir / ckpt.CONFIG_FILE, self._full_config())

    def _full_config(self) -> dict:
        return {**self.run_config, "train": asdict(self.config), "world_size": self.dist.world_size}

    def _load_state(self) -> None:
        check_same_model_config(self.run_dir, self.run_config)
        state = ckpt.load_state(self.run_dir / ckpt.STATE_FILE)
        missing = self.model.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys or any(
            k not in ckpt._tied_names(self.model) for k in missing.missing_keys
        ):
            raise TinygenError(
                f"cannot resume: {self.run_dir} was trained with a different model config"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best_val = float(state["best_val"])
        if self.dist.is_main:
            record_resume(self.run_dir, self._full_config(), self.step)
        self.data_gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.ema is not None and "ema" in state:
            self.ema.model.load_state_dict(state["ema"], strict=False)
        if self.dist.is_main:
            self._truncate_metrics_after(self.step)

    def _truncate_metrics_after(self, step: int) -> None:
        """Drop metrics logged after the checkpoint; the resumed run logs them again."""
        path = self.run_dir / ckpt.METRICS_FILE
        rows = [r for r in _read_jsonl(path) if r["step"] <= step]
        ckpt.atomic_write(
            path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows))
        )

    def save_checkpoint(self) -> None:
        """Write trainer_state.pt (everything resume needs) then model.safetensors."""
        if not self.dist.is_main:
            return
        state = {
            "step": self.step,
            "best_val": self.best_val,
            "model": ckpt.state_dict_for_saving(self.model),
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.ema is not None:
            state["ema"] = ckpt.state_dict_for_saving(self.ema.model)
        ckpt.save_state(state, self.run_dir / ckpt.STATE_FILE)
        ckpt.save_weights(self.model, self.run_dir / ckpt.MODEL_FILE, {"step": self.step})
        if self.ema is not None:
            ckpt.save_weights(self.ema.model, self.run_dir / ckpt.EMA_FILE, {"step": self.step})

    def _log(self, row: dict) -> None:
        if self.dist.is_main:
            with open(self.run_dir / ckpt.METRICS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")

    # -- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def estimate_loss(self, splits: tuple[str, ...] = ("train", "val")) -> dict[str, float]:
        """Mean loss over `eval_iters` batches per split, with a generator seeded from the
        step so evaluation never disturbs the training data order."""
        model = self.ema.model if self.ema is not None else self.model
        model.eval()
        out = {}
        for split in splits:
            gen = torch.Generator().manual_seed(self.config.seed + 7 * self.step + 1)
            total = torch.zeros((), device=self.device)
            for _ in range(self.config.eval_iters):
                batch = to_device(
                    self.task.get_batch(split, self.config.batch_size, gen), self.device
                )
                with autocast(self.device, self.config.precision):
                    total += self.task.loss(model, batch).float()
            out[split] = (total / self.config.eval_iters).item()
        self.model.train()
        return out

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg = self.config
        items = getattr(self.task, "items_per_sample", 1) * cfg.batch_size * cfg.grad_accum
        items *= self.dist.world_size
        items_name = getattr(self.task, "items_name", "samples")
        history: list[dict] = []
        last_val: float | None = None
        if self.dist.is_main:  # the precision and thread lines (a slow-bf16 warning always)
            announce_precision_and_threads(self.device, cfg.precision, verbose=self.progress)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.max_iters, initial=self.step, desc="train", unit="it", dynamic_ncols=True
            )
        self.model.train()
        interrupted = False
        t_last, step_last = time.perf_counter(), self.step
        deadline = t_last + 60 * cfg.max_minutes if cfg.max_minutes > 0 else None
        out_of_time = False
        try:
            while self.step < cfg.max_iters and not out_of_time:
                lr = get_lr(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self._train_step()
                self.step += 1
                if deadline is not None and self.step % cfg.log_interval == 0:
                    out_of_time = self._past(deadline)
                last = self.step == cfg.max_iters or out_of_time
                if self.step % cfg.log_interval == 0 or last:
                    now = time.perf_counter()
                    loss_value = loss.item()  # the one host sync per log interval
                    if not math.isfinite(loss_value):
                        raise TinygenError(
                            f"the loss became {loss_value} at step {self.step}; lower "
                            "--learning-rate or raise --warmup-iters"
                        )
                    rate = items * (self.step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, self.step
                    row = {
                        "step": self.step,
                        "train_loss": loss_value,
                        "lr": lr,
                        f"{items_name}_per_s": rate,
                    }
                    self._log(row)
                    history.append(row)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{loss_value:.4f}", **{f"{items_name}/s": f"{rate:,.0f}"}
                        )
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.eval_interval == 0 or last:
                    last_val = self._evaluate(history)
                    # the throughput of the next log leaves the evaluation's time out
                    t_last, step_last = time.perf_counter(), self.step
        except KeyboardInterrupt:
            interrupted = True
            self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if out_of_time and self.dist.is_main:
            print(
                f"stopped at step {self.step} of {cfg.max_iters}: --max-minutes "
                f"{cfg.max_minutes:g} reached ({self.run_dir} can be resumed with --resume)",
                file=sys.stderr,
            )
        if self.dist.is_main and not interrupted:
            try:
                self._draw_end_pictures()
            except KeyboardInterrupt:
                print(
                    f"interrupted while drawing the end-of-run pictures: training had finished "
                    f"(step {self.step}) and {self.run_dir} holds the finished run; nothing "
                    "to resume",
                    file=sys.stderr,
                )
        return TrainResult(self.step, self.best_val, last_val, interrupted, history)

    def _past(self, deadline: float) -> bool:
        """Whether this process is past its --max-minutes deadline; under torchrun the ranks
        agree (any rank past it stops all), so they stop at the same step."""
        past = time.perf_counter() >= deadline
        if not self.dist.enabled:
            return past
        return bool(all_reduce_mean(torch.tensor(float(past), device=self.device), self.dist) > 0)

    def _draw_end_pictures(self) -> None:
        plot_loss(
            self.run_dir / ckpt.METRICS_FILE,
            self.run_dir / "loss.png",
            title=self.run_config.get("model_type", ""),
        )
        on_end = getattr(self.task, "on_end", None)
        if on_end is not None:
            on_end(self.ema.model if self.ema is not None else self.model, self.run_dir)

    def _train_step(self) -> Tensor:
        cfg = self.config
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            batch = to_device(
                self.task.get_batch("train", cfg.batch_size, self.data_gen), self.device
            )
            sync = micro == cfg.grad_accum - 1
            context = (
                self.forward_model.no_sync()
                if self.dist.enabled and not sync
                else contextlib.nullcontext()
            )
            with context, autocast(self.device, self.config.precision):
                loss = self.task.loss(self.forward_model, batch) / cfg.grad_accum
            with context:
                loss.backward()
            total += loss.detach()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        after_step = getattr(self.task, "after_step", None)
        if after_step is not None:
            after_step(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        return total

    def _evaluate(self, history: list[dict]) -> float:
        losses = self.estimate_loss()
        row: dict = {
            "step": self.step,
            "val_loss": losses["val"],
            "eval_train_loss": losses["train"],
            "time": time.time(),  # wall clock, for time-to-target measurements
        }
        if self.dist.is_main:
            evaluate = getattr(self.task, "evaluate", None)
            if evaluate is not None:
                model = self.ema.model if self.ema is not None else self.model
                model.eval()
                row.update(evaluate(model, self.step))
                self.model.train()
        if losses["val"] < self.best_val:
            self.best_val = losses["val"]
            if self.dist.is_main:
                best = self.ema.model if self.ema is not None else self.model
                ckpt.save_weights(best, self.run_dir / ckpt.BEST_FILE, {"step": self.step})
        self._log(row)
        history.append(row)
        self.save_checkpoint()
        if self.progress:
            from tqdm.auto import tqdm

            extra = "".join(
                f", {k} {v:.4f}"
                for k, v in row.items()
                if k not in ("step", "val_loss", "eval_train_loss", "time") and isinstance(v, float)
            )
            tqdm.write(
                f"step {self.step}: train {losses['train']:.4f}, val {losses['val']:.4f}{extra}"
            )
        return losses["val"]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is unreliable
    return rows
