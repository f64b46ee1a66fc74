"""OpenAI CLIP in transformers' format loads into our towers and computes what transformers
computes: tiny random CLIPModels built here (no download), saved with save_pretrained (and
as a PyTorch bin) and read back by `CLIP.from_pretrained`; the real layout of
openai/clip-vit-base-patch32 checked key by key on the meta device; and the CLI's zero-shot
and search on a saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pretrained_checkpoints import save_checkpoint  # noqa: E402
from tinygen.cli.main import main  # noqa: E402
from tinygen.errors import TinygenError  # noqa: E402
from tinygen.models.clip import CLIP, CLIPConfig, TextTransformer  # noqa: E402
from tinygen.models.convert.clip import (  # noqa: E402
    clip_config_from_hf,
    convert_clip_state_dict,
    convert_clip_text_state_dict,
)

TOLERANCE = 1e-5
VOCAB = 514  # the byte-level test tokenizer below: 512 symbols + <|startoftext|>, <|endoftext|>
EOS = VOCAB - 1


def tiny_config(eos_token_id: int = EOS):
    text = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=80,  # no whole multiple of the width: the MLP width is an option
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        eos_token_id=eos_token_id,
        bos_token_id=VOCAB - 2,
        pad_token_id=EOS,
    )
    vision = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=16,
        patch_size=4,
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def reference(eos_token_id: int = EOS, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(tiny_config(eos_token_id)).eval()
    with torch.no_grad():  # a temperature that is not the default, so it must be loaded
        model.logit_scale.fill_(3.1)
    return model


def token_ids(batch: int = 3, length: int = 12, seed: int = 1) -> torch.Tensor:
    """<sot> words <eot> <eot>...: CLIP's tokenizer pads with <|endoftext|>."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 2, (batch, length), generator=gen)
    ids[:, 0] = VOCAB - 2
    for row, end in enumerate(range(4, 4 + batch)):
        ids[row, end:] = EOS
    return ids


def tokenizer_and_processor():
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab.update({"<|startoftext|>": VOCAB - 2, "<|endoftext|>": EOS})
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    return transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One tiny checkpoint in safetensors and one as pytorch_model.bin, with a processor."""
    model = reference()
    dirs = {}
    for safe in (True, False):
        path = tmp_path_factory.mktemp("clip-safetensors" if safe else "clip-bin")
        save_checkpoint(model, path, safetensors=safe, tokenizer=tokenizer_and_processor())
        dirs[safe] = path
    assert (dirs[True] / "model.safetensors").is_file()
    assert (dirs[False] / "pytorch_model.bin").is_file()
    return model, dirs


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_logits_per_image_equal_transformers(saved, safe):
    reference_model, dirs = saved
    ours = CLIP.from_pretrained(dirs[safe])
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ids = token_ids()
    with torch.no_grad():
        theirs = reference_model(input_ids=ids, pixel_values=pixels)
        image, text, scale = ours(pixels, ids)
        logits_per_image = scale * image @ text.T
    error = (logits_per_image - theirs.logits_per_image).abs().max().item()
    assert error < TOLERANCE, error
    assert theirs.logits_per_image.abs().max() > 0.1  # a comparison of something


def test_features_equal_get_image_and_text_features(saved):
    """normalize=False is transformers' get_*_features; the default is their unit vectors."""
    reference_model, dirs = saved
    ours = CLIP.from_pretrained(dirs[True])
    pixels, ids = torch.randn(2, 3, 16, 16), token_ids()
    with torch.no_grad():
        image_ref = reference_model.get_image_features(pixel_values=pixels).pooler_output
        text_ref = reference_model.get_text_features(input_ids=ids).pooler_output
        image, text = (
            ours.encode_image(pixels, normalize=False),
            ours.encode_text(ids, normalize=False),
        )
        unit = ours.encode_text(ids)
    assert (image - image_ref).abs().max() < TOLERANCE
    assert (text - text_ref).abs().max() < TOLERANCE
    assert (unit - text_ref / text_ref.norm(dim=-1, keepdim=True)).abs().max() < TOLERANCE


@pytest.mark.parametrize("eos_token_id, pooling", [(EOS, "eos"), (2, "argmax")])
def test_pooling_follows_the_config_like_transformers(tmp_path, eos_token_id, pooling):
    """eos_token_id 2 (every early CLIP config) means the highest id, else the first eos."""
    reference(eos_token_id).save_pretrained(tmp_path)
    ours = CLIP.from_pretrained(tmp_path)
    assert ours.text.pooling == pooling
    ids = token_ids()
    ids[0, 2] = EOS - 1  # a high id before <eot>: argmax still finds <eot>, the highest
    with torch.no_grad():
        theirs = reference(eos_token_id).get_text_features(input_ids=ids).pooler_output
        error = (ours.encode_text(ids, normalize=False) - theirs).abs().max().item()
    assert error < TOLERANCE


@pytest.mark.parametrize("prefix", ["text_model.", ""])
def test_text_tower_alone_loads_with_or_without_prefix(prefix):
    """Stable Diffusion's text encoder: a CLIPTextModel whose file may lack `text_model.`."""
    torch.manual_seed(3)
    text_model = transformers.CLIPTextModel(tiny_config().text_config).eval()
    state = {prefix + k.removeprefix("text_model."): v for k, v in text_model.state_dict().items()}
    tower = TextTransformer.from_hf(text_model.config.to_dict(), state)
    ids = token_ids()
    with torch.no_grad():
        theirs = text_model(input_ids=ids)
        pooled, sequence = tower(ids, return_tokens=True)
    assert (sequence - theirs.last_hidden_state).abs().max() < TOLERANCE
    assert (pooled - theirs.pooler_output).abs().max() < TOLERANCE


# openai/clip-vit-base-patch32's config.json (the values that set the sizes)
OPENAI_B32 = {
    "model_type": "clip",
    "projection_dim": 512,
    "logit_scale_init_value": 2.6592,
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}


def test_every_key_of_openai_clip_b32_maps_onto_ours():
    """The real layout, on the meta device (no weights): all tensors map, none left over."""
    hf_config = transformers.CLIPConfig.from_dict(OPENAI_B32)
    with torch.device("meta"):
        theirs = transformers.CLIPModel(hf_config).state_dict()
        ours = CLIP(CLIPConfig(**clip_config_from_hf(OPENAI_B32))).state_dict()
    conversion = convert_clip_state_dict(theirs, ours)
    # 24 blocks of 12 tensors (q, k, v fused: 16 of theirs), 7 ViT + 4 text + 3 head tensors
    assert conversion.mapped == len(ours) == 302
    assert conversion.used == len(theirs) - len(conversion.ignored) == 398
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in theirs.values())


def test_a_text_state_dict_missing_and_misshapen_is_one_error_naming_each():
    text_model = transformers.CLIPTextModel(tiny_config().text_config)
    tower = TextTransformer.from_hf(text_model.config.to_dict(), text_model.state_dict())
    state = dict(text_model.state_dict())
    del state["final_layer_norm.bias"]
    state["encoder.layers.1.mlp.fc2.weight"] = torch.zeros(3, 3)
    state["stray.weight"] = torch.zeros(1)
    with pytest.raises(TinygenError) as error:
        convert_clip_text_state_dict(state, tower.state_dict())
    message = str(error.value)
    for name in ("final_layer_norm.bias", "blocks.1.mlp.proj.weight", "3x3", "stray.weight"):
        assert name in message


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(TinygenError, match="does not exist"):
        CLIP.from_pretrained(tmp_path / "nowhere")


def test_a_llama_directory_is_refused_by_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(TinygenError, match="llama checkpoint.*not a CLIP one"):
        CLIP.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weights_are_a_clear_error(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (tmp_path / name).write_bytes(b"not a checkpoint at all")
    with pytest.raises(TinygenError, match=f"cannot read the weights .*{name}.*corrupt"):
        CLIP.from_pretrained(tmp_path)


def test_offline_hub_name_says_how_to_use_a_local_directory(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection to the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(TinygenError) as error:
        CLIP.from_pretrained("openai/clip-vit-base-patch32")
    assert "'openai/clip-vit-base-patch32'" in str(error.value)
    assert "--local-dir" in str(error.value)


def write_pictures(folder, n: int = 3) -> list:
    from PIL import Image

    folder.mkdir()
    paths = []
    for i in range(n):
        gen = torch.Generator().manual_seed(10 + i)
        pixels = (torch.rand(20 + 4 * i, 24, 3, generator=gen) * 255).to(torch.uint8)
        paths.append(folder / f"picture{i}.png")
        Image.fromarray(pixels.numpy()).save(paths[-1])
    return paths


def test_cli_zero_shot_agrees_with_the_transformers_pipeline(saved, tmp_path, capsys):
    from PIL import Image

    reference_model, dirs = saved
    paths = write_pictures(tmp_path / "pictures")
    labels = ["a cat", "a dog", "a red car"]
    code = main(
        ["clip", "zero-shot", "--hf", str(dirs[True]), "--labels", ",".join(labels)]
        + [str(p) for p in paths]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    processor = transformers.CLIPProcessor.from_pretrained(dirs[True])
    inputs = processor(
        text=labels, images=[Image.open(p) for p in paths], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        probs = reference_model(**inputs).logits_per_image.softmax(-1)
    for path, line, row in zip(paths, printed, probs):
        best = labels[int(row.argmax())]
        assert line.startswith(f"{path}: {best} (")
        assert f"{best} {row.max().item():.2f}" in line


def test_cli_search_ranks_a_folder(saved, tmp_path, capsys):
    _, dirs = saved
    write_pictures(tmp_path / "pictures")
    grid = tmp_path / "grid.png"
    code = main(
        [
            "clip",
            "search",
            "--hf",
            str(dirs[False]),
            "--text",
            "a dog",
            "--images",
            str(tmp_path / "pictures"),
            "--top",
            "2",
            "--grid",
            str(grid),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(".", 1)[0] for line in lines] == ["1", "2"]
    assert grid.is_file()


def test_cli_needs_run_or_hf(capsys):
    assert main(["clip", "zero-shot", "--labels", "a,b", "x.png"]) == 2
    assert "--run" in capsys.readouterr().err
