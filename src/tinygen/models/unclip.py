"""unCLIP (DALL-E 2, Ramesh et al. 2022): a frozen CLIP, a diffusion prior, a decoder.

Composed at sampling time from three runs -- nothing is copied between them:
  - the CLIP run (trained once, frozen) embeds prompts and images;
  - the prior (`models/prior.py`) turns a caption and its CLIP text embedding into a CLIP
    *image* embedding;
  - the decoder, the one `DiffusionModel` with `conditioning="clip_image"`, paints an image
    from a CLIP image embedding, with classifier-free guidance on the zero embedding.

What only this design allows, beside text-to-image (`generate`): `variations` of an image
(its CLIP image embedding decoded with DDIM, eta > 0, from fresh noise or from the image's
own DDIM-inverted x_T, paper sec. 3.1), `interpolate` between two images (slerp of their
embeddings, the decoder noise held fixed) and `text_diff` (the embedding moved toward the
difference of two captions' text embeddings, sec. 3.2).

A decoder run names its CLIP and prior runs in `components.json`; `from_runs` checks that
the three fit together: the same CLIP (by a fingerprint of its weights file, recorded in
the prior's and the decoder's config.json at training time) and the same embedding width.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from tinygen import io
from tinygen.diffusion import guidance as guidance_lib
from tinygen.diffusion.inversion import ddim_invert
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.models.prior import PRIOR_SAMPLER, DiffusionPrior
from tinygen.models.text2image import check_vocabulary

COMPONENTS_FILE = "components.json"
PRIOR_TYPE, DECODER_TYPE = "unclip-prior", "unclip-decoder"


def clip_fingerprint(clip_run: str | Path) -> str:
    """The CLIP run's `io.weights_fingerprint`: what the embedding caches and the
    prior/decoder runs are keyed by."""
    return io.weights_fingerprint(clip_run)


def slerp(a: Tensor, b: Tensor, weight: float | Tensor) -> Tensor:
    """Spherical interpolation of unit vectors (..., D): a at weight 0, b at 1 (Shoemake
    1985); nearly parallel vectors fall back to the normalised linear interpolation."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    w = torch.as_tensor(weight, dtype=a.dtype, device=a.device)
    if w.dim() == 1:
        w = w[:, None]
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    near = so.abs() < 1e-4
    safe = torch.where(near, torch.ones_like(so), so)
    out = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / safe
    return torch.where(near, F.normalize((1 - w) * a + w * b, dim=-1), out)


def read_components(decoder_run: str | Path) -> dict[str, Path | None]:
    """The CLIP and prior runs a decoder run names in components.json (paths relative to the
    decoder run), {"clip": ..., "prior": ...}; None where it names none."""
    path = Path(decoder_run) / COMPONENTS_FILE
    if not path.is_file():
        return {"clip": None, "prior": None}
    data = io.read_json(path)
    return {k: (Path(decoder_run) / data[k] if data.get(k) else None) for k in ("clip", "prior")}


class UnCLIP:
    """CLIP + prior + decoder; a `TextToImage` pipeline (models/text2image.py)."""

    def __init__(
        self,
        clip,
        clip_tokenizer,
        decoder,
        *,
        prior: DiffusionPrior | None = None,
        tokenizer=None,
        prior_guidance: float = 1.0,
        rerank: int = 2,
        prior_sampler: SamplerConfig = PRIOR_SAMPLER,
        names: dict[str, str] | None = None,
    ) -> None:
        if decoder.config.conditioning != "clip_image":
            raise TinygenError(
                "an unCLIP decoder is a diffusion model with conditioning=clip_image"
            )
        self.clip, self.clip_tokenizer = clip.eval(), clip_tokenizer
        self.decoder, self.prior, self.tokenizer = decoder.eval(), prior, tokenizer
        if prior is not None:
            prior.eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.prior_guidance, self.rerank, self.prior_sampler = prior_guidance, rerank, prior_sampler
        self.names = names or {}
        self.image_size = decoder.config.unet.image_size
        self.embed_dim = clip.config.embed_dim

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_runs(
        cls,
        *,
        clip: str | Path,
        decoder: str | Path,
        prior: str | Path | None = None,
        which: str = "ema",
        device: str | torch.device = "cpu",
        **options,
    ) -> UnCLIP:
        """Load and check the three runs (a prior is optional for variations/interpolation).
        A prior or decoder trained on another CLIP, or of another embedding width, is one
        error naming both runs."""
        from tinygen.data.caption_tokenizer import load_caption_tokenizer
        from tinygen.models.runs import load_model

        clip_model, clip_config = load_model(clip, which="best", device=device, expect="clip")
        fingerprint = clip_fingerprint(clip)
        decoder_model, decoder_config = load_model(
            decoder, which=which, device=device, expect=DECODER_TYPE
        )
        check_component(decoder, decoder_config, clip, clip_model.config.embed_dim, fingerprint)
        size = clip_model.config.image_size
        if decoder_model.config.unet.image_size != size:
            raise TinygenError(
                f"decoder {decoder} paints {decoder_model.config.unet.image_size} px but CLIP "
                f"run {clip} reads {size} px images; train the decoder with --clip {clip}"
            )
        prior_model = tokenizer = None
        if prior is not None:
            prior_model, prior_config = load_model(
                prior, which=which, device=device, expect=PRIOR_TYPE
            )
            check_component(prior, prior_config, clip, clip_model.config.embed_dim, fingerprint)
            tokenizer = load_caption_tokenizer(prior)
        names = {"clip": str(clip), "decoder": str(decoder), "prior": str(prior)}
        return cls(
            clip_model, load_caption_tokenizer(clip), decoder_model, prior=prior_model,
            tokenizer=tokenizer, names=names, **options,
        )  # fmt: skip

    # -- embeddings ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def check_prompts(self, prompts: list[str]) -> None:
        if self.prior is None or self.tokenizer is None:
            raise TinygenError(
                f"decoder {self.names.get('decoder')} has no prior: text-to-image needs one; "
                "pass --prior RUN or train the decoder with --prior RUN (components.json)"
            )
        check_vocabulary(prompts, self.tokenizer.words)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """CLIP's unit-norm text embeddings (B, D). Words CLIP's vocabulary lacks (the shapes
        CLIP never read a two-object caption) are read as `<unk>` without a warning: the
        prior's own caption tokens carry them."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = self.clip_tokenizer.encode_batch(prompts)
        return self.clip.encode_text(tokens.to(self.device)).float()

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """CLIP's unit-norm image embeddings (B, D) of images (B, 3, H, W) in [-1, 1]."""
        return self.clip.encode_image(images.to(self.device)).float()

    @torch.no_grad()
    def prior_embeddings(
        self,
        prompts: list[str],
        *,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
        rerank: int | None = None,
    ) -> Tensor:
        """The prior's CLIP image embedding (B, D), unit norm, one per prompt."""
        self.check_prompts(prompts)
        return self.prior.generate(
            self.tokenizer.encode_batch(prompts),
            self.text_embeddings(prompts),
            guidance=self.prior_guidance if guidance is None else guidance,
            rerank=self.rerank if rerank is None else rerank,
            sampler=self.prior_sampler,
            generator=generator,
        )

    # -- decoding ------------------------------------------------------------------------------

    def _condition(self, embeddings: Tensor, prompts: list[str] | None) -> dict:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise TinygenError(
                f"embeddings must be (B, {self.embed_dim}), got {tuple(embeddings.shape)}"
            )
        cond = {"embedding": embeddings.to(self.device)}
        if self.decoder.config.clip_image.captions:
            if prompts is None or self.tokenizer is None:
                cond.update(
                    self.decoder.conditioner.text.null_condition(len(embeddings), self.device)
                )
            else:
                cond["tokens"] = self.tokenizer.encode_batch(prompts).to(self.device)
        return cond

    @torch.no_grad()
    def decode(
        self,
        embeddings: Tensor,
        *,
        prompts: list[str] | None = None,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        x_T: Tensor | None = None,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] painted from CLIP image embeddings (B, D)."""
        return self.decoder.denoise(
            len(embeddings), cond=self._condition(embeddings, prompts), guidance=guidance,
            sampler=sampler, generator=generator, x_T=x_T, callback=callback, progress=progress,
        ).clamp(-1, 1)  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        *,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        rerank: int | None = None,
        prior_guidance: float | None = None,
        clip=None,
        clip_scale: float = 0.0,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """One image (B, 3, H, W) per prompt: the prior, then the decoder (one batch each)."""
        if clip_scale:
            raise TinygenError(
                "noised-CLIP guidance (--clip-scale) is GLIDE's; an unCLIP decoder is "
                "conditioned on CLIP embeddings instead -- drop --clip-scale"
            )
        embeddings = self.prior_embeddings(
            prompts, generator=generator, guidance=prior_guidance, rerank=rerank
        )
        return self.decode(
            embeddings, prompts=prompts, guidance=guidance, sampler=sampler,
            generator=generator, callback=callback, progress=progress,
        )  # fmt: skip

    # -- what only unCLIP does -----------------------------------------------------------------

    def check_images(self, images: Tensor) -> None:
        size = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise TinygenError(
                f"images must be (N, 3, {size}, {size}) in [-1, 1], got {tuple(images.shape)}; "
                f"this decoder paints {size}x{size} RGB images"
            )

    @torch.no_grad()
    def invert(
        self, images: Tensor, embeddings: Tensor | None = None, *, steps: int = 50
    ) -> Tensor:
        """The decoder's DDIM-inverted x_T of images (B, 3, H, W), conditioned on their own
        CLIP embeddings (guidance 1, the conditional model; paper sec. 3.1)."""
        self.check_images(images)
        embeddings = self.image_embeddings(images) if embeddings is None else embeddings
        cond = self._condition(embeddings, None)
        null = self.decoder.null_condition(len(images), self.device)
        model_fn = guidance_lib.classifier_free_guidance(self.decoder, cond, null, 1.0)
        return ddim_invert(
            model_fn, images.to(self.device), self.decoder.schedule,
            prediction_type=self.decoder.config.prediction_type, num_inference_steps=steps,
        )  # fmt: skip

    @torch.no_grad()
    def variations(
        self,
        images: Tensor,
        n: int,
        *,
        eta: float = 1.0,
        from_inversion: bool = False,
        guidance: float = 3.0,
        steps: int = 50,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """n variations of each image: (B * n, 3, H, W), image-major. The image's CLIP
        embedding decoded by DDIM with `eta` > 0, from fresh noise or (`from_inversion`)
        from the image's DDIM-inverted x_T."""
        if eta <= 0:
            raise TinygenError(f"variations need DDIM noise eta > 0 (got {eta}); try --eta 1")
        if n < 1:
            raise TinygenError(f"--n must be >= 1 variations, got {n}")
        self.check_images(images)
        embeddings = self.image_embeddings(images)
        x_T = None
        if from_inversion:
            x_T = self.invert(images, embeddings, steps=steps).repeat_interleave(n, 0)
        sampler = SamplerConfig(steps=steps, eta=eta)
        return self.decode(
            embeddings.repeat_interleave(n, 0), guidance=guidance, sampler=sampler,
            generator=generator, x_T=x_T, progress=progress,
        )  # fmt: skip

    @torch.no_grad()
    def interpolate(
        self,
        image_a: Tensor,
        image_b: Tensor,
        steps: int,
        *,
        guidance: float = 3.0,
        sampler_steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`steps` images (steps, 3, H, W) from image_a to image_b (each (1, 3, H, W) or
        (3, H, W)): slerp of their CLIP embeddings, one fixed x_T, deterministic DDIM."""
        if steps < 2:
            raise TinygenError(f"--steps must be >= 2 (both ends), got {steps}")
        a, b = (x if x.dim() == 4 else x[None] for x in (image_a, image_b))
        self.check_images(torch.cat([a, b]))
        za, zb = self.image_embeddings(torch.cat([a, b]))
        weights = torch.linspace(0, 1, steps)
        embeddings = slerp(za.expand(steps, -1), zb.expand(steps, -1), weights.to(za.device))
        x_T = torch.randn((1, 3, self.image_size, self.image_size), generator=generator)
        return self.decode(
            embeddings, guidance=guidance, sampler=SamplerConfig(steps=sampler_steps),
            x_T=x_T.expand(steps, -1, -1, -1).to(self.device),
        )  # fmt: skip

    @torch.no_grad()
    def text_diff(
        self,
        image: Tensor,
        from_caption: str,
        to_caption: str,
        amount: float | list[float],
        *,
        guidance: float = 3.0,
        steps: int = 50,
    ) -> Tensor:
        """Move an image toward a caption change (paper sec. 3.2): z_d = normalise(z_t(to) -
        z_t(from)), the image embedding slerped toward z_d by each `amount` (0 = the image,
        ~0.5 = the paper's range), decoded from the image's DDIM-inverted x_T (eta 0).
        Returns (len(amounts), 3, H, W)."""
        image = image if image.dim() == 4 else image[None]
        self.check_images(image)
        amounts = [amount] if isinstance(amount, (int, float)) else list(amount)
        if not amounts or any(not 0 <= a <= 1 for a in amounts):
            raise TinygenError(f"text-diff amounts must lie in [0, 1], got {amounts}")
        z_i = self.image_embeddings(image)
        z_from, z_to = self.text_embeddings([from_caption, to_caption])
        z_d = F.normalize(z_to - z_from, dim=-1)[None]
        k = len(amounts)
        embeddings = slerp(z_i.expand(k, -1), z_d.expand(k, -1), torch.tensor(amounts).to(z_i))
        x_T = self.invert(image, z_i, steps=steps).expand(k, -1, -1, -1)
        return self.decode(
            embeddings, guidance=guidance, sampler=SamplerConfig(steps=steps), x_T=x_T
        )


def check_component(
    run: str | Path, config: dict, clip: str | Path, embed_dim: int, fingerprint: str
) -> None:
    """A prior or decoder run must have been trained on this CLIP run: same width, same
    weights (the fingerprint recorded in its config.json)."""
    recorded = config.get("clip") or {}
    width = recorded.get("embed_dim")
    if width is not None and width != embed_dim:
        raise TinygenError(
            f"{run} was trained on {width}-wide CLIP embeddings (CLIP run "
            f"{recorded.get('run')}) but CLIP run {clip} embeds into {embed_dim}; pass the "
            f"CLIP run it was trained on, or retrain it with --clip {clip}"
        )
    if recorded.get("fingerprint") not in (None, fingerprint):
        raise TinygenError(
            f"{run} was trained on CLIP run {recorded.get('run')} (weights "
            f"{recorded['fingerprint']}), but CLIP run {clip} has other weights "
            f"({fingerprint}); pass the CLIP run it was trained on, or retrain it with "
            f"--clip {clip}"
        )


def embedding_stats(embeddings: Tensor) -> dict[str, float]:
    """The mean square of an entry after the prior's scaling (1 by construction) and the
    std of the entries (what the paper measured to pick its 17.2)."""
    scaled = F.normalize(embeddings.float(), dim=-1) * math.sqrt(embeddings.shape[-1])
    return {"mean_square": float(scaled.pow(2).mean()), "std": float(scaled.std())}
