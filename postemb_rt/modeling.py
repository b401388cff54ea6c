"""The model as a torch module: encoder -> masked mean pool -> optional projection -> L2 norm.

One class serves the torch backend, the ONNX exporter and fine-tuning, so every path
computes the same function.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import BackendUnavailableError, ModelNotFoundError
from .model_dir import ModelDir, PROJECTION_FILE
from .ops.reference import masked_mean_pool_l2_ref


def merge_adapters(encoder: nn.Module, path) -> int:
    """Add low-rank deltas to the encoder's linear weights in place: W (out, in) += B (out, r)
    @ A (r, in), for each ``<module>.lora_A`` / ``<module>.lora_B`` pair in the safetensors
    file. After the merge the model is an ordinary encoder: no extra work per forward pass.
    Returns the number of layers changed."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    modules = dict(encoder.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in state})
    for name in names:
        a, b = state.get(f"{name}.lora_A"), state.get(f"{name}.lora_B")
        mod = modules.get(name)
        if a is None or b is None or not isinstance(mod, nn.Linear):
            raise ValueError(f"`{path}`: {name!r} needs lora_A and lora_B and must name a linear layer of the encoder.")
        if (b.shape[0], a.shape[1]) != tuple(mod.weight.shape) or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"`{path}`: {name!r} has lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}; "
                f"the layer's weight is {tuple(mod.weight.shape)}."
            )
        with torch.no_grad():
            mod.weight += (b.float() @ a.float()).to(mod.weight.dtype)
    return len(names)


class PostEmbModel(nn.Module):
    """forward(input_ids (B, S) int64, attention_mask (B, S) int64) -> (pooled (B, D) float32
    before normalisation, embedding (B, D) float32 unit rows)."""

    def __init__(self, encoder: nn.Module, projection: nn.Linear | None):
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    @classmethod
    def from_model_dir(cls, md: ModelDir, attn_implementation: str | None = None) -> "PostEmbModel":
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        if md.encoder_path is None:
            raise BackendUnavailableError(
                f"`{md.path}` holds only an ONNX model, so the torch backend cannot run it. "
                "Fix: use backend='onnxruntime', or load the source model directory."
            )
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        hf_logging.disable_progress_bar()  # a per-load weights bar is noise inside a runtime
        if not any(md.encoder_path.glob("*.safetensors")):
            found = sorted(p.name for p in md.encoder_path.glob("*.bin")) or "no weights file"
            raise ModelNotFoundError(
                f"`{md.encoder_path}` has no model.safetensors (found: {found}). Pickled weights "
                "(pytorch_model.bin) are never loaded: unpickling can run code. Fix: convert them once where you "
                "trust the file, e.g. AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True).")
        # use_safetensors=True: never fall back to unpickling a .bin file
        encoder = AutoModel.from_pretrained(str(md.encoder_path), local_files_only=True, use_safetensors=True,
                                            **kwargs)
        if md.adapters_path is not None:
            merge_adapters(encoder, md.adapters_path)
        projection = None
        if md.projection_path is not None:
            from safetensors.torch import load_file

            state = load_file(str(md.projection_path))
            out_dim, in_dim = state["weight"].shape
            if in_dim != md.config.hidden_size or out_dim != md.config.projection_dim:
                raise ValueError(
                    f"`{PROJECTION_FILE}` in {md.path} has weight shape {tuple(state['weight'].shape)}; "
                    f"postemb.json says ({md.config.projection_dim}, {md.config.hidden_size})."
                )
            projection = nn.Linear(in_dim, out_dim, bias="bias" in state)
            projection.load_state_dict(state)
        return cls(encoder, projection).eval()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, S, H) last hidden states."""
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        )
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.hidden_states(input_ids, attention_mask)
        weight = bias = None
        if self.projection is not None:
            weight, bias = self.projection.weight.t(), self.projection.bias
        pooled = masked_mean_pool_l2_ref(h, attention_mask, weight, bias, normalize=False, dtype=h.dtype)
        return pooled, nn.functional.normalize(pooled, p=2.0, dim=-1, eps=1e-12)
