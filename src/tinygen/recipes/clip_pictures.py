"""Pictures of a trained CLIP, and what it does with image files: the image–text
similarity matrix of a batch as a heat map (CLIP fig. 3's matrix, a bright diagonal when
the model matches pairs), text-to-image search with a grid of its results, and zero-shot
classification among text labels. matplotlib is imported only here, inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.eval.zero_shot import encode_images, zero_shot_classifier


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


def search_folder(
    model: nn.Module,
    tokenizer,
    folder: str | Path,
    text: str,
    *,
    image_size: int,
    k: int = 5,
    grid: str | Path | None = None,
    load_images: Callable[[list[Path]], Tensor] | None = None,
) -> list[tuple[Path, float]]:
    """The `k` images of `folder` closest to `text`, best first, as (path, similarity);
    with `grid`, also saved there as a retrieval grid. `load_images(files)` -> (N, 3, S, S)
    in [-1, 1] replaces our loader (a published CLIP's processor resizes its own way)."""
    from tinygen.data.image_folder import IMAGE_EXTENSIONS, load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise TinygenError(f"--images {folder} is not a folder; pass a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TinygenError(f"{folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if load_images is not None:
        images = load_images(files)
    else:
        images = torch.stack([load_image(p, image_size) for p in files])
    index, scores = top_matches(model, tokenizer, images, [text], k=k)
    if grid is not None:
        plot_retrieval_grid(model, tokenizer, images, [text], grid, k=k)
    return [(files[i], score) for i, score in zip(index[0].tolist(), scores[0].tolist())]


@torch.no_grad()
def classify_images(
    model: nn.Module, tokenizer, images: Tensor, labels: list[str], templates: list[str]
) -> Tensor:
    """Zero-shot probabilities (N, L) of each image among the text `labels`, each label
    embedded as the mean of its `templates` (prompts with {} for the label; CLIP sec. 3.1.4)."""
    if not labels:
        raise TinygenError(
            'no labels given; pass comma-separated labels, e.g. --labels "red circle,blue square"'
        )
    for template in templates:
        if "{}" not in template:
            raise TinygenError(f"--template {template!r} has no {{}} for the label")
    classifier = zero_shot_classifier(model, labels, templates, tokenizer=tokenizer)
    logits = model.logit_scale.exp() * encode_images(model, images) @ classifier.T
    return logits.softmax(-1)
