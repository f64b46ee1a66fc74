"""How well a first stage reconstructs the shapes world (the autoencoders table of issue 14).

On `n` images of the shapes world's *test* split (combinations never seen in training):

- PSNR of the reconstruction (mean and its standard error over images), in dB for images in
  [-1, 1] (peak-to-peak 2);
- the judge's **agreement**: the shapes evaluator's verdict on the reconstruction equals its
  verdict on the original, per attribute and for all four at once -- does the autoencoder
  keep what the world's attributes are? -- and its **accuracy** against the true labels on
  the reconstructions (and, for reference, on the originals);
- the feature distance between the reconstructions and the originals (the Fréchet distance
  on the evaluator's penultimate features, `tinygen.eval.fidelity.feature_distance`: lower
  is closer; what a GAN term is meant to buy where PSNR does not show it);
- for a VQ model the codebook's perplexity (exp of the entropy of the code histogram; K if
  every code were used equally) and its dead codes (never chosen on these images).

Fractions carry the binomial standard error sqrt(p (1 - p) / n). The evaluator is the
independent judge: it is never a training loss or a checkpoint criterion of the autoencoder.
Reconstructions use the posterior's mean (kl) or the codes (vq), clamped to [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tinygen.data.shapes import ATTRIBUTES, generate_shapes
from tinygen.errors import TinygenError
from tinygen.models.autoencoder import Autoencoder
from tinygen.nn.quantize import code_perplexity


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else 0.0


@torch.no_grad()
def reconstruct(model: Autoencoder, images: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(reconstructions (N, C, H, W) clamped to [-1, 1], VQ code indices (N, h, w) or an
    empty tensor for kl). The model runs in eval mode (no codebook restarts)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out, codes = [], []
    for chunk in images.split(batch_size):
        recon, reg = model(chunk.to(device), sample_posterior=False)
        out.append(recon.clamp(-1, 1).cpu())
        if model.quantizer is not None:
            codes.append(reg.indices.cpu())
    model.train(was_training)
    return torch.cat(out), torch.cat(codes) if codes else torch.empty(0, dtype=torch.long)


def psnr(images: Tensor, reconstruction: Tensor) -> Tensor:
    """Per-image PSNR (B,) in dB, 10 log10(2^2 / MSE) for images in [-1, 1]."""
    mse = (images - reconstruction).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def judge_reconstructions(
    originals: Tensor, reconstructions: Tensor, labels: dict[str, Tensor], evaluator
) -> dict[str, float]:
    """Agreement (verdict on the reconstruction == verdict on the original) and accuracy (vs
    `labels`) of the judge, per attribute and for all of them, with standard errors."""
    n = len(originals)
    before, after = evaluator.predict(originals), evaluator.predict(reconstructions)
    agree_all = torch.ones(n, dtype=torch.bool)
    right_all = torch.ones(n, dtype=torch.bool)
    right_orig_all = torch.ones(n, dtype=torch.bool)
    out: dict[str, float] = {}
    for name in ATTRIBUTES:
        agree = before[name] == after[name]
        right = after[name] == labels[name]
        right_orig = before[name] == labels[name]
        agree_all &= agree
        right_all &= right
        right_orig_all &= right_orig
        out[f"agreement_{name}"] = agree.float().mean().item()
        out[f"accuracy_{name}"] = right.float().mean().item()
    out["agreement"] = agree_all.float().mean().item()
    out["accuracy"] = right_all.float().mean().item()
    out["accuracy_originals"] = right_orig_all.float().mean().item()
    for key in list(out):
        out[f"{key}_se"] = binomial_se(out[key], n)
    return out


def evaluate_autoencoder(
    model: Autoencoder,
    *,
    n: int = 1024,
    image_size: int = 64,
    seed: int = 0,
    evaluator=None,
) -> dict[str, float]:
    """The table row of one first stage on `n` test-split images (see the module doc)."""
    if n < 2:
        raise TinygenError(f"--n must be at least 2 (a standard error needs two), got {n}")
    f = model.downsample_factor
    if image_size % f:
        raise TinygenError(
            f"the images ({image_size} px) are not a multiple of the autoencoder's factor {f}"
        )
    batch = generate_shapes(n, split="test", seed=seed, image_size=image_size)
    recon, codes = reconstruct(model, batch.images)
    values = psnr(batch.images, recon)
    out: dict[str, float] = {
        "n": n,
        "psnr": values.mean().item(),
        "psnr_se": (values.std() / math.sqrt(n)).item(),
    }
    if evaluator is None:
        from tinygen.eval.fidelity import load_evaluator

        evaluator = load_evaluator()
    out.update(judge_reconstructions(batch.images, recon, batch.labels, evaluator))
    from tinygen.eval.fidelity import feature_distance

    out["feature_distance"] = feature_distance(batch.images, recon, evaluator=evaluator)
    if model.quantizer is not None:
        k = model.config.num_embeddings
        out["perplexity"] = code_perplexity(codes, k).item()
        out["dead_codes"] = int((torch.bincount(codes.flatten(), minlength=k) == 0).sum())
        out["codebook_size"] = k
    return out
