"""The simplest LoRA fine-tune there is: a 2-D two-class problem.

An MLP learns to separate two interleaved half-moons. The world then changes -- the same
moons rotated (and optionally shifted) -- and the frozen classifier fails on it. LoRA
adapters on the hidden layers, a small share of the parameters, adapt it back. A rotation
x -> R x is exactly a rank-2 change of the first layer (W -> W R), so a rank-2 adapter can
undo it: the toy shows LoRA finding that low-rank update by gradient descent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.finetune.lora import TrainableView, apply_lora
from tinygen.recipes.common import fit
from tinygen.train.config import TrainConfig


@dataclass
class ToyConfig:
    n_points: int = field(default=2000, metadata={"help": "points per data set", "min": 10})
    noise: float = field(default=0.1, metadata={"help": "Gaussian noise on the moons", "min": 0})
    rotation: float = field(default=60.0, metadata={"help": "degrees the new task is rotated"})
    shift: float = field(default=0.0, metadata={"help": "offset added to both coordinates"})
    hidden: int = field(default=64, metadata={"help": "MLP width", "min": 1})
    r: int = field(default=2, metadata={"help": "LoRA rank", "min": 1})
    alpha: float = field(default=4.0, metadata={"help": "LoRA alpha", "above": 0})
    targets: str = field(default="fc1,fc2,fc3", metadata={"help": "layers LoRA adapts"})
    base_steps: int = field(default=600, metadata={"help": "steps to train the base", "min": 1})
    lora_steps: int = field(default=400, metadata={"help": "steps to train the adapter", "min": 1})
    lr: float = field(default=1e-2, metadata={"help": "learning rate of both stages", "above": 0})
    seed: int = field(default=0, metadata={"help": "seed of the data and the weights", "min": 0})


class ToyMLP(nn.Module):
    """2 -> hidden -> hidden -> hidden -> 2 with ReLU."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, hidden), nn.Linear(hidden, hidden)
        self.fc3, self.head = nn.Linear(hidden, hidden), nn.Linear(hidden, 2)

    def forward(self, x: Tensor) -> Tensor:  # (N, 2) -> logits (N, 2)
        x = F.relu(self.fc1(x))
        return self.head(F.relu(self.fc3(F.relu(self.fc2(x)))))


def make_moons(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two interleaved half circles, centred on the origin: points (n, 2), labels (n,)."""
    labels = torch.arange(n) % 2
    angle = torch.rand(n, generator=generator) * math.pi
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(labels[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    points = points + noise * torch.randn(n, 2, generator=generator)
    return points, labels


def transform(points: Tensor, rotation_degrees: float, shift: float) -> Tensor:
    """Rotate about the origin, then shift both coordinates: the "new" task."""
    theta = math.radians(rotation_degrees)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return points @ rot.T + shift


def accuracy(model: nn.Module, points: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(points).argmax(dim=1) == labels).float().mean().item()


class PointsTask:
    """Classification of 2-D points, for the shared Trainer."""

    def __init__(self, model: nn.Module, splits: dict[str, tuple[Tensor, Tensor]]) -> None:
        self.model, self.splits = model, splits

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator):
        points, labels = self.splits[split]
        idx = torch.randint(len(points), (batch_size,), generator=generator)
        return points[idx], labels[idx]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        points, labels = batch
        return F.cross_entropy(model(points), labels)


def _fit(task: PointsTask, steps: int, lr: float, seed: int, run_dir: Path, config: dict) -> None:
    train = TrainConfig(
        max_iters=steps,
        batch_size=128,
        learning_rate=lr,
        lr_schedule="cosine",
        warmup_iters=0,
        weight_decay=0.0,
        eval_interval=steps,
        eval_iters=4,
        log_interval=max(1, steps // 20),
        seed=seed,
        device="cpu",
    )
    fit(task, train, run_dir, config, progress=False, announce=False)


@dataclass
class ToyResult:
    base_acc_original: float
    base_acc_new: float
    lora_acc_new: float
    lora_acc_original: float
    trainable: int
    total: int
    picture: Path | None

    def summary(self) -> str:
        return (
            f"base MLP: accuracy {self.base_acc_original:.3f} on its task, "
            f"{self.base_acc_new:.3f} on the rotated/shifted task\n"
            f"after LoRA ({self.trainable:,} of {self.total:,} parameters trainable, "
            f"{100 * self.trainable / self.total:.1f}%): {self.lora_acc_new:.3f} on the new "
            f"task ({self.lora_acc_original:.3f} on the old one)"
        )


def run_toy(config: ToyConfig, out_dir: str | Path, *, picture: bool = True) -> ToyResult:
    """Train the base on the moons, LoRA-adapt it to the transformed moons, and save the
    decision boundaries before and after to out_dir/decision_boundaries.png."""
    if config.n_points < 10:
        raise TinygenError(f"--n-points must be at least 10, got {config.n_points}")
    out_dir = Path(out_dir)
    gen = torch.Generator().manual_seed(config.seed)
    old = {s: make_moons(config.n_points, config.noise, gen) for s in ("train", "val")}
    new = {s: (transform(p, config.rotation, config.shift), y) for s, (p, y) in old.items()}
    torch.manual_seed(config.seed)
    model = ToyMLP(config.hidden)
    record = {"model_type": "toy-mlp", "toy": asdict(config)}
    _fit(
        PointsTask(model, old), config.base_steps, config.lr, config.seed, out_dir / "base", record
    )
    model.eval()
    base_old, base_new = accuracy(model, *old["val"]), accuracy(model, *new["val"])
    before = _grid_predictions(model, new["val"][0]) if picture else None
    report = apply_lora(
        model, config.targets.split(","), r=config.r, alpha=config.alpha, seed=config.seed
    )
    _fit(
        PointsTask(TrainableView(model), new),
        config.lora_steps,
        config.lr,
        config.seed,
        out_dir / "lora",
        record,
    )
    model.eval()
    path = None
    if picture:
        path = out_dir / "decision_boundaries.png"
        _plot(
            before,
            _grid_predictions(model, new["val"][0]),
            new["val"],
            path,
            (base_new, accuracy(model, *new["val"])),
        )
    return ToyResult(
        base_old,
        base_new,
        accuracy(model, *new["val"]),
        accuracy(model, *old["val"]),
        report.trainable,
        report.total,
        path,
    )


def _grid_predictions(model: nn.Module, points: Tensor, steps: int = 200):
    lo, hi = points.min(0).values - 0.5, points.max(0).values + 0.5
    xs, ys = torch.linspace(lo[0], hi[0], steps), torch.linspace(lo[1], hi[1], steps)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        prob = model(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).softmax(1)[:, 1]
    return gx, gy, prob.view(steps, steps)


def _plot(before, after, data: tuple[Tensor, Tensor], path: Path, accs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, labels = data
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (gx, gy, prob), title, acc in zip(
        axes, (before, after), ("base model on the new task", "after LoRA"), accs
    ):
        ax.contourf(gx, gy, prob, levels=20, cmap="RdBu_r", alpha=0.6)
        ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="bwr", s=6, edgecolors="none")
        ax.set_title(f"{title}: accuracy {acc:.3f}")
        ax.set_aspect("equal")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
