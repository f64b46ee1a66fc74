"""The first-stage training loss of latent diffusion (LDM's `LPIPSWithDiscriminator` and VQGAN's
`VQLPIPSWithDiscriminator`, Esser et al. 2021 eq. 4-7, Rombach et al. 2022 appendix G), less
the perceptual term:

    L = L1(x, x_rec) + [kl_weight / (C H W)] * KL(q(z|x) || N(0, I))        (kl)
      + codebook_weight * L_vq                                             (vq, eq. 3)
      + d_factor * lambda * L_G  +  d_factor * L_D                         (optional GAN)

Reductions. LDM's KL loss is a *sum*: the per-pixel L1 summed over the image and the KL summed
over the latent, both averaged over the batch, with kl_weight = 1e-6. We mean-reduce the L1
(so its scale does not depend on the image size, and the learning rate carries over), which
divides LDM's whole loss by C*H*W; to keep LDM's balance the summed KL is multiplied by
kl_weight / (C*H*W) -- at 64 px, 1e-6 / 12,288 = 8.1e-11 per unit of summed KL. `kl_weight`
keeps LDM's meaning and default. Taming's VQ loss is already mean-reduced (mean L1 + mean
eq.-3 terms), and so is ours.

The GAN (optional; `gan_weight > 0`): the PatchGAN discriminator D (`models/discriminator.py`)
with the hinge loss L_D = 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))]) and the generator
term L_G = -E[D(x_rec)] (Lim & Ye 2017; Miyato et al. 2018). Taming's adaptive weight balances
L_G against the reconstruction at the decoder's last layer G_L (Esser et al. 2021, eq. 7):

    lambda = gan_weight * ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + 1e-4),  clamped to [0, 1e4]

and d_factor is 0 for the first `gan_start` steps (taming's `disc_start`), so the autoencoder
learns to reconstruct before the discriminator starts to push. D and the autoencoder train in
the same optimiser step: L_G reaches the autoencoder only (D's parameters are detached in
that call) and L_D reaches D only (the reconstruction is detached), which is taming's two
alternating optimisers with equal settings folded into one.

No perceptual term. LPIPS needs VGG/AlexNet weights that cannot be downloaded here, and a
feature network trained on the shapes world for the purpose was not built; the shapes
evaluator must not be used as one (it is the independent judge of reconstructions).
LDM's learned output log-variance (`logvar`, a scalar dividing the L1) is also left out: at
its initial value 0 it is the plain L1.

Evaluation (no gradient) returns the reconstruction objective alone (L1 + the regulariser),
so validation losses and best-checkpoint selection compare across GAN and non-GAN runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.autoencoder import Autoencoder
from tinygen.nn.quantize import DiagonalGaussian, Quantized


@dataclass
class AutoencoderLossConfig:
    kl_weight: float = field(
        default=1e-6,
        metadata={"help": "KL weight in LDM's sum-reduced units (kl; applied / (C*H*W))", "min": 0},
    )
    codebook_weight: float = field(
        default=1.0, metadata={"help": "weight of the VQ loss of eq. 3 (vq)", "min": 0}
    )
    gan_weight: float = field(
        default=0.0,
        metadata={"help": "PatchGAN weight (taming's disc_weight); 0 = L1 alone", "min": 0},
    )
    gan_start: int = field(
        default=0, metadata={"help": "steps before the GAN terms start (warm-up)", "min": 0}
    )
    adaptive_gan_weight: bool = field(
        default=True,
        metadata={"help": "scale the GAN term by taming's gradient-norm ratio (eq. 7)"},
    )

    def validate(self) -> None:
        check_fields(self)


def l1_loss(images: Tensor, reconstruction: Tensor) -> Tensor:
    """Mean absolute error over every pixel and channel."""
    return (images - reconstruction).abs().mean()


def kl_loss(posterior: DiagonalGaussian, pixels_per_image: int, kl_weight: float) -> Tensor:
    """The KL term on the mean-reduced scale: kl_weight * mean_b KL_b / pixels_per_image
    (see the module doc: LDM's sum-reduced weight rescaled by 1 / (C*H*W))."""
    return kl_weight * posterior.kl().mean() / pixels_per_image


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss, 1/2 (E[relu(1 - real)] + E[relu(1 + fake)])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_gan_loss(logits_fake: Tensor) -> Tensor:
    """The autoencoder's adversarial term, -E[D(x_rec)]."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4
) -> Tensor:
    """Taming's lambda (eq. 7): ||grad rec_loss|| / (||grad gan_loss|| + 1e-4) at
    `last_layer` (the decoder's output conv weight), clamped to [0, max_weight], detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def frozen_call(module: nn.Module, x: Tensor) -> Tensor:
    """module(x) with its parameters detached: the gradient reaches x, never the module."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))


class AutoencoderLoss:
    """The loss above for one `Autoencoder`; `__call__` returns (loss, stats) where stats
    holds detached scalars for logging (l1, kl / vq, gan terms, perplexity)."""

    def __init__(self, config: AutoencoderLossConfig, autoencoder: Autoencoder) -> None:
        config.validate()
        if config.gan_weight > 0 and autoencoder.discriminator is None:
            raise TinygenError(
                "gan_weight > 0 needs a discriminator; build the autoencoder with "
                "discriminator_channels > 0 (tinygen train autoencoder --gan)"
            )
        self.config, self.autoencoder = config, autoencoder

    def gan_active(self) -> bool:
        d = self.autoencoder.discriminator
        return (
            self.config.gan_weight > 0 and d is not None and int(d.steps) >= self.config.gan_start
        )

    def __call__(
        self, forward: nn.Module, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """forward: the autoencoder (or its DDP / compiled wrapper); images (B, C, H, W)."""
        training = torch.is_grad_enabled()  # evaluation: the posterior's mean, no global RNG
        reconstruction, reg = forward(images, sample_posterior=training, generator=generator)
        rec = l1_loss(images, reconstruction)
        stats: dict[str, Tensor] = {"l1": rec.detach()}
        if isinstance(reg, Quantized):
            reg_loss = self.config.codebook_weight * reg.loss
            stats.update(vq=reg.loss.detach(), perplexity=reg.perplexity.detach())
        else:
            pixels = images[0].numel()
            reg_loss = kl_loss(reg, pixels, self.config.kl_weight)
            stats["kl"] = reg.kl().mean().detach()
        loss = rec + reg_loss
        if not training or not self.gan_active():
            return loss, stats
        disc = self.autoencoder.discriminator
        g_loss = generator_gan_loss(frozen_call(disc, reconstruction))
        if self.config.adaptive_gan_weight:
            last = self.autoencoder.decoder.conv_out.weight
            weight = self.config.gan_weight * adaptive_gan_weight(rec, g_loss, last)
        else:
            weight = torch.tensor(self.config.gan_weight, device=images.device)
        d_loss = hinge_d_loss(disc(images), disc(reconstruction.detach()))
        stats.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), gan_weight=weight)
        return loss + weight * g_loss + d_loss, stats
