"""The two latent regularisers of latent diffusion's first stage (Rombach et al. 2022, sec. 3.1).

- `DiagonalGaussian`: the posterior q(z | x) = N(mean, diag(var)) of the KL-regularised
  autoencoder (a VAE with a very small KL weight; Stable Diffusion's first stage).
- `VectorQuantizer`: the codebook of VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937) as
  VQGAN uses it (Esser et al. 2021): each latent vector z_e is replaced by its nearest of K
  codebook entries e_k, the gradient passes the quantisation unchanged (the straight-through
  estimator), and the loss pulls codes and encoder outputs together (eq. 3 below).

The quantiser's loss is the paper's eq. 3,

    L_vq = || sg[z_e] - e ||^2  +  beta * || z_e - sg[e] ||^2        (beta = 0.25)

-- the codebook term moves the codes, the commitment term (weighted by beta) keeps the encoder
near its codes. Taming-transformers' `VectorQuantizer2` (and LDM, which copies it) defaults to
`legacy=True`, which weights them the other way round (beta on the codebook term, 1 on the
commitment term); we use the paper's. Both terms are means over the latent entries (as taming's,
where the paper writes squared norms), so they sit on the scale of a mean-reduced
reconstruction loss.

Codes nobody chooses get no gradient and stay dead for ever; a code unchosen for
`restart_after` consecutive training batches is restarted at a random encoder output of the
current batch (the "random restart" of Dhariwal et al. 2020's Jukebox, sec. 3.2 / Zeghidour
et al. 2021's SoundStream), so the whole codebook stays in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) from the encoder's 2c channels (mean, then logvar).

    The log-variance is clamped to [-30, 20] (LDM's bounds) so exp stays finite. `kl()` is
    KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over (C, H, W), per sample
    (Kingma & Welling 2014, appendix B); a sum, as LDM's loss uses it.
    """

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * eps, eps drawn on the generator's device (as diffusers' `randn_tensor`,
        so a CPU generator gives the same latents on any device)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


@dataclass
class Quantized:
    """What `VectorQuantizer` returns.

    quantized: (B, D, h, w), the codes with the straight-through gradient to z_e.
    loss: scalar, codebook + beta * commitment (eq. 3, mean-reduced).
    indices: (B, h, w) long, the chosen codes.
    perplexity: scalar, exp(entropy) of the batch's code histogram (K when all codes are used
        equally, 1 when one code takes everything).
    dead_codes: codes this batch did not use (an int).
    """

    quantized: Tensor
    loss: Tensor
    indices: Tensor
    perplexity: Tensor
    dead_codes: int


def code_perplexity(indices: Tensor, num_embeddings: int) -> Tensor:
    """exp(-sum_k p_k log p_k) of the code histogram of `indices` (any shape)."""
    counts = torch.bincount(indices.flatten(), minlength=num_embeddings).float()
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, D, h, w) latents against a (K, D) codebook.

    num_embeddings: K. embedding_dim: D (the latent channels). beta: the commitment weight of
    eq. 3. restart_after: training batches a code may go unchosen before it is restarted at a
    random encoder output of the batch (0 = never restart). The codebook starts uniform in
    [-1/K, 1/K], as the paper's and taming's.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float = 0.25,
        *,
        restart_after: int = 20,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise TinygenError(
                f"a codebook needs K >= 1 codes of dimension >= 1, got K={num_embeddings}, "
                f"D={embedding_dim}"
            )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.beta, self.restart_after = beta, restart_after
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)
        # training batches since each code was last chosen (saved, so resume is exact)
        self.register_buffer("unused_batches", torch.zeros(num_embeddings, dtype=torch.long))

    def nearest(self, z_flat: Tensor) -> Tensor:
        """(N, D) -> (N,) index of the nearest code in squared Euclidean distance,
        ||z||^2 - 2 z.e + ||e||^2 (no gradient: argmin has none)."""
        with torch.no_grad():
            codes = self.embedding.weight.float()
            z = z_flat.float()
            dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ codes.t() + codes.pow(2).sum(1)[None]
            return dist.argmin(dim=1)

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: Tensor) -> int:
        """Move every code unchosen for `restart_after` batches onto a random row of z_flat
        (N, D) -- an encoder output of this batch, so it is near the data and will be chosen.
        Returns how many codes were restarted."""
        if self.restart_after <= 0:
            return 0
        dead = (self.unused_batches >= self.restart_after).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, z_flat.shape[0], (dead.numel(),), device=z_flat.device)
        self.embedding.weight.data[dead] = z_flat[pick].to(self.embedding.weight.dtype)
        self.unused_batches[dead] = 0
        return int(dead.numel())

    def forward(self, z_e: Tensor) -> Quantized:
        """z_e (B, D, h, w) -> `Quantized`. In training mode, dead codes are restarted first
        (before this batch's codebook is read) and the usage counters are updated."""
        if z_e.dim() != 4 or z_e.shape[1] != self.embedding_dim:
            raise TinygenError(
                f"the quantiser takes (B, {self.embedding_dim}, h, w) latents, got "
                f"{tuple(z_e.shape)}"
            )
        b, d, h, w = z_e.shape
        z_flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        if self.training:
            self.restart_dead_codes(z_flat.detach())
        indices = self.nearest(z_flat)  # (B*h*w,)
        e = self.embedding(indices).view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        codebook = F.mse_loss(e, z_e.detach())  # ||sg[z_e] - e||^2: moves the codes
        commitment = F.mse_loss(z_e, e.detach())  # ||z_e - sg[e]||^2: moves the encoder
        loss = codebook + self.beta * commitment
        quantized = z_e + (e - z_e).detach()  # straight-through: forward e, gradient to z_e
        counts = torch.bincount(indices, minlength=self.num_embeddings)
        if self.training:
            with torch.no_grad():
                self.unused_batches.add_(1).masked_fill_(counts > 0, 0)
        return Quantized(
            quantized=quantized,
            loss=loss,
            indices=indices.view(b, h, w),
            perplexity=code_perplexity(indices, self.num_embeddings),
            dead_codes=int((counts == 0).sum()),
        )

    def lookup(self, indices: Tensor) -> Tensor:
        """(B, h, w) code indices -> (B, D, h, w) codes."""
        return self.embedding(indices).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"K={self.num_embeddings}, D={self.embedding_dim}, beta={self.beta}, "
            f"restart_after={self.restart_after}"
        )
