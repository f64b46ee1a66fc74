"""`tinygen train diffusion`, `train noisy-classifier`, `sample diffusion`, `eval diffusion`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from tinygen.cli.common import add_dataclass_flags, dataclass_from_args, interrupted
from tinygen.errors import TinygenError
from tinygen.nn.unet import UNetConfig
from tinygen.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named recipe: the U-Net, the training run and the defaults of the diffusion process.

    `beta_schedule` and `prediction_type` are only defaults: `--schedule` and `--objective`
    override them (a noisy classifier takes the schedule too, so it matches its model).
    """

    unet: UNetConfig
    train: TrainConfig
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"


# "shapes" is the 30-minute CPU recipe of docs/benchmarks.md; "tiny" is for tests and smoke runs.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        UNetConfig(
            base_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            head_channels=16,
            norm_groups=8,
        ),
        TrainConfig(
            max_iters=200,
            batch_size=16,
            learning_rate=1e-3,
            warmup_iters=20,
            eval_interval=100,
            eval_iters=4,
            log_interval=10,
            weight_decay=0.0,
            ema_decay=0.99,
        ),
    ),
    "shapes": Preset(
        UNetConfig(
            base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, attention_resolutions=(8,)
        ),
        # sized for 30 minutes on one CPU thread with --precision bf16 (AMX): ~55-65 images/s
        # (a second thread adds almost nothing for this model; docs/benchmarks.md trains it as
        # two one-thread DDP processes, 2,500 steps of batch 2 x 24)
        TrainConfig(
            max_iters=2400,
            batch_size=48,
            learning_rate=2e-3,
            warmup_iters=100,
            eval_interval=800,
            eval_iters=5,
            log_interval=20,
            weight_decay=0.0,
            ema_decay=0.998,
        ),
        # measured in docs/benchmarks.md: cosine + v-prediction reach >= 90% prompt fidelity
        beta_schedule="cosine",
        prediction_type="v_prediction",
    ),
}
UNET_EXCLUDE = ("in_channels", "out_channels", "num_classes", "context_dim")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def register(commands) -> None:
    for name, helptext in (
        ("diffusion", "train a DDPM-style diffusion model (U-Net)"),
        ("noisy-classifier", "train a classifier on noisy images x_t, for classifier guidance"),
    ):
        train = commands.train.add_parser(name, help=helptext, description=helptext)
        train.add_argument(
            "--data",
            default="shapes",
            help="shapes (the built-in world) | PATH to a folder of images",
        )
        train.add_argument("--preset", choices=sorted(PRESETS), default="shapes")
        train.add_argument(
            "--schedule",
            dest="beta_schedule",
            default=None,
            help="beta schedule: linear | scaled_linear | cosine (default: the preset's; "
            "shapes: cosine, tiny: linear)",
        )
        train.add_argument("--num-train-timesteps", type=int, default=1000)
        train.add_argument(
            "--n-train",
            type=int,
            default=20000,
            help="shapes images to draw for training (default 20000)",
        )
        train.add_argument(
            "--out", type=Path, default=None, help=f"run directory (default runs/{name})"
        )
        train.add_argument("--resume", action="store_true", help="continue the run in --out")
        train.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "diffusion":
            train.add_argument(
                "--cond",
                dest="conditioning",
                default="none",
                help="none | class ((colour, shape) label with a null label)",
            )
            train.add_argument(
                "--objective",
                dest="prediction_type",
                default=None,
                help="epsilon | sample | v_prediction (default: the preset's; "
                "shapes: v_prediction, tiny: epsilon)",
            )
            train.add_argument(
                "--min-snr-gamma",
                type=float,
                default=0.0,
                help="min-SNR-gamma loss weighting (e.g. 5); 0 disables",
            )
            train.add_argument(
                "--label-embedding",
                choices=("factored", "joint"),
                default="factored",
                help="factored: one embedding per colour and per shape, summed (default); "
                "joint: one per (colour, shape) class",
            )
            train.add_argument(
                "--cond-drop-prob",
                type=float,
                default=0.1,
                help="how often the label is dropped for CFG (default 0.1)",
            )
        add_dataclass_flags(train, UNetConfig, exclude=UNET_EXCLUDE, title="U-Net")
        add_dataclass_flags(train, TrainConfig, title="training")
        train.set_defaults(func=train_diffusion if name == "diffusion" else train_classifier)

    sample = commands.sample.add_parser(
        "diffusion",
        help="draw images from a trained diffusion run",
        description="Draw a grid of samples and a denoising strip (x_t and predicted x_0).",
    )
    _add_sampling_flags(sample)
    sample.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    sample.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    sample.add_argument(
        "--guidance",
        type=float,
        default=2.0,
        help="classifier-free guidance scale (class models; default 2)",
    )
    sample.add_argument("--classifier-scale", type=float, default=1.0)
    sample.add_argument(
        "--label",
        default=None,
        help='class to draw, e.g. "red circle" (comma-separate several); '
        "default: cycle through the classes",
    )
    sample.add_argument("--n", type=int, default=16, help="images (default 16)")
    sample.add_argument("--out", type=Path, default=Path("grid.png"))
    sample.add_argument(
        "--strip", type=Path, default=None, help="denoising strip picture (default OUT_strip.png)"
    )
    sample.set_defaults(func=sample_diffusion)

    evaluate = commands.eval.add_parser(
        "diffusion",
        help="prompt fidelity and feature distance over sampling settings",
        description="Fidelity (shapes evaluator) and feature distance for every guidance x "
        "steps combination; steps equal to the training steps use DDPM, fewer "
        "DDIM. Writes eval.json, eval.md and fidelity_diversity.png.",
    )
    _add_sampling_flags(evaluate)
    evaluate.add_argument("--guidance", type=_floats, default=[0.0, 1.0, 2.0, 4.0])
    evaluate.add_argument("--steps", type=_ints, default=[10, 25, 50, 1000])
    evaluate.add_argument(
        "--classifier-scales",
        type=_floats,
        default=None,
        help="with --classifier: sweep these scales (e.g. 0,1,2,4,8)",
    )
    evaluate.add_argument("--n", type=int, default=256, help="images per setting")
    evaluate.add_argument(
        "--n-ddpm",
        type=int,
        default=None,
        help="images for full-length DDPM settings (default --n)",
    )
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument(
        "--split",
        choices=("val", "heldout"),
        default="val",
        help="prompts and real images from the val split (the training distribution) or "
        "from the held-out (colour, shape) pairs the model never saw (default val)",
    )
    evaluate.add_argument(
        "--evaluator",
        type=Path,
        default=None,
        help="evaluator run (default: $TINYGEN_EVALUATOR, the cache, runs/evaluator)",
    )
    evaluate.add_argument("--out", type=Path, default=None, help="default RUN/eval")
    evaluate.set_defaults(func=eval_diffusion)


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="diffusion run directory")
    parser.add_argument(
        "--checkpoint",
        choices=("ema", "best", "last"),
        default="ema",
        help="weights to load (default ema; falls back to last without EMA)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1]")
    parser.add_argument(
        "--spacing",
        choices=("leading", "trailing", "linspace"),
        default="leading",
        help="which training timesteps the steps visit: leading (0, k, 2k, ...; default, as "
        "diffusers), trailing (down from T - 1: the first step starts from the noisiest one) "
        "or linspace",
    )
    parser.add_argument(
        "--thresholding",
        action="store_true",
        help="dynamic thresholding of the predicted x_0 (Imagen) instead of clipping",
    )
    parser.add_argument(
        "--no-recompute-eps",
        dest="recompute_eps",
        action="store_false",
        help="DDIM: keep the model's own eps after clipping x_0 (diffusers' default) instead "
        "of recomputing it from the clipped x_0; drifts to wrong colours under strong guidance",
    )
    parser.add_argument(
        "--classifier", type=Path, default=None, help="noisy-classifier run for classifier guidance"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


# -- training --------------------------------------------------------------------------------


def _configs(args: argparse.Namespace) -> tuple[UNetConfig, TrainConfig]:
    """The preset's configs with the command line's flags applied; fills the preset's
    schedule (and objective) into `args` where the command line left them out."""
    preset = PRESETS[args.preset]
    if args.beta_schedule is None:
        args.beta_schedule = preset.beta_schedule
    if "prediction_type" in vars(args) and args.prediction_type is None:  # (a classifier has none)
        args.prediction_type = preset.prediction_type
    unet = dataclass_from_args(UNetConfig, args, preset.unet)
    train = dataclass_from_args(TrainConfig, args, preset.train)
    return unet, train


def _load_data(args: argparse.Namespace, image_size: int, seed: int):
    from tinygen.models.diffusion import ImageData

    if args.data != "shapes" and not Path(args.data).is_dir():
        raise TinygenError(f"--data {args.data!r} is neither 'shapes' nor a folder of images")
    return ImageData(args.data, image_size=image_size, n_train=args.n_train, seed=seed)


def _fit(task, model, train_config: TrainConfig, out: Path, run_config: dict, args) -> int:
    from tinygen.train.trainer import Trainer

    torch.manual_seed(train_config.seed)
    trainer = Trainer(
        task,
        train_config,
        out,
        run_config=run_config,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        print(
            f"{run_config['model_type']} with {model.num_params() / 1e6:.2f}M parameters -> {out}",
            file=sys.stderr,
        )
    result = trainer.fit()
    if interrupted(result, out):
        return 130
    return 0


def train_diffusion(args: argparse.Namespace) -> int:
    from tinygen.models.diffusion import DiffusionConfig, DiffusionModel, DiffusionTask

    unet, train_config = _configs(args)
    data = _load_data(args, unet.image_size, train_config.seed)
    config = DiffusionConfig(
        unet=unet,
        beta_schedule=args.beta_schedule,
        num_train_timesteps=args.num_train_timesteps,
        prediction_type=args.prediction_type,
        conditioning=args.conditioning,
        num_classes=data.num_classes or 48,
        label_factors=data.label_factors if args.label_embedding == "factored" else (),
        cond_drop_prob=args.cond_drop_prob,
        min_snr_gamma=args.min_snr_gamma,
    )
    torch.manual_seed(train_config.seed)
    model = DiffusionModel(config)
    task = DiffusionTask(model, data)
    run_config = {
        "model_type": "diffusion",
        "model": dataclasses.asdict(config),
        "data": data.describe(),
    }
    return _fit(task, model, train_config, args.out or Path("runs/diffusion"), run_config, args)


def train_classifier(args: argparse.Namespace) -> int:
    from tinygen.models.noisy_classifier import (
        NoisyClassifier,
        NoisyClassifierConfig,
        NoisyClassifierTask,
    )

    unet, train_config = _configs(args)
    data = _load_data(args, unet.image_size, train_config.seed)
    config = NoisyClassifierConfig(
        unet=unet,
        num_classes=data.num_classes or 48,
        beta_schedule=args.beta_schedule,
        num_train_timesteps=args.num_train_timesteps,
    )
    torch.manual_seed(train_config.seed)
    model = NoisyClassifier(config)
    task = NoisyClassifierTask(model, data)
    run_config = {
        "model_type": "noisy-classifier",
        "model": dataclasses.asdict(config),
        "data": data.describe(),
    }
    out = args.out or Path("runs/noisy-classifier")
    return _fit(task, model, train_config, out, run_config, args)


# -- sampling and evaluation ---------------------------------------------------------------


def _load(args: argparse.Namespace):
    from tinygen.train.device import resolve_device
    from tinygen.train.runs import load_model

    device = resolve_device(args.device)
    which = args.checkpoint
    if which == "ema" and not (args.run / "ema.safetensors").is_file():
        which = "last"
    model, config = load_model(args.run, which=which, device=device)
    if config["model_type"] != "diffusion":
        raise TinygenError(f"{args.run} is a {config['model_type']} run, not a diffusion run")
    classifier = None
    if args.classifier is not None:
        classifier, cconfig = load_model(args.classifier, which="last", device=device)
        if cconfig["model_type"] != "noisy-classifier":
            raise TinygenError(
                f"--classifier {args.classifier} is a {cconfig['model_type']} "
                "run; train one with `tinygen train noisy-classifier`"
            )
    return model, classifier, device


def parse_labels(text: str | None, n: int, num_classes: int = 48) -> torch.Tensor:
    """`--label "red circle,blue star"` -> (n,) class indices, cycling through the given
    labels (or, without --label, through the classes of the training split)."""
    from tinygen.data.shapes import allowed_combos, combo_index, parse_prompt

    if text is None:
        pool = allowed_combos("train")
    else:
        pool = []
        for part in [p.strip() for p in text.split(",") if p.strip()]:
            attrs = parse_prompt(part)
            if "color" not in attrs or "shape" not in attrs:
                raise TinygenError(
                    f"--label {part!r} must name a colour and a shape, e.g. 'red circle'"
                )
            pool.append(combo_index(attrs["color"], attrs["shape"]))
    return torch.tensor([pool[i % len(pool)] for i in range(n)])


def sample_diffusion(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid

    if args.n <= 0:
        raise TinygenError(f"--n must be positive, got {args.n}")
    model, classifier, device = _load(args)
    uses_labels = model.config.class_conditional or classifier is not None
    labels = parse_labels(args.label, args.n) if uses_labels else None
    if args.label is not None and not uses_labels:
        raise TinygenError("this model is unconditional; --label needs --classifier RUN")
    strip_every = max(1, args.steps // 10)
    strip: list[torch.Tensor] = []

    def record(index: int, t: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if index % strip_every == 0 or index == args.steps - 1:
            strip.append(torch.stack([x_t[0].clamp(-1, 1), pred_x0[0].clamp(-1, 1)]).cpu())

    gen = torch.Generator(device=device).manual_seed(args.seed)
    images = model.generate(
        args.n,
        labels=labels,
        guidance=args.guidance,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        generator=gen,
        classifier=classifier,
        classifier_scale=args.classifier_scale if classifier is not None else 0.0,
        thresholding=args.thresholding,
        recompute_eps=args.recompute_eps,
        spacing=args.spacing,
        callback=record,
        progress=True,
    )
    save_image_grid(images, args.out, scale=4)
    strip_path = args.strip or args.out.with_name(args.out.stem + "_strip.png")
    pictures = torch.cat([torch.stack([s[0] for s in strip]), torch.stack([s[1] for s in strip])])
    save_image_grid(pictures, strip_path, nrow=len(strip), scale=4)
    print(
        f"wrote {args.out} ({args.n} images) and {strip_path} (top: x_t, bottom: predicted "
        f"x_0, over {args.steps} {args.sampler} steps)",
        file=sys.stderr,
    )
    return 0


def eval_diffusion(args: argparse.Namespace) -> int:
    from tinygen.eval.diffusion_eval import Setting, evaluate_settings, write_report
    from tinygen.eval.fidelity import load_evaluator

    model, classifier, device = _load(args)
    evaluator = load_evaluator(args.evaluator, device=device)
    total = model.config.num_train_timesteps
    scales = args.classifier_scales if classifier is not None else None
    if classifier is not None and scales is None:
        raise TinygenError("--classifier needs --classifier-scales (e.g. 0,1,2,4,8)")

    def setting(guidance: float, sampler: str, steps: int, classifier_scale: float) -> Setting:
        return Setting(
            guidance=guidance,
            sampler=sampler,
            steps=steps,
            classifier_scale=classifier_scale,
            eta=args.eta,
            thresholding=args.thresholding,
            recompute_eps=args.recompute_eps,
            spacing=args.spacing,
        )

    settings = []
    for steps in args.steps:
        sampler = "ddpm" if steps == total else "ddim"
        if scales is not None:
            guidance = args.guidance[0] if model.config.class_conditional else 1.0
            settings += [setting(guidance, sampler, steps, s) for s in scales]
        elif model.config.class_conditional:
            settings += [setting(g, sampler, steps, 0.0) for g in args.guidance]
        else:
            settings.append(setting(1.0, sampler, steps, 0.0))
    n_for = {total: args.n_ddpm} if args.n_ddpm else None
    rows = evaluate_settings(
        model,
        settings,
        n=args.n,
        n_for=n_for,
        evaluator=evaluator,
        classifier=classifier,
        batch_size=args.batch_size,
        seed=args.seed,
        split=args.split,
        log=lambda line: print(line, file=sys.stderr),
    )
    paths = write_report(rows, args.out or args.run / "eval", title=str(args.run))
    print(paths["table"].read_text())
    print(f"wrote {paths['json']}, {paths['table']} and {paths['plot']}", file=sys.stderr)
    return 0
