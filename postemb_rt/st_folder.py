"""Reading a sentence-transformers folder: its ``modules.json`` pipeline as the pieces of a
``ModelDir`` (``postemb_rt.model_dir`` builds it; this module borrows only its path check).

A sentence-transformers folder lists its modules in ``modules.json``; this runtime computes
the pipeline

    Transformer -> Pooling -> Dense* -> Normalize?

with, per module (its ``path`` relative to the folder):

- ``Transformer``: ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``; its tokenizer
  settings' cut: ``processing_kwargs`` max_length, ``processor_kwargs`` / ``tokenizer_args`` model_max_length;
  other tokenizer settings are refused),
  the Hugging Face encoder (``config.json`` + weights; any ``AutoModel`` encoder) and
  ``tokenizer.json``;
- ``Pooling``: ``config.json``; one mode of mean, cls, max, lasttoken (either the
  ``pooling_mode`` key of sentence-transformers >= 5 or the older ``pooling_mode_*``
  booleans); ``include_prompt: false`` (prompt tokens left out of pooling) is not computed:
  a folder whose default prompt it would apply to is refused, and so is an ``encode`` call
  with a non-empty prompt on it;
- ``config_sentence_transformers.json``: ``prompts`` and ``default_prompt_name``, applied by
  ``Encoder.encode`` as sentence-transformers does (postemb_rt.prompts); ``similarity_fn_name``;
  ``matryoshka_dims``, the nested prefixes ``truncate_dim`` accepts (a postemb_rt key, as in
  postemb.json, that export/export_sentence_transformers.py writes: sentence-transformers has no
  field declaring them and ignores it); and ``truncate_dim``, the prefix ``encode`` returns by
  default, as sentence-transformers reads it (``from_pretrained(truncate_dim=)`` overrides it);
- ``Dense``: ``config.json`` (``in_features``, ``out_features``, ``bias``,
  ``activation_function``, default Tanh as in sentence-transformers) and
  ``model.safetensors`` or ``pytorch_model.bin`` (``linear.weight``, ``linear.bias``);
- ``Normalize``: unit L2 rows; without it the folder's embeddings are not normalised, so
  ``Encoder.encode`` returns them raw by default, as ``SentenceTransformer.encode`` does. A Dense or
  Normalize on another feature than ``sentence_embedding`` (``module_input_name`` / ``module_output_name``)
  is refused: it would not change the vector there.

Anything else (another module type, an order other than the above, a pooling mode or
activation not listed, sizes that do not chain, no tokenizer) raises one error naming the
file, the value and the fix: a folder never loads half a pipeline.

``model_version`` is ``<folder name>-<12 hex digits>`` of a SHA-256 over the pipeline's
files' contents (configs, tokenizer and ``tokenizer_config.json``, weights), so a copy of the folder gets the
same version and a retrained one a new version: the near-line store and backfill key on it.
"""
from __future__ import annotations

import re
from pathlib import Path

from .durable import confined, read_json
from .errors import ModelNotFoundError, ValidationError
from .prompts import check_prompts

SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")  # sentence-transformers' SimilarityFunction

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
POOLING_MODES = ("mean", "cls", "max", "lasttoken")
# sentence-transformers' activation_function (a torch.nn class path) -> the name the runtime uses
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.SiLU": "silu",
}
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")


def _read_json(path: Path, what: str):
    return read_json(path, what, fix="save the folder again with SentenceTransformer.save(), or restore the file")


def _kind(entry, modules_file: Path, i: int) -> str:
    """'Transformer' | 'Pooling' | 'Dense' | 'Normalize' from a modules.json entry's ``type``."""
    t = entry.get("type") if isinstance(entry, dict) else None
    name = t.rsplit(".", 1)[-1] if isinstance(t, str) else None
    if not (isinstance(t, str) and t.startswith("sentence_transformers.") and name in _KINDS):
        raise ValidationError(
            f"`{modules_file}` module {i} has type {t!r}, which postemb_rt does not compute. Supported: "
            f"sentence_transformers' {', '.join(_KINDS)}. Fix: use a folder whose pipeline is "
            "Transformer -> Pooling -> Dense* -> Normalize, or load it with sentence-transformers itself."
        )
    return name


def _pooling(path: Path, hidden_size: int) -> str:
    cfg_file = path / "config.json"
    cfg = _read_json(cfg_file, "Pooling config")
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [m for k, m in _LEGACY_POOLING.items() if cfg.get(k)] or ["mean"]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValidationError(
            f"`{cfg_file}` asks for pooling {modes if len(modes) != 1 else modes[0]!r}; postemb_rt computes one "
            f"of {POOLING_MODES}. Fix: pick one of those modes, or load the folder with sentence-transformers."
        )
    dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension", hidden_size))
    if dim != hidden_size:
        raise ValidationError(f"`{cfg_file}` has embedding dimension {dim}; the encoder's hidden_size is "
                              f"{hidden_size}. Fix: set it to {hidden_size}.")
    return modes[0]


def _dense(root: Path, path: Path, in_dim: int) -> dict:
    cfg_file = path / "config.json"
    cfg = _read_json(cfg_file, "Dense config")
    act_name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
    if act_name not in ACTIVATIONS:
        raise ValidationError(
            f"`{cfg_file}` has activation_function {act_name!r}; postemb_rt computes {sorted(ACTIVATIONS)}. "
            "Fix: use one of those, or load the folder with sentence-transformers."
        )
    if cfg.get("use_residual"):
        raise ValidationError(f"`{cfg_file}`: use_residual is not supported. Fix: load it with sentence-transformers.")
    _check_feature(cfg_file, cfg)
    if cfg.get("in_features") != in_dim:
        raise ValidationError(
            f"`{cfg_file}` has in_features {cfg.get('in_features')}, but the module before it outputs "
            f"{in_dim}. Fix: set in_features to {in_dim}, or restore the module order in modules.json."
        )
    weights = next((path / f for f in _WEIGHT_FILES if (path / f).exists()), None)
    if weights is None:
        raise ModelNotFoundError(f"`{path}` (Dense) has no weights: neither {' nor '.join(_WEIGHT_FILES)}. "
                                 "Fix: save the folder again with SentenceTransformer.save().")
    return {"file": str(weights.relative_to(root)), "in_features": in_dim, "out_features": int(cfg["out_features"]),
            "bias": bool(cfg.get("bias", True)), "activation": ACTIVATIONS[act_name]}


def _check_feature(cfg_file: Path, cfg: dict) -> None:
    """A Dense or Normalize module's config: it must read and write the sentence embedding (as by default);
    on another feature (a ColBERT model's token embeddings, a side output) it would not change the vector."""
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, "sentence_embedding") not in (None, "sentence_embedding"):
            raise ValidationError(
                f"`{cfg_file}` has {key} {cfg[key]!r}; postemb_rt applies Dense and Normalize to "
                f"'sentence_embedding' only (the vector it returns). Fix: load the folder with sentence-transformers.")


# transformers' tokenizer classes that build their text handling from tokenizer_config.json, not from
# tokenizer.json: BERT's BertNormalizer (do_lower_case, strip_accents, tokenize_chinese_chars; defaults True,
# None, True) and RoBERTa's ByteLevel pre-tokenizer (add_prefix_space, default False); and the model types whose
# tokenizer is one of them when tokenizer_config.json names no class
_BERT_CLASSES = ("BertTokenizer", "DistilBertTokenizer", "MPNetTokenizer", "FunnelTokenizer", "ConvBertTokenizer",
                 "MobileBertTokenizer", "SqueezeBertTokenizer", "ElectraTokenizer", "SplinterTokenizer")
_BERT_TYPES = ("bert", "distilbert", "mpnet", "funnel", "convbert", "mobilebert", "squeezebert", "electra")


def _rebuilt(family: str, cfg: dict, tok: dict) -> tuple[dict, object]:
    """(what transformers builds from tokenizer_config.json ``cfg``, what tokenizer.json ``tok`` holds)."""
    if family == "bert":
        lower = cfg.get("do_lower_case", True)
        want = dict(clean_text=True, handle_chinese_chars=cfg.get("tokenize_chinese_chars", True), lowercase=lower,
                    strip_accents=lower if cfg.get("strip_accents") is None else cfg["strip_accents"])
        step = tok.get("normalizer") or {}
        have = {k: step.get(k) for k in want} if step.get("type") == "BertNormalizer" else step.get("type")
        if isinstance(have, dict) and have["strip_accents"] is None:  # tokenizers' rule: stripped when lower-cased
            have["strip_accents"] = have["lowercase"]
        return want, have
    step = tok.get("pre_tokenizer") or {}
    want = {"add_prefix_space": cfg.get("add_prefix_space", False)}
    have = {"add_prefix_space": step.get("add_prefix_space")} if step.get("type") == "ByteLevel" else step.get("type")
    return want, have


def check_normalizer(enc: Path, tokenizer: Path, hf: dict) -> None:
    """Refuse a tokenizer that sentence-transformers (through transformers' ``AutoTokenizer``) would apply otherwise
    than ``tokenizer`` (the tokenizer.json postemb_rt reads) does: a BERT-family or RoBERTa class rebuilds its text
    handling from ``enc``/tokenizer_config.json (``_rebuilt``). ``hf``: the encoder's config.json."""
    cfg_file = enc / "tokenizer_config.json"
    cfg = _read_json(cfg_file, "tokenizer config") if cfg_file.exists() else {}
    cls = cfg.get("tokenizer_class")
    name, kind = (cls.removesuffix("Fast"), None) if isinstance(cls, str) else (None, hf.get("model_type"))
    family = ("bert" if name in _BERT_CLASSES or kind in _BERT_TYPES else
              "roberta" if name == "RobertaTokenizer" or kind == "roberta" else None)
    if family is None:
        return
    want, have = _rebuilt(family, cfg, _read_json(tokenizer, "tokenizer"))
    if have != want:
        raise ValidationError(
            f"`{cfg_file}` makes transformers' {cls or kind} tokenizer handle text with {want}, but the normalizer "
            f"or pre-tokenizer of `{tokenizer}`, which postemb_rt reads, has {have}: sentence-transformers would see "
            f"other tokens. Fix: python -c \"from transformers import AutoTokenizer as T; T.from_pretrained('{enc}')"
            f".save_pretrained('{enc}')\" (writes tokenizer.json as transformers builds it).")


def is_st_folder(root: Path) -> bool:
    return (root / MODULES_FILE).exists()


def st_leftovers(root: Path) -> list[str]:
    """The sentence-transformers files in ``root`` besides modules.json (numbered module folders such as
    ``1_Pooling/``, its configs): a folder holding any of them without modules.json lost it."""
    folders = sorted(f"{p.name}/" for p in root.iterdir()
                     if p.is_dir() and re.fullmatch(r"\d+_\w+", p.name) and (p / "config.json").is_file())
    return folders + [n for n in (ST_CONFIG_FILE, "config_sentence_transformers.json") if (root / n).is_file()]


def encoder_config(hf_file: Path) -> tuple[dict, int]:
    """A Hugging Face encoder's ``config.json`` and its width, or one error naming the file."""
    hf = _read_json(hf_file, "Hugging Face encoder config")
    hf = hf if isinstance(hf, dict) else {}
    hidden = hf.get("hidden_size", hf.get("dim", hf.get("d_model")))  # "dim": DistilBERT
    if not isinstance(hidden, int):
        raise ValidationError(f"`{hf_file}` has no hidden_size, so it is not an encoder postemb_rt can run "
                              f"(model_type {hf.get('model_type')!r}). Fix: use an encoder model (BERT, MPNet, ...).")
    return hf, hidden


def read_st_folder(root: Path) -> tuple[dict, list, Path, Path]:
    """The sentence-transformers folder ``root`` (see the module docstring) as (PostEmbConfig
    fields but ``model_version``, the (name, path) files its version is a hash of, the encoder
    folder, tokenizer.json)."""
    modules_file = root / MODULES_FILE
    modules = _read_json(modules_file, "the module list")
    if not isinstance(modules, list) or not modules:
        raise ValidationError(f"`{modules_file}` must be a non-empty list of modules. Given: {modules!r}.")
    kinds = [_kind(m, modules_file, i) for i, m in enumerate(modules)]
    body = kinds[2:-1] if kinds[-1] == "Normalize" else kinds[2:]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Dense" for k in body):
        raise ValidationError(
            f"`{modules_file}` lists {kinds}; postemb_rt computes Transformer -> Pooling -> Dense* -> Normalize? "
            "in that order. Fix: reorder modules.json, or load the folder with sentence-transformers."
        )
    paths = [_module_path(root, m, modules_file, i) for i, m in enumerate(modules)]
    enc = paths[0]
    hf_file = enc / "config.json"
    hf, hidden = encoder_config(hf_file)
    weights = next((enc / f for f in _WEIGHT_FILES if (enc / f).exists()), None)
    if weights is None:
        raise ModelNotFoundError(f"`{enc}` (Transformer) has no encoder weights: neither "
                                 f"{' nor '.join(_WEIGHT_FILES)}. Fix: save the folder again.")
    tokenizer = enc / "tokenizer.json"
    if not tokenizer.exists():
        raise ModelNotFoundError(
            f"`{enc}` has no tokenizer.json (the fast tokenizer postemb_rt reads). Fix: write it with "
            "python -c \"from transformers import AutoTokenizer as T; "
            f"T.from_pretrained('{enc}').save_pretrained('{enc}')\""
        )
    check_normalizer(enc, tokenizer, hf)
    st_cfg = _read_json(enc / ST_CONFIG_FILE, "Transformer config") if (enc / ST_CONFIG_FILE).exists() else {}
    task = st_cfg.get("transformer_task", "feature-extraction")
    out_name = ((st_cfg.get("modality_config") or {}).get("text") or {}).get("method_output_name", "last_hidden_state")
    if task != "feature-extraction" or out_name != "last_hidden_state":
        raise ValidationError(
            f"`{enc / ST_CONFIG_FILE}` has transformer_task {task!r} reading {out_name!r}; postemb_rt runs "
            "'feature-extraction' encoders pooled from 'last_hidden_state'. Fix: load it with sentence-transformers."
        )
    max_len = max_seq_length(st_cfg, enc / "tokenizer_config.json", hf, enc / ST_CONFIG_FILE)
    pooling = _pooling(paths[1], hidden)
    dense, dim = [], hidden
    for p, kind in zip(paths[2:], kinds[2:]):
        if kind == "Dense":
            dense.append(_dense(root, p, dim))
            dim = dense[-1]["out_features"]
        elif (p / "config.json").exists():  # Normalize: sentence-transformers >= 6 writes its feature names
            _check_feature(p / "config.json", _read_json(p / "config.json", "Normalize config"))
    files = [(str(p.relative_to(root)), p) for p in (modules_file, hf_file, weights, tokenizer)]
    # tokenizer_config.json: its model_max_length can set max_length (see max_seq_length)
    files += [(str(p.relative_to(root)), p) for p in (enc / ST_CONFIG_FILE, enc / "tokenizer_config.json",
                                                      *(q / "config.json" for q in paths[1:])) if p.exists()]
    files += [(d["file"], root / d["file"]) for d in dense]
    prompts = _prompts(root, paths[1])
    if prompts["prompts"] or prompts["default_prompt_name"]:  # a prompt changes every vector it applies to
        files.append(("config_sentence_transformers.json", root / "config_sentence_transformers.json"))
    cfg = dict(
        hidden_size=hidden,
        pooling=pooling,
        normalize=kinds[-1] == "Normalize",
        max_length=int(max_len),
        encoder=str(enc.relative_to(root)) if enc != root else ".",
        dense=dense or None,
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
        **prompts,
    )
    k, dims = cfg["truncate_dim"], cfg["matryoshka_dims"]  # ST's default prefix: declared by saying so
    if type(k) is int and 0 < k < dim and (dims is None or isinstance(dims, list)):  # else refused by model_dir
        cfg["matryoshka_dims"] = sorted({*(dims or []), k})
    return cfg, files, enc, tokenizer


def _module_path(root: Path, entry: dict, modules_file: Path, i: int) -> Path:
    """The folder of module ``i`` (its ``path``, relative to ``root``; "" or absent: ``root``),
    refused before anything in it is read when it leads out of ``root`` ("../x", an absolute
    path, a symlink out)."""
    spec = entry.get("path", "")
    if spec in ("", "."):
        return root
    return confined(root, spec, f"modules[{i}].path", modules_file,
                    f"copy the module's folder into {root} and give its path relative to it in {MODULES_FILE}")


# sentence_bert_config.json's tokenizer load arguments (processor_kwargs; tokenizer_args before
# sentence-transformers 6) that leave the tokens as they are; any other is refused, as are the tokenizer call's
# (processing_kwargs) but max_length and truncation, and encode_query / encode_document's own cuts
_KEPT_LOAD_ARGS = ("model_max_length", "use_fast", "trust_remote_code", "revision", "token", "cache_dir",
                   "local_files_only", "clean_up_tokenization_spaces")


def _tokenizer_cut(st_cfg: dict, cfg_file: Path) -> int | None:
    """The cut (tokens, special ones included) that sentence_bert_config.json's tokenizer settings set, as
    sentence-transformers applies them (None: none set); ValidationError for settings postemb_rt does not apply."""
    load = {**(st_cfg.get("tokenizer_args") or {}), **(st_cfg.get("processor_kwargs") or {})}
    call = st_cfg.get("processing_kwargs") or {}
    odd = [f"{'processor_kwargs' if k in (st_cfg.get('processor_kwargs') or {}) else 'tokenizer_args'}.{k}"
           for k in load if k not in _KEPT_LOAD_ARGS]
    odd += [f"processing_kwargs.{bucket}.{k}" for bucket, kw in call.items() for k in (kw or {})
            if bucket not in ("text", "common") or k not in ("max_length", "truncation")
            or (k == "truncation" and kw[k] not in (True, "longest_first", "only_first"))]
    odd += [k for k in ("query_length", "document_length", "query_expansion") if st_cfg.get(k) is not None]
    text, common = call.get("text") or {}, call.get("common") or {}
    cut = text.get("max_length", common.get("max_length", load.get("model_max_length")))
    if cut is not None and not (type(cut) is int and cut > 0):
        odd.append(f"max_length {cut!r}")
    if odd:
        raise ValidationError(
            f"`{cfg_file}` sets tokenizer settings that postemb_rt does not apply (its tokenizer.json is read as it "
            f"is, cut at one max_length): {', '.join(odd)}. Fix: remove them if the tokens do not change without "
            "them, or load the folder with sentence-transformers.")
    return cut


def max_seq_length(st_cfg: dict, tokenizer_config: Path, hf: dict, cfg_file: Path | None = None) -> int:
    """As sentence-transformers: the tokenizer settings' cut (``_tokenizer_cut``), else ``max_seq_length``
    of sentence_bert_config.json (``cfg_file``; older saves), else the tokenizer's ``model_max_length``
    (newer saves) capped at the encoder's positions (``positions``). A cut set past those positions is cut
    there, with a warning: sentence-transformers takes it and fails on a post that long (an index error in the
    model, which in a batch fails every post beside it)."""
    limit = positions(hf)
    cut = _tokenizer_cut(st_cfg, cfg_file) if st_cfg else None
    if cut is None and st_cfg.get("max_seq_length"):
        cut = int(st_cfg["max_seq_length"])
    if cut is not None:
        if cut > limit:
            import logging

            logging.getLogger("postemb_rt").warning(
                "`%s` sets max_seq_length %d, but its encoder reads at most %d tokens (max_position_embeddings of "
                "its config.json): posts are cut at %d (sentence-transformers fails on longer ones). Fix: set "
                "max_seq_length to at most %d.", cfg_file, cut, limit, limit, limit)
        return min(cut, limit)
    tm = _read_json(tokenizer_config, "tokenizer config").get("model_max_length") if tokenizer_config.exists() else None
    return int(min(tm, limit)) if isinstance(tm, (int, float)) and tm > 0 else int(limit)


def positions(hf: dict) -> int:
    """Tokens the encoder of config.json ``hf`` reads: its ``max_position_embeddings`` (512 if absent), less
    the ids RoBERTa-style position embeddings skip (they count from the padding id + 1: RoBERTa and XLM-RoBERTa
    ``pad_token_id`` + 1, MPNet 2), so a 514-position RoBERTa reads 512."""
    n = int(hf.get("max_position_embeddings") or 512)
    kind = hf.get("model_type")
    if kind in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
        pad = hf.get("pad_token_id")
        return n - ((pad if isinstance(pad, int) else 1) + 1)
    return n - 2 if kind == "mpnet" else n


def _prompts(root: Path, pooling_path: Path) -> dict:
    """The folder's prompts as PostEmbConfig fields: ``prompts`` and ``default_prompt_name`` of
    config_sentence_transformers.json (a null prompt text is "", as sentence-transformers reads
    it) and the Pooling module's ``include_prompt``; checked by prompts.check_prompts. Also its
    ``similarity_fn_name`` (``Encoder.similarity``; None for "cosine"), ``matryoshka_dims`` and
    ``truncate_dim`` (the prefix sentence-transformers' ``encode`` returns by default)."""
    path = root / "config_sentence_transformers.json"
    cfg = _read_json(path, "sentence-transformers config") if path.exists() else {}
    raw = cfg.get("prompts") or {}
    if not isinstance(raw, dict):
        raise ValidationError(f"`{path}` has prompts {raw!r}; it must be a mapping of prompt name to text. "
                              "Fix: save the folder again with SentenceTransformer.save().")
    prompts = {k: "" if v is None else v for k, v in raw.items()}
    default = cfg.get("default_prompt_name") or None
    include = _read_json(pooling_path / "config.json", "Pooling config").get("include_prompt", True)
    check_prompts(prompts, default, include, path)
    similarity = cfg.get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITY_FNS:
        raise ValidationError(f"`{path}` has similarity_fn_name {similarity!r}; it must be one of {SIMILARITY_FNS}. "
                              "Fix: save the folder again with SentenceTransformer.save().")
    return {"prompts": prompts or None, "default_prompt_name": default, "include_prompt": bool(include),
            "similarity_fn_name": None if similarity == "cosine" else similarity,
            "matryoshka_dims": cfg.get("matryoshka_dims"),  # checked by model_dir, as postemb.json's
            "truncate_dim": cfg.get("truncate_dim")}
