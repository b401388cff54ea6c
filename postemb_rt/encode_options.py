"""``Encoder.encode``'s sentence-transformers keyword arguments: one rule each, checked in one place.

``resolve`` turns a call's arguments into :class:`EncodeOptions` (or raises ValidationError
naming the argument, the value and the fix); ``Encoder.encode`` embeds with them and ``finish``
quantizes and converts. The rules (README "Encoding semantics"):

- ``normalize_embeddings`` (sentence-transformers): True adds L2 normalisation; False (its
  default) adds none, so the output is what the model's pipeline computes (unit rows for a model
  that normalises), as in sentence-transformers. ``normalize`` (ours) forces True / False, None
  = the model's. Both given and disagreeing (``normalize=False, normalize_embeddings=True``, or
  ``normalize=True, normalize_embeddings=False``) is an error.
- ``truncate_dim``: the model's dim, or a prefix it declares (``matryoshka_dims`` in
  postemb.json, or in a sentence-transformers folder's config_sentence_transformers.json); any
  other value is refused. None: the encoder's ``truncate_dim`` (set at load,
  as sentence-transformers' ``SentenceTransformer(..., truncate_dim=k)``), else the full dim.
  The first ``truncate_dim`` components are kept **before** normalisation and the prefix is
  normalised again (when the output is normalised), so rows stay unit vectors:
  sentence-transformers with ``normalize_embeddings=True``; without it, sentence-transformers
  slices after its Normalize module (rows shorter than 1, same cosines).
- ``precision``: the output quantization (postemb_rt.quantization), not the compute precision;
  None is "float32", as in sentence-transformers (its evaluators pass None).
- ``device``: None, or the device the encoder was loaded on (an Encoder does not move; a list,
  sentence-transformers' multi-process encoding, is refused with a pointer to ``submit``).
- ``output_value``: "sentence_embedding" only.
- ``convert_to_tensor`` (a torch tensor) wins over ``convert_to_numpy`` (default: numpy); both
  False gives a list of 1-D torch tensors, as in sentence-transformers.
"""
from __future__ import annotations

import numbers
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import prompts, quantization
from .errors import ValidationError


@dataclass(frozen=True)
class EncodeOptions:
    prompt: str  # prepended to every text ("" for none)
    normalize: bool  # unit rows out
    dim: int  # output components (truncate_dim)
    precision: str  # output quantization (quantization.PRECISIONS)
    ranges: np.ndarray | None  # int8 / uint8 calibration (quantization.ranges_for)
    output: str  # "numpy" | "tensor" | "list"


def check_device(encoder, device) -> None:
    """``device`` (None, a str or a torch.device) must be None or the device ``encoder`` was loaded on
    ("cuda" is "cuda:0"): an Encoder does not move. Else ValidationError naming the fix."""
    if device is None:
        return
    loaded = encoder.backend.device
    if isinstance(device, (list, tuple)):  # sentence-transformers' multi-process encoding over these devices
        raise ValidationError(
            f"`device` must be None or the device this Encoder was loaded on ({loaded!r}); a list asks "
            f"sentence-transformers for one process per device, which postemb_rt does not start. Given: {device!r}. "
            "Fix: drop `device`: one Encoder already uses every core through its C++ batcher, and threads share "
            "it through submit(); for several GPUs, one Encoder.from_pretrained(..., device='cuda:N') per GPU.")
    from .backends import resolve_device

    try:
        given = resolve_device(device)  # a str or a torch.device; "cpu:0" is "cpu", as in torch
    except ValidationError:  # not a device: refused below, with this check's fix
        given = None
    norm = {"cuda": "cuda:0"}
    if given is None or norm.get(given, given) != norm.get(loaded, loaded):
        fix = (f"Encoder.from_pretrained(..., device={given!r})" if given is not None else
               "drop `device`, or pass this Encoder's own")
        raise ValidationError(
            f"`device` must be None or the device this Encoder was loaded on ({loaded!r}): an Encoder does not move "
            f"between devices. Given: {device!r}. Fix: {fix}.")


# sentence-transformers' constructor arguments that have no counterpart in Encoder.from_pretrained: what to do instead
_HUB = "no model hub is read here: pass the registered name or the local folder"
_ST_LOAD_ARGS = {
    "trust_remote_code": "no remote code runs here (a folder whose modules need it is refused when loaded): drop it",
    "cache_folder": "models load from a registered name or a local folder, and POSTEMB_CACHE sets where derived "
                    "artefacts (ONNX exports, fidelity) are cached: drop it",
    "revision": _HUB, "token": _HUB, "local_files_only": _HUB,
    "model_kwargs": "precision= ('fp32', 'bf16', 'int8', 'auto') and backend= replace torch_dtype and friends",
    "tokenizer_kwargs": "max_length= sets the tokens per post; the tokenizer is the folder's",
    "config_kwargs": "the folder's config is used as it is: drop it",
    "model_card_data": "drop it (no model card is written here)",
}


def refuse_load_args(kwargs: dict) -> None:
    """TypeError for keyword arguments ``Encoder.from_pretrained`` does not take, naming the first and its fix
    (a sentence-transformers constructor argument: what to pass instead)."""
    if kwargs:
        name = next(iter(kwargs))
        st = name in _ST_LOAD_ARGS
        raise TypeError(f"Encoder.from_pretrained() got an unexpected keyword argument {name!r}"
                        f"{' (sentence-transformers takes it)' if st else ''}. Fix: "
                        f"{_ST_LOAD_ARGS[name] if st else 'see help(Encoder.from_pretrained) for the arguments'}.")


def allowed_dims(model) -> list[int]:
    """The dims a model embeds in: its own, and the prefixes it declares (``matryoshka_dims`` of its
    postemb.json, or of a sentence-transformers folder's config_sentence_transformers.json), ascending.
    ``model``: an Encoder, its ModelDir or its ``PostEmbConfig``. ``truncate_dim``, the server's
    ``dimensions`` and the commands' ``--truncate-dim`` take these."""
    md = getattr(model, "model", model)  # an Encoder's ModelDir
    return getattr(md, "config", md).nested_dims


def as_int(value):
    """``value`` as a plain int when it is an integer of any type (numpy's too: a size computed with numpy
    is an int to sentence-transformers), else unchanged (a bool too), so that the caller's own check
    (``type(x) is int``) refuses it by name."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def check_int(name: str, value, lowest: int, lowest_is: str | None = None) -> int:
    """``value`` as a plain int (any integer type: ``as_int``) when it is >= ``lowest``, else ValidationError
    naming ``name`` and the value (``lowest_is``: what the bound is, e.g. "max_length (256)"). Not a bool."""
    value = as_int(value)
    if type(value) is not int or value < lowest:
        raise ValidationError(f"`{name}` must be an int >= {lowest_is or lowest}. Given: {value!r}.")
    return value


def check_max_batch_tokens(value, max_length: int) -> int | None:
    """``max_batch_tokens`` of ``from_pretrained`` and ``start_batcher``: None (the backend's default), or an int
    >= ``max_length`` (a batch holds at least one whole post; a smaller budget would refuse every longer post)."""
    return None if value is None else check_int("max_batch_tokens", value, max_length, f"max_length ({max_length})")


def check_truncate_dim(model, truncate_dim) -> int | None:
    """``truncate_dim`` for ``model`` (an Encoder, its ModelDir or its config) -> the prefix to cut to,
    or None for the full dim (the model's own dim); anything else is refused, naming the allowed dims
    and the file that declares them. None is the model's default: an Encoder's ``truncate_dim`` (set
    at load), else its config's (a sentence-transformers folder's ``truncate_dim``), else the full dim."""
    if truncate_dim is None:
        truncate_dim = model.truncate_dim if hasattr(model, "model") else getattr(model, "config", model).truncate_dim
    dims, truncate_dim = allowed_dims(model), as_int(truncate_dim)
    if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim not in dims):  # 16.0, True too
        from .model_dir import CONFIG_FILE
        from .st_folder import is_st_folder

        path = getattr(getattr(model, "model", model), "path", None)
        if path is not None and not (path / CONFIG_FILE).exists() and is_st_folder(path):  # as load_model_dir
            where = f"`matryoshka_dims` of {path / 'config_sentence_transformers.json'}"  # an ST folder
            # sentence-transformers cuts any prefix and writes no matryoshka_dims: a model trained for one says so
            declare = (f", or, for a model trained to embed in its first {truncate_dim} components (Matryoshka), "
                       f"add {truncate_dim} to that matryoshka_dims" if type(truncate_dim) is int
                       and 0 < truncate_dim < dims[-1] else "")
        else:
            where, declare = "the matryoshka_dims of its postemb.json", ""
        raise ValidationError(
            f"`truncate_dim` must be one of the dims this model was trained to embed in {dims} (its dim, and "
            f"{where}). Given: {truncate_dim!r}. Fix: use one of those{declare}.")
    return None if truncate_dim is None or truncate_dim == dims[-1] else truncate_dim


@contextmanager
def truncate_block(encoder, truncate_dim):
    """``Encoder.truncate_embeddings``: ``encoder.truncate_dim`` is ``truncate_dim`` (None: the full dim, as in
    sentence-transformers) while the block lasts. Blocks of several threads may end in any order: the last one
    begun and not ended is in force, and once all have ended, the dim from before the first (restoring each block's
    own "before" would leave the dim of a block already ended in force for ever)."""
    block = [check_truncate_dim(encoder, encoder.dim if truncate_dim is None else truncate_dim)]  # one per block
    blocks = encoder.__dict__.setdefault("_truncate_blocks", [])
    with encoder._batcher_lock:
        if not blocks:
            encoder._truncate_before = encoder.truncate_dim
        blocks.append(block)
        encoder.truncate_dim = block[0]
    try:
        yield encoder
    finally:
        with encoder._batcher_lock:
            del blocks[next(i for i, b in enumerate(blocks) if b is block)]
            encoder.truncate_dim = blocks[-1][0] if blocks else encoder._truncate_before


def resolve(encoder, *, prompt_name=None, prompt=None, normalize=None, normalize_embeddings=None, truncate_dim=None,
            precision="float32", convert_to_numpy=True, convert_to_tensor=False, device=None,
            output_value="sentence_embedding", batch_size=64) -> EncodeOptions:
    """Check a call's arguments against ``encoder`` (see the module docstring)."""
    check_int("batch_size", batch_size, 1)
    if output_value != "sentence_embedding":
        raise ValidationError(
            f"`output_value` must be 'sentence_embedding': postemb_rt returns one vector per text. "
            f"Given: {output_value!r}. Fix: drop it, or use sentence-transformers for token embeddings.")
    check_device(encoder, device)
    model = encoder.model.config
    if normalize is not None and normalize_embeddings is not None and bool(normalize) != bool(normalize_embeddings):
        raise ValidationError(
            f"`normalize` and `normalize_embeddings` disagree: normalize={normalize!r}, "
            f"normalize_embeddings={normalize_embeddings!r}. Fix: pass one of them (normalize_embeddings is "
            "sentence-transformers' name; False there means 'as the model computes', not 'raw').")
    if normalize is None:
        normalize = True if normalize_embeddings else model.normalize
    k = check_truncate_dim(encoder, truncate_dim) or encoder.dim  # None: the encoder's default prefix
    precision = quantization.check_precision("float32" if precision is None else precision)  # None: ST's float32
    text = prompts.resolve(model, prompt=prompt, prompt_name=prompt_name)
    ranges = (quantization.ranges_for(encoder, truncate_dim=k, normalize=bool(normalize))
              if precision in ("int8", "uint8") else None)
    output = "tensor" if convert_to_tensor else "numpy" if convert_to_numpy else "list"
    return EncodeOptions(text, bool(normalize), k, precision, ranges, output)


def truncate(vectors: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """float32 (n, D) pre-normalisation vectors -> (n, dim): the first ``dim`` components,
    L2-normalised when ``normalize`` (a zero row stays zero, as torch's normalize with eps 1e-12)."""
    out = np.ascontiguousarray(vectors[:, :dim])
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def finish(vectors: np.ndarray, opts: EncodeOptions, single: bool):
    """(n, dim) float32 -> quantized and converted as ``opts`` says; row 0 alone for ``single``."""
    out = quantization.quantize(vectors, opts.precision, opts.ranges)
    if opts.output != "numpy":
        import torch

        out = torch.from_numpy(np.ascontiguousarray(out))
        if opts.output == "list":
            out = list(out)
    return out[0] if single else out


def postprocess(vectors: np.ndarray, opts: EncodeOptions, normalized: bool, single: bool = False):
    """What ``encode`` returns for ``opts``, from the vectors of ``Encoder.submit`` / ``aencode``
    called with ``prompt=opts.prompt`` (float32 (n, D): the model's own output, unit rows when
    ``normalized``, i.e. ``encoder.model.config.normalize``): truncate_dim, normalisation and
    precision applied (a unit row's prefix normalised again equals the raw prefix normalised).
    The one entry point for the HTTP routes and the near-line worker, which embed through the
    batcher. Raises ValidationError for ``normalize=False`` on a normalising model (the batcher
    has only unit rows: use ``encode``)."""
    if normalized and not opts.normalize:
        raise ValidationError(
            "`normalize` False asks for the vectors before normalisation, which the batcher behind submit() does "
            "not keep for this model (it normalises). Given: normalize=False. Fix: Encoder.encode(..., "
            "normalize=False), or drop it.")
    if opts.dim < vectors.shape[1] or (opts.normalize and not normalized):
        vectors = truncate(vectors, opts.dim, opts.normalize)
    return finish(vectors, opts, single)
