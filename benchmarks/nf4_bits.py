"""Bits per parameter of NF4 with and without double quantisation, from the actual bytes
of quantised tensors (codes + every block constant), on LLaMA-2-7B-shaped weight matrices
and on a whole tinygen GPT run.

    python benchmarks/nf4_bits.py [--run runs/base-baby]
"""

from __future__ import annotations

import argparse

import torch

from tinygen.finetune.nf4 import Linear4bit, quantize_model, quantize_nf4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=None, help="a GPT run directory to quantise whole")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    print("| weight | params | NF4 bits/param | NF4 + DQ bits/param |")
    print("|---|---|---|---|")
    for name, shape in (("LLaMA-2-7B q_proj", (4096, 4096)), ("LLaMA-2-7B up_proj", (11008, 4096))):
        w = torch.randn(shape, generator=gen) * 0.02
        plain, dq = quantize_nf4(w, double_quant=False), quantize_nf4(w, double_quant=True)
        print(
            f"| {name} {shape[0]}x{shape[1]} | {w.numel():,} | {plain.bits_per_param:.4f} "
            f"({plain.nbytes:,} B) | {dq.bits_per_param:.4f} ({dq.nbytes:,} B) |"
        )
    if args.run:
        from tinygen.models.runs import load_model

        for double_quant in (False, True):
            model, _ = load_model(args.run)
            quantize_model(model, double_quant=double_quant)
            layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
            nbytes = sum(m.weight_nf4.nbytes for m in layers)
            numel = sum(m.quantized_numel for m in layers)
            print(
                f"| {args.run}: {len(layers)} linear layers, double_quant={double_quant} | "
                f"{numel:,} | {8 * nbytes / numel:.4f} bits/param ({nbytes:,} B) | |"
            )


if __name__ == "__main__":
    main()
