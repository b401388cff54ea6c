"""Low-rank adapters on the encoder's linear layers, for training; saved as the deltas
``postemb_rt.modeling.merge_adapters`` adds into the weights at load time."""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x @ A.T) @ B.T; base frozen, A (r, in), B (out, r) trained.
    B starts at zero, so the wrapped layer starts as the base layer."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def add_lora(encoder: nn.Module, targets: list[str], layers: list[int] | None, rank: int, alpha: float) -> list[str]:
    """Freeze the encoder and wrap every ``encoder.layer.<i>.<target>`` linear (i in layers,
    all when None) in a LoRALinear. Returns the wrapped module names."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, mod in list(encoder.named_modules()):
        if not isinstance(mod, nn.Linear) or not name.startswith("encoder.layer."):
            continue
        idx, rest = name[len("encoder.layer."):].split(".", 1)
        if rest not in targets or (layers is not None and int(idx) not in layers):
            continue
        parent_name, child = name.rsplit(".", 1)
        setattr(encoder.get_submodule(parent_name), child, LoRALinear(mod, rank, alpha))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"`lora_targets` {targets} matched no linear layer of the encoder.")
    return wrapped


def adapter_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """{``<linear>.lora_A``: (r, in), ``<linear>.lora_B``: (out, r) with the scale folded in}."""
    out = {}
    for name, mod in encoder.named_modules():
        if isinstance(mod, LoRALinear):
            out[f"{name}.lora_A"] = mod.lora_A.detach().contiguous().clone()
            out[f"{name}.lora_B"] = (mod.lora_B.detach() * mod.scale).contiguous().clone()
    return out
