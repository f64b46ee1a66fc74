"""Zero-shot classification and retrieval metrics against cases with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinygen.errors import TinygenError
from tinygen.eval.zero_shot import retrieval_metrics, zero_shot_classifier, zero_shot_predict


class WordTokenizer:
    """Each text -> the id of its last word in a fixed list (enough for a fake model)."""

    def __init__(self, names):
        self.names = list(names)

    def encode_batch(self, texts):
        return torch.tensor([[self.names.index(t.split()[-1])] for t in texts])


class PerfectModel(nn.Module):
    """Text of class c embeds as the one-hot e_c; images carry their class as e_c too."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_text(self, tokens):
        return nn.functional.one_hot(tokens[:, 0], self.n).float() * 3.0  # unnormalised

    def encode_image(self, images):
        return images


def test_zero_shot_with_perfect_features_scores_100_percent():
    names = ["circle", "square", "star", "cross"]
    model = PerfectModel(len(names))
    classifier = zero_shot_classifier(
        model, names, ["a {}", "a photo of a {}"], tokenizer=WordTokenizer(names)
    )
    torch.testing.assert_close(classifier, torch.eye(4))  # averaged and renormalised
    labels = torch.tensor([2, 0, 3, 1, 1, 2])
    images = nn.functional.one_hot(labels, 4).float() + 0.1 * torch.rand(6, 4)
    assert torch.equal(zero_shot_predict(images, classifier), labels)


def test_classifier_is_renormalised_mean_of_normalised_template_embeddings():
    torch.manual_seed(0)
    table = torch.randn(6, 5)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def encode_text(self, tokens):
            return table[tokens[:, 0]]

    class Tok:
        def encode_batch(self, texts):  # "name/template" -> a row of the table
            return torch.tensor([[int(t[0]) * 2 + int(t[-1])] for t in texts])

    templates = ["{}/0", "{}/1"]
    classifier = zero_shot_classifier(Model(), ["0", "1", "2"], templates, tokenizer=Tok())
    unit = table / table.norm(dim=1, keepdim=True)
    expected = torch.stack([(unit[2 * c] + unit[2 * c + 1]) / 2 for c in range(3)])
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(classifier, expected)


def test_empty_label_list_is_a_clear_error():
    with pytest.raises(TinygenError, match="at least one class"):
        zero_shot_classifier(PerfectModel(2), [], ["{}"], tokenizer=WordTokenizer([]))


def test_identical_features_give_recall_at_1_of_one():
    emb = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    metrics = retrieval_metrics(emb, emb.clone())
    for direction in ("image_to_text", "text_to_image"):
        assert metrics[f"{direction}_recall@1"] == 1.0
        assert metrics[f"{direction}_median_rank"] == 1.0


def test_retrieval_ranks_on_a_hand_built_case():
    # Image i's own text is at rank: 1, 2, 3 (texts built so the order is known).
    image = torch.eye(3)
    text = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # text 0: matches image 0 best
            [1.0, 0.5, 0.0],  # text 1: nearer image 0 than image 1
            [1.0, 0.2, 0.1],  # text 2: image 2 ranks it third
        ]
    )
    m = retrieval_metrics(image, text, ks=(1, 2))
    # image->text: image0: text0 (1.0) vs text1 (0.89), text2 (0.98) -> rank 1
    # image1: own text1 sim 0.447; text0 0, text2 0.196 -> rank 1
    # image2: own text2 sim 0.098; text0 0, text1 0 -> rank 1
    assert m["image_to_text_recall@1"] == 1.0
    # text->image: text0 -> image0 rank 1; text1 -> image1 (0.447) < image0 (0.894): rank 2;
    # text2 -> image2 (0.098) < image0 (0.98), image1 (0.196): rank 3
    assert m["text_to_image_recall@1"] == pytest.approx(1 / 3)
    assert m["text_to_image_recall@2"] == pytest.approx(2 / 3)
    assert m["text_to_image_median_rank"] == 2.0


def test_random_features_have_chance_level_recall():
    gen = torch.Generator().manual_seed(1)
    n = 2000
    m = retrieval_metrics(torch.randn(n, 32, generator=gen), torch.randn(n, 32, generator=gen))
    assert m["text_to_image_recall@10"] == pytest.approx(10 / n, abs=0.006)
    assert m["image_to_text_median_rank"] == pytest.approx(n / 2, rel=0.1)


def test_groups_count_any_matching_item_as_correct():
    # Texts 0 and 1 say the same thing; image 1 is closer to text 0 than to text 1.
    image = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    strict = retrieval_metrics(image, text, ks=(1,))
    grouped = retrieval_metrics(image, text, ks=(1,), groups=torch.tensor([7, 7, 3]))
    # strict: text 1's row ties image 0 (1.0) above image 1 (0.99): rank 2
    assert strict["text_to_image_recall@1"] == pytest.approx(2 / 3)
    assert grouped["text_to_image_recall@1"] == 1.0
    assert grouped["image_to_text_recall@1"] == 1.0
