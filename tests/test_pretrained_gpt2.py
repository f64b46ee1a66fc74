"""GPT-2 in transformers' format loads into our GPT and computes what transformers computes:
tiny random GPT2LMHeadModels built here (no download), saved with save_pretrained (and as a
PyTorch bin), read back by `GPT.from_pretrained`: logits, greedy generation with and without
the KV cache, the real gpt2 layout key by key on the meta device, the tokenizer, the CLI's
sample / finetune / memory, and the errors for bad directories."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pretrained_checkpoints import save_checkpoint  # noqa: E402
from tinygen.cli.main import main  # noqa: E402
from tinygen.errors import TinygenError  # noqa: E402
from tinygen.models.convert.gpt2 import (  # noqa: E402
    convert_gpt2_state_dict,
    gpt_config_from_hf,
    to_gpt2_state_dict,
)
from tinygen.models.gpt import GPT, GPTConfig  # noqa: E402

TOLERANCE = 1e-5
VOCAB = 257  # the byte-level test tokenizer: 256 bytes + <|endoftext|>


def tiny_config(**overrides):
    settings = dict(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.3,  # wide weights: greedy decoding that does not repeat one token
    )
    return transformers.GPT2Config(**{**settings, **overrides})


def byte_level_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = VOCAB - 1
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=[])


def reference(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(tiny_config(**overrides)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = reference()
    dirs = {}
    for safe in (True, False):
        dirs[safe] = tmp_path_factory.mktemp("gpt2-safetensors" if safe else "gpt2-bin")
        save_checkpoint(model, dirs[safe], safetensors=safe, tokenizer=byte_level_tokenizer())
    assert (dirs[False] / "pytorch_model.bin").is_file()
    return model, dirs


def token_ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_logits_equal_transformers(saved, safe):
    reference_model, dirs = saved
    ours = GPT.from_pretrained(dirs[safe])
    assert ours.config.activation == "gelu_tanh" and ours.config.norm_eps == 1e-5
    ids = token_ids()
    with torch.no_grad():
        theirs = reference_model(ids).logits
        logits, _ = ours(ids)
    error = (logits - theirs).abs().max().item()
    assert error < TOLERANCE, error
    assert theirs.std() > 1.0  # logits of some size, so the comparison means something


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "recompute"])
def test_greedy_generation_equals_transformers_token_for_token(saved, use_cache):
    reference_model, dirs = saved
    ours = GPT.from_pretrained(dirs[True])
    prompt = token_ids(1, 5)
    theirs = reference_model.generate(
        prompt, max_new_tokens=30, do_sample=False, pad_token_id=VOCAB - 1
    )
    mine = ours.generate(prompt, 30, temperature=0, use_cache=use_cache)
    assert mine.tolist() == theirs.tolist()
    assert len(set(theirs[0, 5:].tolist())) > 3  # a continuation, not one token repeated


def test_a_bare_gpt2model_file_with_mask_buffers_loads(saved, tmp_path):
    """The Hub's gpt2 files: no `transformer.` prefix, the causal-mask buffers stored."""
    from safetensors.torch import save_file

    reference_model, dirs = saved
    state = {
        k.removeprefix("transformer."): v.contiguous()
        for k, v in reference_model.state_dict().items()
        if k != "lm_head.weight"
    }
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_bytes((dirs[True] / "config.json").read_bytes())
    ids = token_ids()
    with torch.no_grad():
        error = (GPT.from_pretrained(tmp_path)(ids)[0] - reference_model(ids).logits).abs().max()
    assert error < TOLERANCE


# gpt2's config.json on the Hub (the values that set the sizes)
GPT2_SMALL = dict(
    model_type="gpt2",
    vocab_size=50257,
    n_positions=1024,
    n_ctx=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
)


def test_every_key_of_gpt2_maps_onto_ours():
    """The real layout, on the meta device (no weights): all tensors map, none left over."""
    with torch.device("meta"):
        theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_SMALL)).state_dict()
        ours = GPT(GPTConfig(**gpt_config_from_hf(GPT2_SMALL))).state_dict()
    conversion = convert_gpt2_state_dict(theirs, ours)
    # 12 blocks of 12 tensors, wte, wpe, ln_f (2), and our tied lm_head filled from wte
    assert conversion.mapped == len(ours) == 149
    assert conversion.used == 148 and conversion.ignored == ["lm_head.weight"]  # tied copy
    assert len(theirs) == 149


def test_our_weights_write_back_as_gpt2(saved):
    """The table backwards: a fine-tuned model saved in GPT-2's layout is GPT-2 again."""
    reference_model, dirs = saved
    back = to_gpt2_state_dict(GPT.from_pretrained(dirs[True]).state_dict())
    original = reference_model.state_dict()
    assert set(back) == set(original) - {"lm_head.weight"}
    assert all(torch.equal(back[k], original[k]) for k in back)


def test_untied_or_unknown_settings_are_refused_by_name():
    with pytest.raises(TinygenError, match="tie_word_embeddings"):
        gpt_config_from_hf({**GPT2_SMALL, "tie_word_embeddings": False})
    with pytest.raises(TinygenError, match="relu"):
        gpt_config_from_hf({**GPT2_SMALL, "activation_function": "relu"})


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(TinygenError, match="does not exist"):
        GPT.from_pretrained(tmp_path / "nowhere")


def test_a_clip_directory_is_refused_by_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(TinygenError, match="clip checkpoint.*not a GPT-2 one"):
        GPT.from_pretrained(tmp_path)


def test_a_corrupt_bin_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 garbage")
    with pytest.raises(TinygenError, match="pytorch_model.bin.*corrupt"):
        GPT.from_pretrained(tmp_path)


def test_weights_of_another_size_name_every_shape(saved, tmp_path):
    reference(n_embd=16).save_pretrained(tmp_path)  # the config says 16 wide ...
    (tmp_path / "config.json").write_bytes((saved[1][True] / "config.json").read_bytes())
    with pytest.raises(TinygenError) as error:  # ... but ours is built 32 wide
        GPT.from_pretrained(tmp_path)
    assert "shapes differ" in str(error.value) and "blocks.1.mlp.fc.weight (128x32)" in str(
        error.value
    )


def test_cli_sample_streams_what_transformers_generates(saved, capsys):
    reference_model, dirs = saved
    tokenizer = byte_level_tokenizer()
    prompt = "Hello"
    ids = torch.tensor([tokenizer.encode(prompt)])
    theirs = reference_model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = tokenizer.decode(theirs[0])
    argv = ["sample", "gpt", "--hf", str(dirs[True]), "--prompt", prompt, "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "12", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def finetune_argv(base, method: str, out) -> list[str]:
    """A two-step fine-tune on 16-token windows of the sonnets: seconds, not minutes."""
    quick = "--block-size 16 --max-iters 2 --batch-size 2 --eval-interval 2 --eval-iters 1"
    quick += " --eval-batches 1 --device cpu --no-progress --data sonnets"
    return [
        "finetune",
        "gpt",
        "--base",
        f"hf:{base}",
        "--method",
        method,
        "--out",
        str(out),
        *quick.split(),
    ]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_cli_finetune_adapter_then_sample_with_it(saved, tmp_path, capsys, method):
    _, dirs = saved
    out = tmp_path / "adapter"
    assert main(finetune_argv(dirs[True], method, out)) == 0
    assert f"tinygen sample gpt --hf {dirs[True]} --adapter {out}" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()
    sample = ["sample", "gpt", "--hf", str(dirs[True]), "--adapter", str(out), "--merge"]
    assert main([*sample, "--max-new-tokens", "4", "--prompt", "Hi", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Hi")


def test_cli_full_finetune_writes_a_gpt2_checkpoint_transformers_reads(saved, tmp_path):
    _, dirs = saved
    out = tmp_path / "full"
    assert main(finetune_argv(dirs[False], "full", out)) == 0
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out / "hf").eval()
    ours = GPT.from_pretrained(out / "hf")
    ids = token_ids()
    with torch.no_grad():
        assert (ours(ids)[0] - theirs(ids).logits).abs().max() < TOLERANCE
        assert (theirs(ids).logits - reference()(ids).logits).abs().max() > 1e-4  # it trained


def test_memory_of_gpt2_xl(capsys):
    assert main(["memory", "--model", "gpt2-xl"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt2-xl: 1,557,611,200 parameters (1.56B)")  # GPT-2 paper: 1542M
    assert "fp32                     6.230 GB" in out


def test_streaming_never_prints_half_a_character():
    """'é' is two byte-level tokens: the stream holds the first back, prints the letter whole."""
    from tinygen.recipes.pretrained_gpt import HFTokenizer, stream_text

    tokenizer = HFTokenizer(byte_level_tokenizer())
    script = tokenizer.encode("né!")
    assert len(script) == 4

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def stream(self, idx, max_new_tokens, **sampling):
            yield from (torch.tensor([[i]]) for i in script[:max_new_tokens])

    class Recorder:
        def __init__(self):
            self.pieces = []

        def write(self, text):
            self.pieces.append(text)

        def flush(self):
            pass

    out = Recorder()
    assert stream_text(Scripted(), tokenizer, "a", max_new_tokens=4, out=out) == ["né!"]
    assert "".join(out.pieces) == "ané!\n"
    assert not any("\ufffd" in piece for piece in out.pieces)
