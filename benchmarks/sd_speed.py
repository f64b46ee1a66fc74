"""CPU speed of our Stable Diffusion modules against diffusers', same weights, one run side by side.

    OMP_NUM_THREADS=1 python benchmarks/sd_speed.py [--width-scale 0.5] [--latent 32] [--repeats 5]

The U-Net is SD v1.5's layout (4 levels, 2 blocks each, transformer attention with 8 heads,
cross-attention to 77 tokens of width 768) at `--width-scale` of its channels, run on the
classifier-free-guidance batch of 2 at `--latent`x`--latent` latents; the VAE decode is SD's
decoder at the same scale, one latent of that size (8x the pixels). Both models carry the
same weights (diffusers' random ones, converted to ours). Calls alternate ours / theirs, one
warm-up each; the table reports the median of `--repeats` and the ratio ours / diffusers'.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def side_by_side(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of `ours()` and `theirs()`, called alternately after one warm-up each."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        a += timed(ours, 1)
        b += timed(theirs, 1)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tinygen.models.autoencoder import AutoencoderKL as OurAutoencoder
    from tinygen.models.convert import stable_diffusion as convert
    from tinygen.models.stable_diffusion_memory import SD_V1_5_UNET, SD_V1_5_VAE
    from tinygen.nn.unet import UNet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-scale", type=float, default=0.5)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    scale = lambda widths: [int(w * args.width_scale) for w in widths]  # noqa: E731
    unet_cfg = dict(SD_V1_5_UNET, block_out_channels=scale(SD_V1_5_UNET["block_out_channels"]))
    vae_cfg = dict(SD_V1_5_VAE, block_out_channels=scale(SD_V1_5_VAE["block_out_channels"]))
    theirs_unet = UNet2DConditionModel(**unet_cfg).eval()
    ours_unet = UNet(convert.unet_config_from_diffusers(unet_cfg)).eval()
    ours_unet.load_state_dict(
        convert.convert_unet_state_dict(theirs_unet.state_dict(), ours_unet.state_dict()).state_dict
    )
    theirs_vae = AutoencoderKL(**vae_cfg).eval()
    ours_vae = OurAutoencoder(convert.vae_config_from_diffusers(vae_cfg)).eval()
    ours_vae.load_state_dict(
        convert.convert_vae_state_dict(theirs_vae.state_dict(), ours_vae.state_dict()).state_dict
    )
    n = args.latent
    x, context = torch.randn(2, 4, n, n), torch.randn(2, 77, 768)
    t = torch.tensor([500, 500])
    z = torch.randn(1, 4, n, n)
    rows = []
    with torch.no_grad():
        error = (ours_unet(x, t, context=context) - theirs_unet(x, t, context).sample).abs().max()
        mine, ref = side_by_side(
            lambda: ours_unet(x, t, context=context),
            lambda: theirs_unet(x, t, encoder_hidden_states=context),
            args.repeats,
        )
        rows.append((f"U-Net forward, batch 2, {n}x{n} latents", mine, ref, float(error)))
        error = (ours_vae.decode(z) - theirs_vae.decode(z).sample).abs().max()
        mine, ref = side_by_side(
            lambda: ours_vae.decode(z), lambda: theirs_vae.decode(z), args.repeats
        )
        rows.append((f"VAE decode, 1 latent {n}x{n} -> {8 * n}x{8 * n}", mine, ref, float(error)))
    params = sum(p.numel() for p in ours_unet.parameters()) / 1e6
    vae_params = sum(p.numel() for p in ours_vae.parameters()) / 1e6
    print(
        f"width scale {args.width_scale} (U-Net {params:.1f} M, VAE {vae_params:.1f} M "
        f"parameters), torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats}\n"
    )
    print("| call | tinygen (s) | diffusers (s) | tinygen / diffusers | max abs diff |")
    print("|---|---|---|---|---|")
    for name, mine, ref, error in rows:
        print(f"| {name} | {mine:.3f} | {ref:.3f} | {mine / ref:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
