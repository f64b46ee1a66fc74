"""Pictures of a trained CLIP: the image–text similarity matrix of a batch as a heat map
(CLIP fig. 3's matrix, a bright diagonal when the model matches pairs), and a grid of
text-to-image retrieval results. matplotlib is imported only here, inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.eval.zero_shot import encode_images


def _to_display(image: Tensor):
    """(C, H, W) in [-1, 1] -> (H, W, C) numpy in [0, 1]."""
    return ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def _text_embeddings(model: nn.Module, tokenizer, texts: list[str]) -> Tensor:
    device = next(model.parameters()).device
    return model.encode_text(tokenizer.encode_batch(texts).to(device)).float()


@torch.no_grad()
def plot_similarity_matrix(
    model: nn.Module, tokenizer, images: Tensor, captions: list[str], out_path: str | Path
) -> Tensor:
    """Heat map of cosine similarities: texts as rows, images (drawn above) as columns.
    Returns the (N, N) similarity matrix drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    sim = (_text_embeddings(model, tokenizer, captions) @ encode_images(model, images).T).cpu()
    model.train(was_training)
    n = len(captions)
    fig = plt.figure(figsize=(2 + 0.55 * n + 3, 1.2 + 0.55 * n), dpi=110)
    grid = fig.add_gridspec(2, n, height_ratios=[1, n], hspace=0.05, wspace=0.05)
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(_to_display(images[j]))
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    im = ax.imshow(sim.numpy(), cmap="viridis", aspect="auto")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{sim[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if sim[i, j] < sim.max() * 0.7 else "black",
            )
    ax.set_yticks(range(n), captions, fontsize=7)
    ax.set_xticks([])
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="cosine similarity")
    fig.suptitle("image–text similarity (validation batch)", fontsize=9)
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
    return sim


@torch.no_grad()
def top_matches(
    model: nn.Module, tokenizer, images: Tensor, texts: list[str], k: int = 5
) -> tuple[Tensor, Tensor]:
    """For each text, the indices (Q, k) and similarities (Q, k) of its k closest images."""
    was_training = model.training
    model.eval()
    sim = _text_embeddings(model, tokenizer, texts) @ encode_images(model, images).T
    model.train(was_training)
    scores, index = sim.topk(min(k, len(images)), dim=1)
    return index.cpu(), scores.cpu()


def plot_retrieval_grid(
    model: nn.Module,
    tokenizer,
    images: Tensor,
    queries: list[str],
    out_path: str | Path,
    k: int = 5,
) -> None:
    """One row per query text: its k best-matching images, with their similarities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index, scores = top_matches(model, tokenizer, images, queries, k)
    k = index.shape[1]
    fig, axes = plt.subplots(
        len(queries), k, figsize=(1.3 * k + 2.5, 1.4 * len(queries)), dpi=110, squeeze=False
    )
    for q, query in enumerate(queries):
        for j in range(k):
            ax = axes[q, j]
            ax.imshow(_to_display(images[index[q, j]]))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{scores[q, j]:.2f}", fontsize=7)
        axes[q, 0].set_ylabel(query, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("text → image retrieval (top matches)", fontsize=9)
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
