"""ONNX export: the model (encoder + pooling + projection + normalisation) as one ONNX graph.

Used by ``export/export_onnx.py`` (the command-line tool, which adds a parity check on
real posts) and by the onnxruntime backend the first time it meets a model directory
that has no ONNX file (``cached_export``).

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and
sequence axes). With ``pooling="graph"`` it outputs ``embedding`` (float32 (B, D), unit
rows) and ``pooled`` (the same before L2 normalisation). With ``pooling="external"`` it
stops at ``last_hidden_state`` (float32 (B, S, H)); the directory then also holds
``projection.safetensors`` and the onnxruntime backend pools with the C++ kernel
(``postemb_rt._C.masked_mean_pool_l2``), as a TensorRT engine does with the Triton one. With ``optimize=True`` ONNX Runtime's transformer
optimizer fuses attention, LayerNorm+residual and bias+GELU; the encoder is traced with
eager attention because that is the pattern the attention fusion recognises.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .model_dir import CONFIG_FILE, PROJECTION_FILE, ModelDir, PostEmbConfig, load_model_dir

log = logging.getLogger("postemb_rt")
OPSET = 17
POOLINGS = ("graph", "external")
# What cached_export (the onnxruntime backend's first use, so backend="auto" on CPU) writes.
# Measured on the 2-core CPU machine, first 4000 short posts, per-batch paired timing:
# external/graph throughput 0.98-1.00 over three runs (pooling is < 1% of a batch either
# way; the external path also copies the (B, S, H) hidden states out of the session), so the
# graph stays the default: a tie, and one artefact instead of two.
# benchmarks/bench_masked_mean_pool_l2.py::test_onnx_pooling_short_posts re-measures it.
DEFAULT_POOLING = "graph"


def cache_root() -> Path:
    """``POSTEMB_CACHE``, else ``$XDG_CACHE_HOME/postemb_rt``, else ``~/.cache/postemb_rt``."""
    if os.environ.get("POSTEMB_CACHE"):
        return Path(os.environ["POSTEMB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "postemb_rt"


def _hidden_states_module(model):
    """``model`` (a PostEmbModel) cut after the encoder: forward -> last_hidden_state (B, S, H)."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner.hidden_states(input_ids, attention_mask)

    return HiddenStates(model).eval()


def export_onnx(model: ModelDir, out_dir: str | Path, optimize: bool = True,
                pooling: str = DEFAULT_POOLING) -> ModelDir:
    """Write a self-contained ONNX model directory (model.onnx, tokenizer.json, postemb.json,
    and projection.safetensors for ``pooling="external"`` when the model has a projection) for ``model``
    into ``out_dir`` (created; existing files there are overwritten).

    pooling: "graph" (pool, project, normalise inside the ONNX graph) or "external" (the
    graph ends at last_hidden_state; the runtime pools with the C++ kernel).
    Returns the written directory, loaded."""
    import torch

    from .errors import ValidationError
    from .modeling import PostEmbModel

    if pooling not in POOLINGS:
        raise ValidationError(f"`pooling` must be one of {POOLINGS}. Given: {pooling!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_model = PostEmbModel.from_model_dir(model, attn_implementation="eager")
    if pooling == "graph":
        exported, outputs = torch_model, ["pooled", "embedding"]
        axes = {"pooled": {0: "batch"}, "embedding": {0: "batch"}}
    else:
        exported, outputs = _hidden_states_module(torch_model), ["last_hidden_state"]
        axes = {"last_hidden_state": {0: "batch", 1: "sequence"}}
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 2023, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    raw = out / "model.raw.onnx"
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported,
            (ids, mask),
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=outputs,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                **axes,
            },
            opset_version=OPSET,
            dynamo=False,
        )
    final = out / "model.onnx"
    if optimize:
        from onnxruntime.transformers.optimizer import optimize_model

        hf = torch_model.encoder.config
        opt = optimize_model(str(raw), model_type="bert", num_heads=hf.num_attention_heads,
                             hidden_size=hf.hidden_size)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        log.info("onnx export: fused operators %s", fused)
        opt.save_model_to_file(str(final))
        raw.unlink()
    else:
        raw.replace(final)
    shutil.copyfile(model.tokenizer_path, out / "tokenizer.json")
    if pooling == "external" and model.projection_path is not None:  # the runtime projects
        shutil.copyfile(model.projection_path, out / PROJECTION_FILE)
    cfg = PostEmbConfig(
        model_version=model.config.model_version,
        hidden_size=model.config.hidden_size,
        pooling=model.config.pooling,
        projection_dim=model.config.projection_dim,
        normalize=model.config.normalize,
        max_length=model.config.max_length,
        encoder=None,
        onnx="model.onnx",
        onnx_pooling=pooling,
    )
    (out / CONFIG_FILE).write_text(cfg.to_json())
    return load_model_dir(out)


def cached_export(model: ModelDir, pooling: str = DEFAULT_POOLING) -> ModelDir:
    """The ONNX export of ``model`` (with ``pooling``, see export_onnx) from the cache,
    exporting it first if it is not there.

    The cache key is the model's fingerprint (config + weight file sizes and mtimes), so a
    retrained model gets a fresh export. Writes go to a temporary directory renamed into
    place, so concurrent first uses never see half a file.
    """
    import onnxruntime
    import torch

    key = f"{model.config.model_version}-{model.fingerprint}-{pooling}-torch{torch.__version__}-ort{onnxruntime.__version__}"
    target = cache_root() / "onnx" / key.replace("/", "_").replace("+", "_")
    if (target / CONFIG_FILE).exists():
        return load_model_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("exporting %s to ONNX on first use (once; cached in %s)", model.config.model_version, target)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        export_onnx(model, tmp, pooling=pooling)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_model_dir(target)
