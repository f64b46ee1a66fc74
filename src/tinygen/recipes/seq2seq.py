"""The encoder-decoder Transformer recipe: text in, text out, the task that trains it, the
default preset, held-out scores and the cross-attention picture.

`Translator` pairs a trained `Seq2SeqTransformer` with its source and target vocabularies
and turns lines of text into lines of text (greedy or beam search, batched).
`Seq2SeqTask` is what the shared `Trainer` needs: batches of (source, decoder input,
decoder target) ids drawn from `TranslationData`, the label-smoothed loss, and held-out
exact match / character error rate at every evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.data.translation import PAD, TaskSpec, TranslationData, Vocab, pad_batch
from tinygen.errors import TinygenError
from tinygen.eval.text_metrics import TextScores, score_texts
from tinygen.io import write_json
from tinygen.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from tinygen.models.seq2seq_decode import decode_batch
from tinygen.recipes.common import Preset, fit, is_main_process
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

HELDOUT_FILE = "heldout_eval.json"

# The recipe measured in docs/benchmarks.md (section seq2seq): the paper's inverse-sqrt
# warm-up and Adam beta2 = 0.98, a fresh batch every step (so no weight decay).
PRESETS: dict[str, Preset] = {
    "default": Preset(
        Seq2SeqConfig(),  # d_model 128, 4 heads, 3 + 3 layers, pre-LN
        TrainConfig(
            max_iters=1000,
            batch_size=128,
            learning_rate=1e-3,
            lr_schedule="inverse_sqrt",
            warmup_iters=200,
            weight_decay=0.0,
            beta2=0.98,
            eval_interval=250,
            eval_iters=10,
            log_interval=10,
        ),
        "number <-> words in minutes on a CPU (docs/benchmarks.md, section seq2seq)",
    ),
}


class Translator:
    """A model with its vocabularies: `translate(["4051207"])` -> ['four million ...']."""

    def __init__(self, model: Seq2SeqTransformer, src_vocab: Vocab, tgt_vocab: Vocab) -> None:
        self.model, self.src_vocab, self.tgt_vocab = model, src_vocab, tgt_vocab

    @classmethod
    def from_run(
        cls, run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
    ) -> Translator:
        """Rebuild a trained translator from its run directory alone (config.json holds
        the model config and both vocabularies)."""
        from tinygen.models.runs import load_model

        model, config = load_model(run_dir, which=which, device=device, expect="seq2seq")
        if "source_vocab" not in config or "target_vocab" not in config:
            raise TinygenError(f"{run_dir}/config.json has no vocabularies; retrain the run")
        return cls(
            model, Vocab.from_dict(config["source_vocab"]), Vocab.from_dict(config["target_vocab"])
        )

    def encode_sources(self, texts: list[str]) -> Tensor:
        """Right-padded source ids (B, S); empty, unknown or too-long inputs are errors."""
        limit = self.model.config.max_src_len
        ids = []
        for text in texts:
            row = self.src_vocab.encode(text.strip())
            if len(row) > limit:
                raise TinygenError(
                    f"the input {text[:40]!r} has {len(row)} tokens but the model reads at "
                    f"most {limit} (max_src_len); shorten it or retrain with a larger "
                    "--max-src-len"
                )
            ids.append(row)
        return pad_batch(ids)

    @torch.no_grad()
    def translate(
        self,
        texts: list[str],
        *,
        beam_size: int = 1,
        alpha: float = 0.6,
        batch_size: int = 500,
        use_cache: bool = True,
        progress: str | None = None,
    ) -> list[str]:
        """Translate each text; inputs are validated before any decoding starts. `progress`:
        the label of a progress bar over the batches (None: no bar)."""
        from tqdm.auto import tqdm

        self.model.eval()
        sources = [
            self.encode_sources(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
        ]
        device = next(self.model.parameters()).device
        out: list[str] = []
        bar = tqdm(sources, desc=progress, unit="batch", disable=progress is None, leave=False)
        for src in bar:
            hyps = decode_batch(
                self.model, src.to(device), beam_size=beam_size, alpha=alpha, use_cache=use_cache
            )
            out += [self.tgt_vocab.decode(row) for row in hyps.cpu()]
        return out

    def evaluate(self, pairs: list[tuple[str, str]], **decode_kwargs) -> TextScores:
        """Exact match and CER of the translations of `pairs`' sources against their targets."""
        predictions = self.translate([s for s, _ in pairs], **decode_kwargs)
        return score_texts(predictions, [t for _, t in pairs])

    def attention_map(self, text: str, translation: str) -> Tensor:
        """Cross-attention (T+1, S) of the last decoder layer, averaged over heads, for
        `translation` of `text`: row t is where the decoder looked to write token t (the
        last row, for <eos>)."""
        self.model.eval()
        src = self.encode_sources([text])
        tgt = self.tgt_vocab.encode(translation) if translation else []
        # <bos> + the translation, cut to the positions the decoder has
        tgt_in = pad_batch([tgt], bos=True)[:, : self.model.config.max_tgt_len]
        device = next(self.model.parameters()).device
        with torch.no_grad():
            weights = self.model.cross_attention_weights(src.to(device), tgt_in.to(device))
        return weights[0].mean(dim=0).cpu()  # (T+1, S)

    def draw_attention(self, text: str, translation: str, path: str | Path) -> None:
        """Save the heat map of `attention_map(text, translation)` with the tokens as labels."""
        weights = self.attention_map(text, translation)
        source = self.src_vocab.split(text.strip())
        target = (self.tgt_vocab.split(translation) + ["<eos>"])[: weights.shape[0]]
        save_attention_map(weights, source, target, path)


class Seq2SeqTask:
    """The trainer's view of a translation task (see `tinygen.train.trainer.Task`)."""

    items_name = "pairs"
    items_per_sample = 1

    def __init__(
        self, model: Seq2SeqTransformer, data: TranslationData, *, eval_examples: int = 500
    ) -> None:
        self.model, self.data, self.eval_examples = model, data, eval_examples
        self._check_fits(data.val_pairs + data.test_pairs)

    def _check_fits(self, pairs: list[tuple[str, str]]) -> None:
        config = self.model.config
        src = max(len(self.data.src_vocab.split(s)) for s, _ in pairs)
        tgt = max(len(self.data.tgt_vocab.split(t)) for _, t in pairs) + 1
        if src > config.max_src_len or tgt > config.max_tgt_len:
            raise TinygenError(
                f"the data has sources up to {src} and targets up to {tgt} tokens (with "
                f"<eos>), beyond the model's --max-src-len {config.max_src_len} / "
                f"--max-tgt-len {config.max_tgt_len}; raise them"
            )

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(src (B, S), decoder input <bos>+y (B, T), decoder target y+<eos> (B, T))."""
        pairs = self.data.draw(split, batch_size, generator)
        src = pad_batch([self.data.src_vocab.encode(s) for s, _ in pairs])
        tgt = [self.data.tgt_vocab.encode(t) for _, t in pairs]
        limit = self.model.config.max_tgt_len
        if max(len(t) for t in tgt) + 1 > limit or src.shape[1] > self.model.config.max_src_len:
            self._check_fits(pairs)
        return src, pad_batch(tgt, bos=True), pad_batch(tgt, eos=True)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Label-smoothed cross-entropy (Vaswani et al. 2017, sec. 5.4), padding ignored."""
        src, tgt_in, tgt_out = batch
        logits = model(src, tgt_in)  # (B, T, V); through DDP's forward when distributed
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            tgt_out.reshape(-1),
            ignore_index=PAD,
            label_smoothing=self.model.config.label_smoothing,
        )

    def translator(self, model: nn.Module | None = None) -> Translator:
        return Translator(model or self.model, self.data.src_vocab, self.data.tgt_vocab)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Greedy exact match and CER on the first `eval_examples` validation pairs."""
        if self.eval_examples <= 0:
            return {}
        scores = self.translator(model).evaluate(self.data.val_pairs[: self.eval_examples])
        return {"val_exact_match": scores.exact_match, "val_cer": scores.cer}

    def run_config(self) -> dict:
        """What config.json needs so `tinygen translate --run DIR` rebuilds everything."""
        return {"model_type": "seq2seq", "model": asdict(self.model.config), **self.data.describe()}


def evaluate_heldout(
    translator: Translator,
    pairs: list[tuple[str, str]],
    *,
    beams: tuple[int, ...] = (1, 4),
    alpha: float = 0.6,
    run_dir: str | Path | None = None,
) -> dict[str, TextScores]:
    """Score greedy (beam 1) and beam search on held-out pairs; optionally write the
    scores to run_dir/heldout_eval.json."""
    results = {}
    for beam in beams:
        name = "greedy" if beam == 1 else f"beam{beam}"
        label = f"held-out {name} ({len(pairs)} pairs)"
        results[name] = translator.evaluate(pairs, beam_size=beam, alpha=alpha, progress=label)
    if run_dir is not None:
        write_json(
            Path(run_dir) / HELDOUT_FILE,
            {"alpha": alpha, **{k: asdict(v) for k, v in results.items()}},
        )
    return results


def saved_data(config: dict) -> TranslationData:
    """The data a run was trained on, rebuilt from its config.json: the task spec (with its
    held-out seed) and both saved vocabularies."""
    vocabs = (Vocab.from_dict(config["source_vocab"]), Vocab.from_dict(config["target_vocab"]))
    return TranslationData(TaskSpec(**config["task"]), vocabs)


def train_seq2seq(
    model_config: Seq2SeqConfig,
    train_config: TrainConfig,
    out: str | Path,
    data: TranslationData,
    *,
    resume: bool = False,
    progress: bool = True,
    eval_examples: int = 500,
    final_beam: int = 4,
) -> tuple[TrainResult, dict[str, TextScores]]:
    """Train on `data` into `out` (the vocabulary sizes come from the data), then score
    greedy decoding and a `final_beam` beam search on the held-out test set with the best
    checkpoint (written to heldout_eval.json). The scores are empty when the run was
    interrupted, and on every rank but 0."""
    out = Path(out)
    model_config = dataclasses.replace(
        model_config,
        src_vocab_size=len(data.src_vocab),
        tgt_vocab_size=len(data.tgt_vocab),
        share_embeddings=data.src_vocab is data.tgt_vocab,
    )
    torch.manual_seed(train_config.seed)
    task = Seq2SeqTask(Seq2SeqTransformer(model_config), data, eval_examples=eval_examples)
    spec = data.spec
    result = fit(
        task,
        train_config,
        out,
        task.run_config(),
        resume=resume,
        progress=progress,
        announce=f", {spec.task} ({spec.direction}), vocabularies {len(data.src_vocab)} -> "
        f"{len(data.tgt_vocab)}",
    )
    if result.interrupted or not is_main_process():
        return result, {}
    beams = (1,) if final_beam <= 1 else (1, final_beam)
    translator = Translator.from_run(out, "best")
    return result, evaluate_heldout(translator, data.test_pairs, beams=beams, run_dir=out)


def save_attention_map(
    weights: Tensor, source: list[str], target: list[str], path: str | Path, title: str = ""
) -> None:
    """Draw cross-attention weights (T, S) as a heat map: source tokens along x, the target
    tokens written along y (the figure of Bahdanau et al. 2015 and Vaswani et al. 2017)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, s = weights.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * s + 2), max(3.0, 0.35 * t + 1.5)), dpi=120)
    ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(s), source, rotation=90 if max(map(len, source)) > 2 else 0)
    ax.set_yticks(range(t), target)
    ax.set_xlabel("source")
    ax.set_ylabel("target (written top to bottom)")
    ax.set_title(title or "cross-attention, last decoder layer, mean over heads", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
