"""Zero-shot classification and image–text retrieval with a CLIP model (Radford et al.
2021, sec. 3.1): classify images by the class whose caption embeds closest, and rank
texts for images (and images for texts) by cosine similarity.

Standalone functions, as open_clip keeps them: they need only `model.encode_text` /
`model.encode_image` and a tokenizer with `encode_batch(texts)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tinygen.errors import TinygenError

Template = str | Callable[[str], str]


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@torch.no_grad()
def zero_shot_classifier(
    model,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    tokenizer,
    batch_size: int = 256,
) -> Tensor:
    """(C, D) class weights: for each class, the text embeddings of every template filled
    with the class name, normalised, averaged, and renormalised (CLIP's prompt ensembling).

    templates: format strings with one `{}` ("a photo of a {}.") or callables name -> text.
    """
    if not classnames:
        raise TinygenError(
            "zero-shot classification needs at least one class name; "
            'pass --labels "red circle,blue square"'
        )
    if not templates:
        raise TinygenError("zero-shot classification needs at least one template, e.g. '{}'")
    texts = [_fill(t, name) for name in classnames for t in templates]
    device = next(model.parameters()).device
    embeddings = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer.encode_batch(texts[start : start + batch_size]).to(device)
        embeddings.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_text = torch.cat(embeddings).view(len(classnames), len(templates), -1)  # (C, K, D)
    return F.normalize(per_text.mean(dim=1), dim=-1)  # (C, D)


@torch.no_grad()
def encode_images(model, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """(N, D) unit-norm image embeddings, computed in batches on the model's device."""
    device = next(model.parameters()).device
    out = [
        F.normalize(model.encode_image(images[i : i + batch_size].to(device)).float(), dim=-1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def zero_shot_predict(image_features: Tensor, classifier: Tensor) -> Tensor:
    """(N,) index of the most similar class for each (N, D) image embedding."""
    return (F.normalize(image_features.float(), dim=-1) @ classifier.T).argmax(dim=-1)


def _ranks(similarity: Tensor, same: Tensor | None = None) -> Tensor:
    """1-based rank of the best-ranked correct entry in each row: 1 + how many wrong
    entries score above it (ties count in the pair's favour). Without `same`, the correct
    entry of row i is column i; with `same` (N, N) bool, every column j with same[i, j]."""
    if same is None:
        correct = similarity.diagonal().unsqueeze(1)  # (N, 1)
        return (similarity > correct).sum(dim=1) + 1  # (N,)
    best = similarity.masked_fill(~same, float("-inf")).amax(dim=1, keepdim=True)  # (N, 1)
    return ((similarity > best) & ~same).sum(dim=1) + 1


def retrieval_metrics(
    image_emb: Tensor,
    text_emb: Tensor,
    *,
    ks: Sequence[int] = (1, 5, 10),
    groups: Tensor | None = None,
) -> dict[str, float]:
    """Recall@k and median rank in both directions for N pairs (image i matches text i).

    image_to_text_recall@k: the fraction of images whose own text is among the k most
    similar texts (cosine similarity); text_to_image likewise. Median rank is 1 at best.
    groups: optional (N,) ids; image i and text j then also match when groups[i] ==
    groups[j] -- for captions that describe several images equally well (in the shapes
    world, 1,000 canonical prompts hold only 480 distinct texts, and no model can tell
    which of two "a large red circle on the left" images a caption was written for).
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise TinygenError(
            f"retrieval needs (N, D) image and text embeddings of the same "
            f"shape, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    similarity = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    same = None
    if groups is not None:
        groups = groups.to(similarity.device)
        same = groups[:, None] == groups[None, :]  # (N, N), symmetric
    out: dict[str, float] = {}
    for name, sim in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranks = _ranks(sim, same).float()
        for k in ks:
            out[f"{name}_recall@{k}"] = (ranks <= k).float().mean().item()
        out[f"{name}_median_rank"] = ranks.quantile(0.5).item()  # as np.median
    return out
