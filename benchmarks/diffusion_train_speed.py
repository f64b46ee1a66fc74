"""U-Net training throughput: tinygen's U-Net against diffusers' `UNet2DModel` of the same
size (the `shapes` preset: widths 32/64/128, one residual block per level, attention at
8x8 and in the middle, scale-shift time embedding, 49 class embeddings), measured side by
side in one process: the two models alternate, each timed step is forward + MSE + backward
+ AdamW on the same batch, and we report the median images/s of each and their ratio.

    python benchmarks/diffusion_train_speed.py --batch 48 --repeats 10 --bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from tinygen.nn.unet import UNet, UNetConfig


def make_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    from diffusers import UNet2DModel

    ours = UNet(
        UNetConfig(
            base_channels=32,
            channel_mult=(1, 2, 4),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_classes=49,
        )
    )
    theirs = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=32,
        num_class_embeds=49,
        resnet_time_scale_shift="scale_shift",
    )
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time tinygen's U-Net under CPU bf16 autocast (--precision bf16)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    ours, theirs = make_models()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    target = torch.randn(args.batch, 3, 32, 32, generator=g)
    t = torch.randint(1000, (args.batch,), generator=g)
    y = torch.randint(49, (args.batch,), generator=g)
    forwards = {
        "tinygen UNet": (ours, lambda: ours(x, t, y)),
        "diffusers UNet2DModel": (theirs, lambda: theirs(x, t, class_labels=y).sample),
    }
    if args.bf16:
        ours_bf16 = copy.deepcopy(ours)

        def forward_bf16() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return ours_bf16(x, t, y).float()

        forwards["tinygen UNet, bf16 autocast"] = (ours_bf16, forward_bf16)
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (m, _) in forwards.items()}
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for i in range(args.warmup + args.repeats):
        for name, (_model, forward) in forwards.items():
            start = time.perf_counter()
            loss = (forward() - target).square().mean()
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            optims[name].step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"32x32, {args.repeats} timed steps each (median)"
    )
    rates = {}
    for name, (model, _) in forwards.items():
        rates[name] = args.batch / statistics.median(times[name])
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.3f}M parameters, {rates[name]:.1f} images/s")
    ratio = rates["tinygen UNet"] / rates["diffusers UNet2DModel"]
    print(f"ratio tinygen / diffusers: {ratio:.2f}")
    if args.bf16:
        speedup = rates["tinygen UNet, bf16 autocast"] / rates["tinygen UNet"]
        print(f"ratio tinygen bf16 / fp32: {speedup:.2f}")


if __name__ == "__main__":
    main()
