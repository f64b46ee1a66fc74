"""4-bit NormalFloat (NF4) quantisation and the QLoRA base layer (Dettmers et al. 2023).

NF4 stores each weight as one of 16 levels that split a standard normal distribution into
equal-mass bins (QLoRA, sec. 3, eq. 4), scaled per block of 64 weights by the block's
absolute maximum. Double quantisation (sec. 3, "Double Quantization") stores those fp32
absmax constants in 8 bits too: subtract their mean, then quantise them with the signed
8-bit "dynamic" map in blocks of 256. Per weight that costs 4 + 8/64 + 32/(64*256) = 4.127
bits instead of 4 + 32/64 = 4.5.

Everything here is plain PyTorch and byte-for-byte compatible with bitsandbytes'
`quantize_4bit(..., quant_type="nf4")`: the tensor is flattened row-major into blocks,
each value is scaled by the reciprocal of its block's absmax and mapped to the nearest
level (ties go to the lower level), two codes share a byte with the first element in the
high nibble, and an odd count is padded with the code of 0.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.finetune.surgery import has_adapter_layers, replace_module, tied_linear_names

# The 16 NF4 levels, bitsandbytes' exact float32 values (QLoRA appendix E).
NF4_LEVELS = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)  # fmt: skip
NF4_ZERO_CODE = 7  # the code of 0.0, used to pad an odd number of weights
ABSMAX_BLOCKSIZE = 256  # block size of the double quantisation (bitsandbytes' choice)
_VALID_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def dynamic_map(max_exponent_bits: int = 7) -> Tensor:
    """The signed 8-bit "dynamic" data type (Dettmers 2015, "8-bit approximations"):
    a dynamic exponent 10^-6 .. 10^0 and a linear fraction whose bits shrink as the
    exponent grows. 256 sorted float32 values in [-1, 1]; equal to bitsandbytes'
    `create_dynamic_map(signed=True)`, which double quantisation uses for the absmax."""
    values: list[float] = []
    for i in range(max_exponent_bits):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0  # fraction values at this exponent
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        values += (scale * means).tolist() + (-scale * means).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)


def _nearest_code(scaled: Tensor, levels: Tensor) -> Tensor:
    """Index of the nearest level for values in [-1, 1]; a value exactly between two
    levels goes to the lower one (the midpoint belongs to the left bucket)."""
    midpoints = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(scaled, midpoints.to(scaled.device)).to(torch.uint8)


def _blockwise_scale(flat: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """Split `flat` (n,) fp32 into blocks; return each value scaled into [-1, 1] (n,) and
    each block's absmax (n_blocks,). Full blocks multiply by the reciprocal of the absmax
    and a final partial block divides by it, exactly as bitsandbytes does."""
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)  # (n_full_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)
    if full < n:
        tail_max = flat[full:].abs().amax().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max[None]])
        scaled = torch.cat([scaled, (flat[full:] / tail_max).clamp(-1, 1)])
    return scaled, absmax


def _blockwise_unscale(values: Tensor, absmax: Tensor, blocksize: int) -> Tensor:
    """Inverse of the scaling: values (n,) times their block's absmax."""
    n = values.numel()
    full = n - n % blocksize
    out = (values[:full].view(-1, blocksize) * absmax[: full // blocksize, None]).reshape(-1)
    if full < n:
        out = torch.cat([out, values[full:] * absmax[-1]])
    return out


@dataclass
class NF4Tensor:
    """A weight stored in NF4. `packed` is bitsandbytes' layout: (ceil(n/2),) uint8.

    Without double quantisation the block constants are `absmax` (n_blocks,) fp32. With
    it, `absmax` holds their 8-bit codes (uint8) and `absmax_scale` (n_blocks/256,) fp32
    plus `absmax_offset` () fp32 undo them.
    """

    packed: Tensor
    absmax: Tensor
    shape: tuple[int, ...]
    blocksize: int = 64
    absmax_scale: Tensor | None = None
    absmax_offset: Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nbytes(self) -> int:
        """Every byte this tensor stores: codes and all block constants. (The 16 NF4
        levels and the 256-entry dynamic map are global constants, not stored per tensor.)"""
        parts = [self.packed, self.absmax, self.absmax_scale, self.absmax_offset]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.numel

    def block_absmax(self) -> Tensor:
        """The fp32 absmax of every 64-weight block (decoded when double-quantised)."""
        if not self.double_quant:
            return self.absmax
        codes = _DYNAMIC_MAP.to(self.absmax.device)[self.absmax.long()]
        return _blockwise_unscale(codes, self.absmax_scale, ABSMAX_BLOCKSIZE) + self.absmax_offset

    def codes(self) -> Tensor:
        """The unpacked 4-bit codes, (n,) uint8 in row-major order."""
        high, low = self.packed >> 4, self.packed & 0xF
        return torch.stack([high, low], dim=1).reshape(-1)[: self.numel]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Back to a dense tensor of `shape`: level[code] * absmax of its block. One lookup
        per byte yields both of its levels (the fast twin of `codes()`): the 256 x 2 fp32
        table is read as 256 float64 words, so a single 1-D gather fetches each pair."""
        table = _BYTE_TO_LEVELS.to(self.packed.device).view(torch.float64).view(256)
        pairs = table.index_select(0, self.packed.int()).view(torch.float32)  # (2 * n_bytes,)
        values = pairs[: self.numel]  # (n,) fp32
        return (
            _blockwise_unscale(values, self.block_absmax(), self.blocksize)
            .view(self.shape)
            .to(dtype)
        )


_DYNAMIC_MAP = dynamic_map()
# byte -> (level of its high nibble, level of its low nibble)
_BYTE_TO_LEVELS = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=1)


def quantize_nf4(weight: Tensor, blocksize: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Quantise `weight` (any shape, fp32/fp16/bf16) to NF4 in blocks of `blocksize`.

    The packed codes equal bitsandbytes' `quantize_4bit(weight, blocksize, quant_type="nf4")`
    byte for byte; with `double_quant` the absmax constants are stored as bitsandbytes'
    `compress_statistics=True` does (mean-centred, 8-bit dynamic map, blocks of 256).
    """
    if blocksize not in _VALID_BLOCKSIZES:
        raise TinygenError(f"NF4 blocksize must be one of {_VALID_BLOCKSIZES}, got {blocksize}")
    if not weight.is_floating_point():
        raise TinygenError(f"NF4 quantises floating-point weights, got dtype {weight.dtype}")
    if weight.numel() == 0:
        raise TinygenError("cannot quantise an empty tensor to NF4")
    flat = weight.detach().reshape(-1).float()
    if not torch.isfinite(flat).all():
        raise TinygenError("the weight holds NaN or Inf values; NF4 cannot quantise it")
    scaled, absmax = _blockwise_scale(flat, blocksize)
    codes = _nearest_code(scaled, NF4_LEVELS)
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1), value=NF4_ZERO_CODE)
    packed = (codes[0::2] << 4) | codes[1::2]  # first element in the high nibble
    if not double_quant:
        return NF4Tensor(packed, absmax, tuple(weight.shape), blocksize)
    offset = absmax.mean()
    scaled_absmax, absmax_scale = _blockwise_scale(absmax - offset, ABSMAX_BLOCKSIZE)
    absmax_codes = _nearest_code(scaled_absmax, _DYNAMIC_MAP)
    return NF4Tensor(packed, absmax_codes, tuple(weight.shape), blocksize, absmax_scale, offset)


class _NF4Matmul(torch.autograd.Function):
    """y = x @ dequant(W).T + b, saving only the 4-bit weight for backward (the dense weight is
    rebuilt there), so a frozen NF4 layer never keeps a float copy of its weight alive."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: Linear4bit) -> Tensor:
        ctx.layer = layer
        bias = None if layer.bias is None else layer.bias.to(x.dtype)  # frozen: no gradient
        return F.linear(x, layer.dequantize_weight(x.dtype), bias)  # (..., out)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad_out @ ctx.layer.dequantize_weight(grad_out.dtype), None


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 and dequantised on the fly in
    the compute dtype (the input's dtype, or the autocast dtype: fp32 on CPU, bf16 on
    CUDA). The bias stays in float and frozen. Put LoRA on top with `apply_lora`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        blocksize: int = 64,
        double_quant: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.blocksize, self.double_quant = blocksize, double_quant
        zero = quantize_nf4(torch.zeros(out_features, in_features), blocksize, double_quant)
        self._set_quantized(zero)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def _set_quantized(self, q: NF4Tensor) -> None:
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax_scale", q.absmax_scale)
        self.register_buffer("absmax_offset", q.absmax_offset)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, blocksize: int = 64, double_quant: bool = True
    ) -> Linear4bit:
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            blocksize=blocksize,
            double_quant=double_quant,
        )
        layer._set_quantized(quantize_nf4(linear.weight, blocksize, double_quant))
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)

    @property
    def weight_nf4(self) -> NF4Tensor:
        return NF4Tensor(
            self.packed,
            self.absmax,
            (self.out_features, self.in_features),
            self.blocksize,
            self.absmax_scale,
            self.absmax_offset,
        )

    @property
    def quantized_numel(self) -> int:
        """How many weights the 4-bit storage represents (for parameter counts)."""
        return self.out_features * self.in_features

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.weight_nf4.dequantize(dtype)  # (out, in)

    def to_linear(self) -> nn.Linear:
        """A float nn.Linear with the dequantised weight (what merging LoRA needs)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.packed.device,
        )
        linear.weight.data = self.dequantize_weight()
        if self.bias is not None:
            linear.bias.data = self.bias.detach().clone()
        return linear.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        return _NF4Matmul.apply(x.to(dtype), self)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, blocksize={self.blocksize}, "
            f"double_quant={self.double_quant}"
        )


# The old private name (memory.py and older callers import it from here).
_tied_linear_names = tied_linear_names


def quantize_model(
    model: nn.Module,
    skip: list[str] | tuple[str, ...] = ("lm_head",),
    *,
    blocksize: int = 64,
    double_quant: bool = True,
    only: list[str] | None = None,
) -> list[str]:
    """Replace every nn.Linear of `model` by a frozen `Linear4bit`, in place, and return
    the replaced names. A name is skipped when it equals or ends with an entry of `skip`
    (or fully matches it as a regex), and always when its weight is tied to another module.
    `only` (exact names) replaces the selection, as loading a QLoRA adapter needs.
    Call before `apply_lora`; the LoRA wrappers then sit on the 4-bit layers."""
    if has_adapter_layers(model):
        raise TinygenError("quantize the base model before applying LoRA, not after")
    tied = tied_linear_names(model)

    def skipped(name: str) -> bool:
        if only is not None:
            return name in tied or name not in only
        return name in tied or any(
            name == s or name.endswith("." + s) or re.fullmatch(s, name) for s in skip
        )

    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not skipped(name)
    ]
    for name in targets:
        linear = model.get_submodule(name)
        replace_module(
            model,
            name,
            Linear4bit.from_linear(linear, blocksize=blocksize, double_quant=double_quant),
        )
    return targets
