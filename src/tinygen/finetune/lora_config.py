"""`LoraConfig`: the settings of a LoRA adapter, under Hugging Face PEFT's field names.

LoRA (Hu et al. 2021) adds (lora_alpha / r) * B A to a frozen weight W0 (paper eq. 3);
rsLoRA (Kalajdzievski 2023) scales by lora_alpha / sqrt(r) instead. The field names are
PEFT's, so a config reads the same here, in PEFT and in `adapter_config.json`. Only what
tinygen implements is here; PEFT options that would change the maths (bias training,
fan-in/fan-out weights, extra saved modules) exist as fields so that `validate` can refuse
them with a message, rather than silently train something else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from tinygen.errors import TinygenError

SUPPORTED_BIAS = ("none",)


@dataclass(frozen=True)
class LoraConfig:
    """One adapter's settings; every `LoRALinear` that `apply_lora` creates holds the same
    (immutable) instance as `layer.lora_config`."""

    r: int = field(default=8, metadata={"help": "rank of the update B A (A is r x in)", "min": 1})
    lora_alpha: float = field(
        default=8.0, metadata={"help": "scale numerator: the update is scaled by lora_alpha / r"}
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "dropout on the adapter's input, in [0, 1)", "min": 0, "below": 1},
    )
    target_modules: str | tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "layers to wrap: names (a name matches itself or any '.name' suffix), "
            "one regex matching whole names, or 'all-linear' (every linear layer but the "
            "output head)"
        },
    )
    bias: str = field(
        default="none",
        metadata={"help": "which biases train: only 'none' (biases stay frozen) is supported"},
    )
    use_rslora: bool = field(
        default=False,
        metadata={"help": "rank-stabilised LoRA: scale by lora_alpha / sqrt(r) instead"},
    )
    fan_in_fan_out: bool = field(
        default=False,
        metadata={
            "help": "base weights stored (in, out), as GPT-2's Conv1D; tinygen wraps "
            "nn.Linear (out, in), so only False is supported"
        },
    )
    modules_to_save: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "extra modules trained and saved whole; not supported (keep None)"},
    )

    def __post_init__(self) -> None:
        # configs read back from JSON carry lists; a tuple keeps the frozen config hashable
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, set)):
                object.__setattr__(self, name, tuple(value))

    @property
    def scaling(self) -> float:
        """The factor on B A: lora_alpha / r (paper eq. 3), or lora_alpha / sqrt(r) with
        rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def validate(self) -> None:
        """Raise a `TinygenError` naming the bad field and the fix."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise TinygenError(
                f"LoRA rank r must be a positive integer, got {self.r!r}; use e.g. r=8"
            )
        if not isinstance(self.lora_alpha, (int, float)) or not math.isfinite(self.lora_alpha):
            raise TinygenError(
                f"lora_alpha must be a finite number, got {self.lora_alpha!r}; "
                "use e.g. lora_alpha=r"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TinygenError(
                f"LoRA dropout must be in [0, 1), got {self.lora_dropout}; use e.g. 0.05"
            )
        if self.bias not in SUPPORTED_BIAS:
            raise TinygenError(
                f"LoRA bias={self.bias!r} is not supported: tinygen keeps every bias frozen "
                "and trains only A and B; set bias='none'"
            )
        if self.fan_in_fan_out:
            raise TinygenError(
                "fan_in_fan_out=True is not supported: tinygen wraps nn.Linear layers, "
                "whose weight is (out, in); set fan_in_fan_out=False"
            )
        if self.modules_to_save:
            raise TinygenError(
                f"modules_to_save={list(self.modules_to_save)} is not supported: a tinygen "
                "adapter holds only lora_A/lora_B; set modules_to_save=None (fine-tune "
                "those modules fully instead)"
            )
        targets = self.target_modules
        if isinstance(targets, tuple) and not all(isinstance(t, str) and t for t in targets):
            raise TinygenError(
                f"LoRA target_modules must be layer names, got {list(targets)}; "
                "pass e.g. target_modules=['qkv_proj', 'out_proj']"
            )


def resolve_config(config: LoraConfig | None, **settings: object) -> LoraConfig:
    """The validated config from either `config` or keyword settings (LoraConfig field
    names; None means not given), never both. `target_modules` may accompany a config that
    has none, as PEFT's `LoraConfig(target_modules=...)` would."""
    given = {k: v for k, v in settings.items() if v is not None}
    if config is None:
        config = LoraConfig(**given)
    else:
        targets = given.pop("target_modules", None)
        if given:
            raise TinygenError(
                f"LoRA settings given twice: config=LoraConfig(...) and {sorted(given)}; "
                "put them in the config, or pass keywords without a config"
            )
        if targets is not None:
            if (
                config.target_modules is not None
                and replace(config, target_modules=targets) != config
            ):
                raise TinygenError(
                    f"target_modules {targets!r} differ from the config's "
                    f"{config.target_modules!r}; give them in one place"
                )
            config = replace(config, target_modules=targets)
    config.validate()
    return config
