"""ONNX export: the model (encoder + pooling + projection + normalisation) as one ONNX graph.

Used by ``export/export_onnx.py`` (the command-line tool, which adds a parity check on real posts)
and by the onnxruntime backend the first time it meets a model directory without an ONNX file (``cached_export``).

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and
sequence axes). With ``pooling="graph"`` it outputs ``embedding`` (float32 (B, D), unit
rows) and ``pooled`` (the same before L2 normalisation). With ``pooling="external"`` it
stops at ``last_hidden_state`` (float32 (B, S, H)); the directory then also holds
``projection.safetensors`` and the onnxruntime backend pools with the C++ kernel
(``postemb_rt._C.masked_mean_pool_l2``), as a TensorRT engine does with the Triton one. With
``optimize=True`` ONNX Runtime's transformer optimizer fuses attention, LayerNorm+residual and bias+GELU;
the encoder is traced with eager attention because that is the pattern the attention fusion recognises.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

from .durable import atomic_write, durable_rename, fsync_tree, one_builder, read_json
from .logs import dropped
from .model_dir import CONFIG_FILE, PROJECTION_FILE, ModelDir, load_model_dir

log = logging.getLogger("postemb_rt")
OPSET = 17
POOLINGS = ("graph", "external")
# What cached_export (the onnxruntime backend's first use, so backend="auto" on CPU) writes.
# Measured on the 2-core CPU machine, first 4000 short posts, per-batch paired timing: external/graph
# throughput 0.98-1.00 over three runs (pooling is < 1% of a batch either way; the external path also
# copies the (B, S, H) hidden states out), so the graph stays the default: a tie, and one artefact.
# benchmarks/bench_masked_mean_pool_l2.py::test_onnx_pooling_short_posts re-measures it.
DEFAULT_POOLING = "graph"
# Encoders whose exported graph ONNX Runtime's "bert" fusions recognise; others are exported
# unfused (MPNet's relative attention bias is not a pattern the optimizer knows).
OPTIMIZED_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert")


def cache_root() -> Path:
    """``POSTEMB_CACHE``, else ``$XDG_CACHE_HOME/postemb_rt``, else ``~/.cache/postemb_rt``."""
    if os.environ.get("POSTEMB_CACHE"):
        return Path(os.environ["POSTEMB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "postemb_rt"
    try:  # HOME, else the passwd entry of this uid: an arbitrary container uid may have neither
        return Path.home() / ".cache" / "postemb_rt"
    except (RuntimeError, KeyError) as e:
        from .errors import PostEmbError

        uid = getattr(os, "getuid", lambda: "?")()
        raise PostEmbError(f"the cache folder is under the home directory, and this user (uid {uid}) has "
                           f"no home directory: HOME is unset and there is no passwd entry ({e}). Fix: set "
                           "POSTEMB_CACHE to a writable folder.") from e


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


def _model_dir(model, arg: str) -> ModelDir:
    """``model`` as a ModelDir: itself, or a registered name or folder read (``model_dir.resolve``)."""
    from .errors import ValidationError
    from .model_dir import resolve

    if isinstance(model, ModelDir):
        return model
    if not isinstance(model, (str, Path)):
        raise ValidationError(f"`{arg}` must be a ModelDir, a registered name or a folder. "
                              f"Given: {type(model).__name__}.")
    return resolve(model)


def export_onnx(model: ModelDir | str | Path, out_dir: str | Path, optimize: bool = True,
                pooling: str = DEFAULT_POOLING) -> ModelDir:
    """Write a self-contained ONNX model directory (model.onnx, tokenizer.json, postemb.json,
    and projection.safetensors for ``pooling="external"`` when the model has a projection) for ``model``
    into ``out_dir`` (created; files of these names are overwritten, others left: export/export_onnx.py
    exports into a new folder and swaps it in whole, so a re-export leaves none of an earlier one's).

    pooling: "graph" (pool, project, normalise inside the ONNX graph) or "external" (the
    graph ends at last_hidden_state; the runtime pools with the C++ kernel).
    ``model``: a ModelDir, a registered name or a folder. Returns the written directory, loaded."""
    import torch

    from .errors import ValidationError
    from .modeling import PostEmbModel

    if pooling not in POOLINGS:
        raise ValidationError(f"`pooling` must be one of {POOLINGS}. Given: {pooling!r}.")
    model = _model_dir(model, "model")
    if model.encoder_path is None:
        raise ValidationError(f"`model` {str(model.path)!r} holds only an ONNX model ({model.config.onnx}): no encoder "
                              "to export from. Fix: pass the model directory (or name) it was exported from.")
    torch_model = PostEmbModel.from_model_dir(model, attn_implementation="eager")
    head = torch_model.fused_head()
    if pooling == "external" and head is False:
        raise ValidationError(
            f"`pooling` 'external' needs mean pooling and at most one linear head (the pooling kernels "
            f"compute nothing else); {model.path} has {torch_model.describe_head()}. Fix: pooling='graph'."
        )
    if pooling == "graph":
        exported, outputs = torch_model, ["pooled", "embedding"]
        axes = {"pooled": {0: "batch"}, "embedding": {0: "batch"}}
    else:
        exported, outputs = _hidden_states_module(torch_model), ["last_hidden_state"]
        axes = {"last_hidden_state": {0: "batch", 1: "sequence"}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # tracing inputs: any ids the vocabulary holds (a small test model's may be tiny)
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]], dtype=torch.int64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.int64)
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
    hf = torch_model.encoder.config
    if optimize and hf.model_type not in OPTIMIZED_TYPES:
        log.info("onnx export: no transformer fusions for model_type %r (fused: %s)", hf.model_type, OPTIMIZED_TYPES)
        optimize = False
    if optimize:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(raw), model_type="bert", num_heads=hf.num_attention_heads,
                             hidden_size=hf.hidden_size)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        log.info("onnx export: fused operators %s", fused)
        opt.save_model_to_file(str(final))
        raw.unlink()
    else:
        raw.replace(final)
    shutil.copyfile(model.tokenizer_path, out / "tokenizer.json")
    external_head = pooling == "external" and head[0] is not None
    if external_head:  # the runtime projects: the head as one projection
        from safetensors.torch import save_file

        state = {"weight": head[0].detach().contiguous()}
        if head[1] is not None:
            state["bias"] = head[1].detach().contiguous()
        save_file(state, str(out / PROJECTION_FILE))
    # the source's config, less what the export changes: every setting of what encode returns (prompts,
    # truncate_dim, similarity_fn_name, ...) stays, so the export embeds the same texts alike
    cfg = dataclasses.replace(
        model.config,
        # the head runs in the graph (its Dense entries stay, for describe()), or outside it as one projection
        projection_dim=model.config.dim if external_head else model.config.projection_dim,
        dense=None if pooling == "external" else model.config.dense,
        encoder=None, adapters=None, onnx="model.onnx", onnx_pooling=pooling, precision="fp32", fidelity=None,
    )
    (out / CONFIG_FILE).write_text(cfg.to_json())
    return load_model_dir(out)


def cached_export(model: ModelDir, pooling: str = DEFAULT_POOLING) -> ModelDir:
    """The ONNX export of ``model`` (with ``pooling``, see export_onnx) from the cache,
    exporting it first if it is not there.

    The cache key is the model's fingerprint (a hash of the config and the files' contents), so a
    retrained model gets a fresh export.
    """
    import onnxruntime
    import torch

    key = f"{model.config.model_version}-{model.fingerprint}-{pooling}-torch{torch.__version__}-ort{onnxruntime.__version__}"
    return _cached(key, lambda tmp: export_onnx(model, tmp, pooling=pooling),
                   f"exporting {model.config.model_version} to ONNX")


CACHE_MANIFEST = "_cache.json"  # in a cache entry: its key and the sha256 of every file in it


def _entry_problem(target: Path, key: str) -> str:
    """Why the cache entry ``target`` cannot be trusted ("" if it can): its manifest must be
    whole, name ``key`` and list postemb.json, and every file it lists must have that sha256
    (read in full, memoised per process on the file's inode, size, mtime and ctime)."""
    from .model_dir import _file_digest

    man = read_json(target / CACHE_MANIFEST)
    files = man.get("files") if isinstance(man, dict) else None
    if not isinstance(files, dict) or man.get("key") != key or CONFIG_FILE not in files:
        return f"no valid {CACHE_MANIFEST} (written by an older version, or the entry is incomplete)"
    for name, digest in files.items():
        p = target / name
        if not isinstance(name, str) or ".." in Path(name).parts or not p.is_file() or _file_digest(p) != digest:
            return f"{name} is missing or changed (sha256 mismatch)"
    return ""


def _discard(target: Path) -> None:
    """Move a damaged entry aside (one rename: a concurrent reader sees it whole or absent),
    then delete it."""
    aside = target.with_name(f".damaged-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(target, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def _cached(key: str, build, what: str) -> ModelDir:
    """The model directory cached under ``key``, built first by ``build(tmp_dir)`` if absent or
    if it fails verification (:func:`_entry_problem`: a damaged, partial or edited entry is
    rebuilt, never trusted). A build goes to a temporary directory that gets a manifest (the
    sha256 of each file), is fsynced file by file and renamed into place, so concurrent first
    uses never see half an entry and a power cut never leaves one that passes. One process
    builds a missing entry; others that need it meanwhile wait for it (``durable.one_builder``)."""
    target = cache_root() / "onnx" / key.replace("/", "_").replace("+", "_")
    if target.exists() and not _entry_problem(target, key):
        return load_model_dir(target)
    with one_builder(target, what):
        return _build_entry(target, key, build, what)


def _build_entry(target: Path, key: str, build, what: str) -> ModelDir:
    """``_cached``'s build, under its lock."""
    from .errors import PostEmbError

    if target.exists():
        why = _entry_problem(target, key)
        if not why:  # another process built it while this one waited for the lock
            return load_model_dir(target)
        log.warning("cache entry %s is not trusted (%s); rebuilding it", target, why)
        _discard(target)
    log.warning("%s on first use (once; cached in %s)", what, target)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build(tmp)
        from .model_dir import _file_digest

        files = {p.relative_to(tmp).as_posix(): _file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write(tmp / CACHE_MANIFEST, json.dumps({"key": key, "files": files}, indent=1, sort_keys=True))
        fsync_tree(tmp)
        try:
            durable_rename(tmp, target)
        except OSError:  # another process finished first; use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    why = _entry_problem(target, key)
    if why:
        raise PostEmbError(f"the cache entry {target} fails verification right after it was built ({why}). "
                           f"Fix: delete {target} (or point POSTEMB_CACHE at another folder) and try again.")
    return load_model_dir(target)


INT8_RECIPE = 4  # bump when quantize_int8 / int8_nodes change: cached int8 models and fidelities are keyed by it
# Smoothing strength for the smoothed matmuls (postemb_rt.int8_smooth); 0.75 measured better than 0.5
# for QKV and the up-projections on both models (benchmarks/RESULTS.md, "Fast precisions").
INT8_SMOOTH_ALPHA = 0.75


def _layer_matmuls(onnx_model) -> list[dict]:
    """Per encoder layer of a fused graph (one ``Attention`` op per layer, in topological order):
    {"qkv": the Attention node, "out", "up", "down": the three MatMuls with a 2-D weight that follow
    it}. Matmuls outside the layers (a Dense head) are in none. Empty for an unfused graph."""
    weights = {t.name: tuple(t.dims) for t in onnx_model.graph.initializer}
    layers: list[dict] = []
    for node in onnx_model.graph.node:
        if node.op_type == "Attention":
            layers.append({"qkv": node})
        elif node.op_type == "MatMul" and layers and len(layers[-1]) < 4:
            if any(len(weights.get(i, ())) == 2 for i in node.input):
                layers[-1][("out", "up", "down")[len(layers[-1]) - 1]] = node
    return layers


def int8_nodes(onnx_model) -> list[str]:
    """The nodes quantize_int8 quantizes. In a fused graph: every layer's QKV projection (the fused
    Attention op, run as QAttention), attention output and feed-forward up-projection, and the
    feed-forward down-projections of the second half of the layers. Left in float32: the first
    half's down-projections (their post-GELU inputs have the widest ranges: 14-25 against 6-7 in
    the last layers, measured; quantizing layers 0-2's cost the base model 0.035 of overlap@10),
    a Dense head, pooling and normalisation. Unfused graphs (no Attention op): the MatMuls with a
    2-D weight (in, out) where in <= out. Each choice was made by measured fidelity
    (benchmarks/RESULTS.md, "Fast precisions")."""
    layers = _layer_matmuls(onnx_model)
    if not layers:
        weights = {t.name: tuple(t.dims) for t in onnx_model.graph.initializer}
        return [n.name for n in onnx_model.graph.node if n.op_type == "MatMul" and any(
            len(weights.get(i, ())) == 2 and weights[i][0] <= weights[i][1] for i in n.input)]
    picked = []
    for i, layer in enumerate(layers):
        kinds = ("qkv", "out", "up") + (("down",) if i >= len(layers) // 2 else ())
        picked += [layer[k].name for k in kinds if k in layer]
    return picked


def int8_smoothed_nodes(onnx_model) -> list[str]:
    """The int8 nodes that are smoothed first (postemb_rt.int8_smooth): all but the down-projections,
    where smoothing measured worse than none at every alpha tried (0.25-0.9)."""
    downs = {layer["down"].name for layer in _layer_matmuls(onnx_model) if "down" in layer}
    return [n for n in int8_nodes(onnx_model) if n not in downs]


def smooth_int8(fp32: ModelDir | str | Path, calibration: list[str] | None = None) -> tuple:
    """Step 1 of both int8 recipes: (model, ranges). ``model``: the onnx.ModelProto of the float32
    ONNX directory ``fp32`` with :func:`int8_smoothed_nodes` smoothed (postemb_rt.int8_smooth,
    alpha INT8_SMOOTH_ALPHA) by per-channel activation maxima over the ``calibration`` posts
    (default: ``int8_smooth.calibration_posts()``, TweetEval train tweets, never the fidelity
    posts); it computes the same embeddings as ``fp32`` up to float rounding. ``ranges``: {the name
    of the tensor each of :func:`int8_nodes` reads (after smoothing: the Mul's output): the largest
    |value| it took over those posts}, the range a static quantizer gives that input."""
    import numpy as np
    import onnx

    from . import int8_smooth
    from .errors import ValidationError
    from .tokenization import PostTokenizer

    fp32 = _model_dir(fp32, "fp32")
    if fp32.onnx_path is None or fp32.config.precision != "fp32":
        raise ValidationError(f"`fp32` must be a float32 ONNX model directory. Given: {fp32.path} "
                              f"(onnx {fp32.config.onnx!r}, precision {fp32.config.precision!r}).")
    model = onnx.load(str(fp32.onnx_path))
    texts = calibration if calibration is not None else int8_smooth.calibration_posts()[0]
    nodes = set(int8_nodes(model))
    smoothed = set(int8_smoothed_nodes(model))
    tok = PostTokenizer(fp32.tokenizer_path, fp32.config.max_length, lowercase=fp32.config.do_lower_case)
    targets = [t for t in int8_smooth.smoothable(model) if t[0].name in nodes]
    act_max = int8_smooth.activation_maxima(fp32.onnx_path, tok, texts, targets)
    scales = int8_smooth.smooth(model, {n: a for n, a in act_max.items() if n in smoothed}, INT8_SMOOTH_ALPHA)
    reads = {n.name: n.input[0] for n in model.graph.node}
    return model, {reads[n]: float(np.max(a / scales[n] if n in scales else a)) for n, a in act_max.items()}


def _copy_dir_files(fp32: ModelDir, out: Path, precision: str) -> ModelDir:
    """Copy ``fp32``'s tokenizer and projection into ``out`` (which holds a new model.onnx) and
    write its postemb.json with ``precision``; the fidelity is measured by the caller."""
    for name in ("tokenizer.json", PROJECTION_FILE):
        if (fp32.path / name).exists():
            shutil.copyfile(fp32.path / name, out / name)
    cfg = dataclasses.replace(fp32.config, onnx="model.onnx", precision=precision, fidelity=None)
    (out / CONFIG_FILE).write_text(cfg.to_json())
    return load_model_dir(out)


def quantize_int8(fp32: ModelDir | str | Path, out_dir: str | Path, calibration: list[str] | None = None) -> ModelDir:
    """Write an int8 copy of the float32 ONNX model directory ``fp32`` into ``out_dir``: the
    onnxruntime backend's int8 (recipe INT8_RECIPE).

    1. :func:`smooth_int8` with the ``calibration`` posts.
    2. onnxruntime's ``quantize_dynamic`` of :func:`int8_nodes` (int8 weights per output channel; the
       rest stays float32), then every input's scale made static, from its calibrated range
       (``int8_static``): no vector depends on its batch (recipe 3 kept the per-batch scales).
    ``fp32``: a ModelDir or its folder. ``postemb.json`` says ``"precision": "int8"``; its fidelity is
    measured by the caller."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .int8_static import static_inputs

    fp32 = _model_dir(fp32, "fp32")
    model, ranges = smooth_int8(fp32, calibration)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nodes = int8_nodes(model)
    picked = set(nodes)
    ops = sorted({n.op_type for n in model.graph.node if n.name in picked})
    # onnxruntime logs "consider to run pre-processing" (shape inference, graph optimisation) for every
    # graph without its tag; this graph is already optimised and fused by its transformer optimizer.
    with dropped(logging.getLogger(), lambda r: "pre-processing before quantization" in r.getMessage()):
        quantize_dynamic(model, str(out / "model.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=ops or ["MatMul"], nodes_to_quantize=nodes,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    quantized = onnx.load(str(out / "model.onnx"))
    static_inputs(quantized, ranges)
    onnx.save(quantized, str(out / "model.onnx"))
    return _copy_dir_files(fp32, out, "int8")


STATIC_RANGES_FILE = "int8_ranges.json"


def smoothed_for_static_int8(fp32: ModelDir | str | Path, out_dir: str | Path,
                             calibration: list[str] | None = None) -> ModelDir:
    """Write what the openvino backend's int8 quantizes (postemb_rt.backends.openvino_backend.
    quantize_static) into ``out_dir``: :func:`smooth_int8` of ``fp32``'s graph (a float32 graph,
    ``"precision": "fp32"``) and ``int8_ranges.json``, {the name of the tensor each of
    :func:`int8_nodes` reads: the largest |value| it took over the ``calibration`` posts}."""
    import onnx

    fp32 = _model_dir(fp32, "fp32")
    model, ranges = smooth_int8(fp32, calibration)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    (out / STATIC_RANGES_FILE).write_text(json.dumps(ranges, indent=1))
    return _copy_dir_files(fp32, out, "fp32")


def _int8_key(fp32: ModelDir, texts: list[str]) -> str:
    """The cache key of an int8 artefact of ``fp32``: the ONNX file's size and mtime, INT8_RECIPE
    and the calibration posts."""
    from .model_dir import texts_digest

    cal = texts_digest(texts)[:8]  # built-in sample or shared data
    st = fp32.onnx_path.stat()
    return f"{fp32.config.model_version}-{fp32.fingerprint}-{st.st_size}-{st.st_mtime_ns}-int8r{INT8_RECIPE}-cal{cal}"


def cached_int8(fp32: ModelDir) -> ModelDir:
    """:func:`quantize_int8` of the float32 ONNX directory ``fp32``, from the cache (keyed by
    :func:`_int8_key` and the onnxruntime version), quantizing it first if absent."""
    import onnxruntime

    from .int8_smooth import calibration_posts

    texts, _ = calibration_posts()
    key = f"{_int8_key(fp32, texts)}-ort{onnxruntime.__version__}"
    return _cached(key, lambda tmp: quantize_int8(fp32, tmp, texts), f"quantizing {fp32.config.model_version} to int8")


def cached_smoothed_for_static_int8(fp32: ModelDir) -> ModelDir:
    """:func:`smoothed_for_static_int8` of the float32 ONNX directory ``fp32``, from the cache
    (keyed by :func:`_int8_key`), calibrating it first if absent."""
    from .int8_smooth import calibration_posts

    texts, _ = calibration_posts()
    return _cached(f"{_int8_key(fp32, texts)}-static", lambda tmp: smoothed_for_static_int8(fp32, tmp, texts),
                   f"calibrating {fp32.config.model_version} for static int8")
