"""The model as a torch module: encoder -> pooling -> head -> L2 norm.

Pooling is the model's mode (mean, cls, max, lasttoken); the head is the projection of a
postemb.json model, or a sentence-transformers folder's Dense modules (each Linear then its
activation). One class serves the torch backend, the ONNX exporter and fine-tuning, so
every path computes the same function.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from .durable import read_safetensors
from .errors import BackendUnavailableError, ModelNotFoundError, ValidationError
from .model_dir import ModelDir, PROJECTION_FILE
from .ops.reference import masked_mean_pool_l2_ref, pool_ref

# Dense activations by the name postemb_rt.st_folder gives them
ACTIVATIONS = {"identity": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "silu": nn.SiLU}


def load_dense(md: ModelDir) -> nn.ModuleList:
    """The Dense modules of ``md.config.dense`` as nn.Sequential(Linear, activation) each, weights
    read from their files (safetensors, or a torch pickle loaded with weights_only)."""
    layers = nn.ModuleList()
    for d in md.config.dense or ():
        path = md.path / d["file"]
        if path.suffix == ".safetensors":
            state = read_safetensors(path, "Dense weights")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        linear = nn.Linear(d["in_features"], d["out_features"], bias=d["bias"])
        want = {"linear.weight": (d["out_features"], d["in_features"]), **({"linear.bias": (d["out_features"],)}
                                                                           if d["bias"] else {})}
        got = {k: tuple(v.shape) for k, v in state.items() if k in want}
        if got != want:
            raise ValidationError(f"`{path}` holds {got or sorted(state)}; its config.json says {want}. "
                                  "Fix: save the Dense module again so its weights match its config.")
        linear.load_state_dict({k[len("linear."):]: v for k, v in state.items() if k in want})
        layers.append(nn.Sequential(linear, ACTIVATIONS[d["activation"]]()))
    return layers


def merge_adapters(encoder: nn.Module, path) -> int:
    """Add low-rank deltas to the encoder's linear weights in place: W (out, in) += B (out, r)
    @ A (r, in), for each ``<module>.lora_A`` / ``<module>.lora_B`` pair in the safetensors
    file. After the merge the model is an ordinary encoder: no extra work per forward pass.
    Returns the number of layers changed."""
    state = read_safetensors(path, "low-rank adapters")
    modules = dict(encoder.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in state})
    for name in names:
        a, b = state.get(f"{name}.lora_A"), state.get(f"{name}.lora_B")
        mod = modules.get(name)
        if a is None or b is None or not isinstance(mod, nn.Linear):
            raise ValidationError(f"`{path}`: {name!r} needs lora_A and lora_B and must name a linear layer of the "
                                  "encoder. Fix: restore the file, or train the adapters again for this encoder.")
        if (b.shape[0], a.shape[1]) != tuple(mod.weight.shape) or a.shape[0] != b.shape[1]:
            raise ValidationError(
                f"`{path}`: {name!r} has lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}; "
                f"the layer's weight is {tuple(mod.weight.shape)}. Fix: restore the file, or train the adapters "
                "again for this encoder."
            )
        with torch.no_grad():
            mod.weight += (b.float() @ a.float()).to(mod.weight.dtype)
    return len(names)


def _check_complete(md: ModelDir, info: dict) -> None:
    """Refuse an encoder whose weights lack some of its tensors or hold them at other sizes than its
    config.json, which transformers would initialise at random (it only prints a report). The pooler
    is never run (pooling is the model's own), so a checkpoint saved without it is complete;
    ``position_ids`` are buffers, not weights."""
    def used(key: str) -> bool:
        return not key.startswith("pooler.") and not key.endswith("position_ids")

    missing = sorted(k for k in info.get("missing_keys") or () if used(k))
    mismatched = sorted(str(m[0] if isinstance(m, (tuple, list)) else m) for m in info.get("mismatched_keys") or ())
    files = sorted(p.name for p in md.encoder_path.glob("*.safetensors"))
    where = md.encoder_path / files[0] if len(files) == 1 else f"{md.encoder_path} ({', '.join(files)})"
    if [k for k in mismatched if used(k)]:
        raise ValidationError(
            f"`{where}` holds tensors of other sizes than `{md.encoder_path / 'config.json'}` says "
            f"({', '.join(mismatched[:3])}{', ...' if len(mismatched) > 3 else ''}). Fix: restore config.json or the "
            "weights, so that both are the same model's.")
    if missing:
        raise ValidationError(
            f"`{where}` lacks {len(missing)} of the encoder's tensors ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): transformers would fill them with random numbers. Fix: restore "
            "the weights file (copy the model again), or use the weights saved with this config.json.")


class PostEmbModel(nn.Module):
    """forward(input_ids (B, S) int64, attention_mask (B, S) int64) -> (pooled (B, D) float32
    before normalisation, embedding (B, D) float32 unit rows).

    pooling: "mean" | "cls" | "max" | "lasttoken"; projection: a Linear after pooling (postemb.json
    models); dense: sentence-transformers Dense modules after that (each Linear + activation)."""

    def __init__(self, encoder: nn.Module, projection: nn.Linear | None, pooling: str = "mean",
                 dense: nn.ModuleList | None = None):
        super().__init__()
        self.encoder = encoder
        self.projection = projection
        self.pooling = pooling
        self.dense = dense if dense is not None else nn.ModuleList()
        # DistilBERT and MPNet take no token_type_ids; BERT-likes get zeros, as their tokenizers give
        self._token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    def fused_head(self):
        """(weight (D, H), bias (D,) or None) of the single linear map after mean pooling, when the
        pooling kernels (masked mean + projection, postemb_rt.ops.masked_mean_pool_l2) compute the whole
        pipeline; (None, None) for mean pooling without a head; False when they cannot (another
        pooling mode, several Dense modules, or an activation)."""
        if self.pooling != "mean":
            return False
        layers = ([self.projection] if self.projection is not None else [])
        for seq in self.dense:
            if not isinstance(seq[1], nn.Identity):
                return False
            layers.append(seq[0])
        if not layers:
            return None, None
        if len(layers) > 1:
            return False
        return layers[0].weight, layers[0].bias

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled -> (B, D): projection, then each Dense module."""
        if self.projection is not None:
            pooled = self.projection(pooled)
        for layer in self.dense:
            pooled = layer(pooled)
        return pooled

    def pool_and_head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, S, H) hidden states -> (B, D) pooled and projected, not normalised (in fp32 for mean)."""
        if self.pooling == "mean" and not self.dense:
            weight = bias = None
            if self.projection is not None:
                weight, bias = self.projection.weight.t(), self.projection.bias
            return masked_mean_pool_l2_ref(hidden, attention_mask, weight, bias, normalize=False, dtype=hidden.dtype)
        return self.head(pool_ref(hidden, attention_mask, self.pooling))

    @classmethod
    def from_model_dir(cls, md: ModelDir, attn_implementation: str | None = None) -> "PostEmbModel":
        from safetensors import SafetensorError
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
        try:
            # mismatched sizes are loaded (at random) and reported in `info`, then refused by _check_complete
            encoder, info = AutoModel.from_pretrained(str(md.encoder_path), local_files_only=True,
                                                      use_safetensors=True, output_loading_info=True,
                                                      ignore_mismatched_sizes=True, **kwargs)
        except SafetensorError:
            for path in sorted(md.encoder_path.glob("*.safetensors")):
                read_safetensors(path, "encoder weights")  # raises, naming the damaged file
            raise
        _check_complete(md, info)
        if md.adapters_path is not None:
            merge_adapters(encoder, md.adapters_path)
        projection = None
        if md.projection_path is not None:
            state = read_safetensors(md.projection_path, "projection")
            out_dim, in_dim = state["weight"].shape
            if in_dim != md.config.hidden_size or out_dim != md.config.projection_dim:
                raise ValidationError(
                    f"`{PROJECTION_FILE}` in {md.path} has weight shape {tuple(state['weight'].shape)}; "
                    f"postemb.json says ({md.config.projection_dim}, {md.config.hidden_size}). Fix: restore the "
                    "file, or correct projection_dim / hidden_size in postemb.json."
                )
            projection = nn.Linear(in_dim, out_dim, bias="bias" in state)
            projection.load_state_dict(state)
        return cls(encoder, projection, pooling=md.config.pooling, dense=load_dense(md)).eval()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, S, H) last hidden states."""
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self._token_types else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        pooled = self.pool_and_head(self.hidden_states(input_ids, attention_mask), attention_mask)
        return pooled, nn.functional.normalize(pooled, p=2.0, dim=-1, eps=1e-12)
