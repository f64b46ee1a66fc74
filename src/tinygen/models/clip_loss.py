"""The CLIP contrastive loss (Radford et al. 2021, fig. 3), local or over all ranks.

For a batch of N image–text pairs with L2-normalised features I and T, the logits are
`logit_scale * I @ T^T` (N, N); row i of the image->text logits should pick text i and
column i should pick image i. The loss is the mean of the two cross-entropies.

Under `torchrun`, every rank gathers the features of all ranks *with gradients*
(`torch.distributed.nn.functional.all_gather`), so each rank scores its N local rows against
the global batch of W*N pairs: the negatives are global. The mean of the W local losses is
then exactly the single-process loss on the global batch, and because the gather's backward
sums the gradients each rank sends back, DDP's gradient average is the single-process
gradient too (open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: Tensor) -> Tensor:
    """Concatenate (N, D) features from all ranks into (W*N, D), keeping the autograd graph
    (so the gradient for every rank's rows flows back to the rank that computed them)."""
    _, world = _world()
    if world == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still exact
        warnings.simplefilter("ignore", FutureWarning)
        gathered = all_gather(features)
    return torch.cat(gathered, dim=0)


def clip_logits(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float
) -> tuple[Tensor, Tensor]:
    """(logits_per_image (N, M), logits_per_text (M, N)) of L2-normalised features."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    *,
    gather: bool = True,
) -> Tensor:
    """Symmetric cross-entropy of the image–text logits (CLIP's training objective).

    image_features, text_features: (N, D) features of N matching pairs (normalised here, so
    unnormalised input is fine). logit_scale: the multiplier exp(t), not the parameter t.
    gather: under torch.distributed, use the negatives of every rank (see module docstring).
    Uninformative features (all logits equal) give exactly ln(N_global).
    """
    if image_features.shape != text_features.shape or image_features.dim() != 2:
        raise ValueError(
            f"clip_loss needs two (N, D) feature tensors of the same shape, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    n = image_features.shape[0]
    rank, world = _world() if gather else (0, 1)
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    all_images = gather_features(image_features) if world > 1 else image_features
    all_texts = gather_features(text_features) if world > 1 else text_features
    # Local rows against global columns: (N, W*N). Pair i of this rank is column rank*N + i.
    logits_per_image = logit_scale * image_features @ all_texts.T
    logits_per_text = logit_scale * text_features @ all_images.T
    labels = torch.arange(n, device=image_features.device) + rank * n
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2
