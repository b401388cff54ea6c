"""The rest of sentence-transformers' ``SentenceTransformer`` API on ``Encoder``, so code written for it runs
unchanged: ``similarity`` / ``similarity_pairwise`` with ``similarity_fn_name``, ``get_sentence_embedding_dimension``,
``tokenize`` / ``preprocess``, ``truncate_embeddings`` (with ``from_pretrained(truncate_dim=)``; also under its older
name ``truncate_sentence_embeddings``), ``max_seq_length``, ``encode_query`` / ``encode_document``, ``prompts`` /
``default_prompt_name``, torch's ``device`` / ``to`` / ``cpu`` / ``eval`` (this Encoder, where it already runs),
``evaluate`` and the ``model_card_data`` that evaluators write their metrics into, and pickling (multiprocessing,
joblib, Ray, Spark: the load call travels, not the compiled model). (``encode``'s own keyword arguments are in
``encode_options``.) Each method has sentence-transformers' meaning and return type (torch tensors for scores).

What an Encoder does not do is refused with ValidationError naming what to use instead: moving or casting
(``to("cuda")``, ``half()``: ``from_pretrained(device=..., precision=...)``), training, the multi-process pool
(``submit``: one Encoder already runs every core), ``save`` (the export command), a dict or set as ``encode``'s texts.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import ValidationError
from .st_folder import SIMILARITY_FNS

_EXPORT = "python export/export_sentence_transformers.py"
_TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # torch dtype -> compute precision


def unordered_hint(texts) -> str:
    """Why a dict, a set or a pandas DataFrame is not a list of texts, for the error of ``encode`` / ``submit``;
    "" for anything else (iterating a dict gives its keys, a set an arbitrary order, a DataFrame its column names)."""
    from collections.abc import Mapping, Set

    if isinstance(texts, Mapping):
        return (" sentence-transformers reads a dict as ONE multimodal input ({'text': ..., 'image': ...}), which "
                "postemb_rt does not embed; iterated, it would give the keys. Fix: pass the text itself "
                "(d['text']), or list(d.values()) for a dict of texts.")
    if isinstance(texts, Set):
        return (" A set has no order, so its rows could not be matched to the texts. Fix: pass a list "
                "(sorted(texts)) and keep it to pair the rows with their texts.")
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    if pandas is not None and isinstance(texts, pandas.DataFrame):
        return (" Iterated, a DataFrame gives its column names, not its rows. Fix: pass the column of texts, "
                f"df[{next(iter(texts.columns), 'text')!r}].")
    return ""


def _no_pool(what: str):
    return ValidationError(
        f"`{what}`: postemb_rt starts no multi-process pool (sentence-transformers' one process per device): "
        "one Encoder already runs every core (its backend's threads, and the C++ dynamic batcher behind "
        "submit()). Fix: encode(texts) for one big list, or submit(texts) from several threads; for several GPUs, "
        "one Encoder.from_pretrained(..., device='cuda:N') per GPU.")


class ModelCardData:
    """What sentence-transformers' evaluators write into: ``evaluator(model)`` ends with
    ``model.model_card_data.set_evaluation_metrics(evaluator, metrics, epoch, step)``. postemb_rt
    writes no model card, so the metrics are only kept here, in ``eval_results`` (the evaluator
    returns them too)."""

    def __init__(self):
        self.eval_results: list[dict] = []

    def set_evaluation_metrics(self, evaluator, metrics: dict, epoch: int = 0, step: int = 0) -> None:
        self.eval_results.append({"evaluator": type(evaluator).__name__, "metrics": dict(metrics),
                                  "epoch": epoch, "step": step})


def _matrix(x, name: str):
    """Embeddings as sentence-transformers' ``similarity`` takes them (a 1-D or 2-D numpy array or torch tensor,
    or a list of 1-D ones) -> float32 2-D torch tensor."""
    import numpy as np
    import torch

    if isinstance(x, (list, tuple)):
        if not x:
            raise ValidationError(f"`{name}` is an empty list; pass at least one embedding.")
        x = torch.stack([torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in x])
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or not (x.dtype.is_floating_point or x.dtype in (torch.int8, torch.uint8)):
        raise ValidationError(f"`{name}` must be embeddings, (n, dim) or (dim,), of numbers. Given: shape "
                              f"{tuple(x.shape)}, dtype {x.dtype}.")
    return x.float()


def check_similarity_fn_name(value) -> str | None:
    """``value`` (a name, ST's SimilarityFunction enum, None: the model's) as a SIMILARITY_FNS name or None."""
    value = getattr(value, "value", value)
    if value is not None and value not in SIMILARITY_FNS:
        raise ValidationError(f"`similarity_fn_name` must be one of {SIMILARITY_FNS} (or None: the model's). "
                              f"Given: {value!r}.")
    return value


class SentenceTransformerAPI:
    """A base of ``Encoder`` (which provides ``model``, ``dim``, ``max_length``, ``_set_max_length``,
    ``encode`` and its batchers)."""

    _similarity_fn_name: str | None = None
    _model_card_data: ModelCardData | None = None
    training = False  # torch's flag: an Encoder only runs the model (see train())

    @property
    def similarity_fn_name(self) -> str:
        """"cosine" (the default), "dot", "euclidean" or "manhattan": what ``similarity`` computes. A
        sentence-transformers folder's own ``similarity_fn_name`` is read at load; settable."""
        return self._similarity_fn_name or self.model.config.similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value) -> None:
        self._similarity_fn_name = check_similarity_fn_name(value)

    def similarity(self, embeddings1, embeddings2):
        """(n1, n2) torch float32 tensor of scores between every row of ``embeddings1`` and every row of
        ``embeddings2`` (numpy arrays, torch tensors, or lists of 1-D ones; a 1-D input is one row): cosine, dot
        product, or negative euclidean / manhattan distance, as ``similarity_fn_name`` says (higher: more similar)."""
        import torch

        a, b, fn = self._operands(embeddings1, embeddings2)
        if fn in ("cosine", "dot"):
            return a @ b.T
        return -torch.cdist(a, b, p=2.0 if fn == "euclidean" else 1.0)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """(n,) torch float32 tensor: the score of ``embeddings1[i]`` with ``embeddings2[i]`` (as
        ``similarity``, row by row; both hold n rows)."""
        a, b, fn = self._operands(embeddings1, embeddings2)
        if a.shape[0] != b.shape[0]:
            raise ValidationError(f"`embeddings1` and `embeddings2` must hold as many rows for pairwise scores. "
                                  f"Given: {a.shape[0]} and {b.shape[0]}. Fix: pair them up, or use similarity().")
        if fn in ("cosine", "dot"):
            return (a * b).sum(dim=1)
        return -(a - b).norm(p=2.0 if fn == "euclidean" else 1.0, dim=1)

    def _operands(self, embeddings1, embeddings2):
        """(a, b, similarity_fn_name): both inputs as float32 2-D tensors of one dim, rows normalised for cosine."""
        import torch

        a, b = _matrix(embeddings1, "embeddings1"), _matrix(embeddings2, "embeddings2")
        if a.shape[1] != b.shape[1]:
            raise ValidationError(f"`embeddings1` and `embeddings2` must have one dim. Given: {a.shape[1]} and "
                                  f"{b.shape[1]}. Fix: encode both with the same model and truncate_dim.")
        fn = self.similarity_fn_name
        if fn == "cosine":
            a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
        return a, b, fn

    def get_sentence_embedding_dimension(self) -> int:
        """The output dim, as sentence-transformers names it: ``truncate_dim`` when one is set, else ``dim``."""
        return self.truncate_dim or self.dim

    get_embedding_dimension = get_sentence_embedding_dimension

    def truncate_embeddings(self, truncate_dim: int | None):
        """sentence-transformers' context manager: inside it, ``encode`` and ``submit`` (of every thread, as in ST)
        return the ``truncate_dim`` prefix (None: the full dim) and ``vector_version`` says so; blocks of several
        threads may end in any order (``encode_options.truncate_block``)."""
        from .encode_options import truncate_block

        return truncate_block(self, truncate_dim)

    truncate_sentence_embeddings = truncate_embeddings  # sentence-transformers' older name (deprecated there)

    def _prefix(self, vectors, truncate_dim: int):
        """``submit``'s full vectors (n, dim) or (dim,) -> their ``truncate_dim`` prefix (the one in force at the
        submit), normalised again when the model normalises (what ``encode`` returns at that prefix)."""
        import numpy as np

        from .encode_options import truncate

        rows = truncate(np.atleast_2d(vectors), truncate_dim, self.model.config.normalize)
        return rows[0] if vectors.ndim == 1 else rows

    @property
    def max_seq_length(self) -> int:
        """sentence-transformers' name for ``max_length``: tokens per post, special tokens included.
        Settable, from 3 to the model's own, before the first ``submit``/``aencode``; a shorter one
        is part of the vectors' version (``+max<n>``)."""
        return self.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        from .encode_options import as_int

        own, value = self.model.config.max_length, as_int(value)
        if type(value) is not int or not 3 <= value <= own:
            raise ValidationError(f"`max_seq_length` must be an int from 3 (2 special tokens and one of text) to "
                                  f"the model's max_length ({own}). Given: {value!r}. Fix: an int in that range.")
        if value > self.max_batch_tokens:
            raise ValidationError(f"`max_seq_length` must be <= max_batch_tokens ({self.max_batch_tokens}). "
                                  f"Given: {value}. Fix: Encoder.from_pretrained(..., max_batch_tokens=N).")
        if self._batcher is not None or self._raw_batcher is not None:
            raise ValidationError("`max_seq_length` cannot change once submit()/aencode() started the batcher. "
                                  f"Fix: Encoder.from_pretrained(..., max_length={value}).")
        self._set_max_length(value, self._overlap_asked)  # as at load: the tokenizer, the chunk overlap asked

    def tokenize(self, texts, prompt: str | None = None) -> dict:
        """sentence-transformers' ``tokenize`` (``preprocess`` in sentence-transformers 6): what the model reads for
        ``texts`` (a list of str; ``prompt``, a text, before each), {name: int64 torch tensor (n, longest)}:
        ``input_ids``, ``token_type_ids`` (zeros) where the model's tokenizer class gives them, ``attention_mask``
        (each text cut at ``max_seq_length`` tokens, special tokens included), and with a prompt ``prompt_length``
        (int: its tokens and the first special one). ``{}`` for []. Not the "modality" entry (a str) of
        sentence-transformers 6. A str is refused (sentence-transformers reads it as a list of its characters)."""
        import numpy as np
        import torch

        from . import native

        if isinstance(texts, str):
            raise ValidationError(f"`texts` of tokenize must be a list of str (sentence-transformers reads a str "
                                  f"as its characters). Given: a str ({texts!r:.40}). Fix: tokenize([text]).")
        texts = [(prompt or "") + t for t in self._check_texts(texts)]
        if not texts:
            return {}
        ids, mask = (torch.from_numpy(np.asarray(x, dtype=np.int64))
                     for x in native.pack_padded(self.tokenizer(texts).ids, self.tokenizer.pad_id))
        out = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}
        length = {"prompt_length": len(self.tokenizer([prompt]).ids[0]) - 1} if prompt else {}  # without [SEP]
        return {**{k: out[k] for k in self.tokenizer.model_input_names if k in out}, **length}

    preprocess = tokenize

    def evaluate(self, evaluator, output_path: str | None = None):
        """sentence-transformers' ``evaluate``: ``evaluator(self, output_path)``'s metrics (also in model_card_data)."""
        return evaluator(self, output_path)

    def encode_query(self, texts=None, *args, **kwargs):
        """sentence-transformers' ``encode_query``: ``encode`` (texts also as ``inputs=`` / ``sentences=``) with the
        model's "query" prompt ("" if it has none: no default prompt) unless ``prompt`` / ``prompt_name`` is given."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "query"
        return self.encode(texts, *args, **kwargs)

    def encode_document(self, texts=None, *args, **kwargs):
        """sentence-transformers' ``encode_document``: as ``encode_query`` with the "document" prompt."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "document"
        return self.encode(texts, *args, **kwargs)

    def _st_inputs(self, texts, args: tuple, st_only: dict):
        """``encode``'s texts: its first argument, or sentence-transformers' ``sentences=`` / ``inputs=``.
        Refuses further positional arguments (sentence-transformers' order is not ours, and changed
        between its versions), ``pool`` / ``chunk_size`` / ``processing_kwargs`` other than None, and unknown
        keywords. ``task`` (ST 6's, for a Router module) changes nothing, as in sentence-transformers on a
        model without a Router."""
        if args:
            raise ValidationError(
                f"`encode` takes the texts as its only positional argument. Given: {len(args)} more: {args!r:.80}. "
                "Fix: pass the others by keyword, e.g. encode(texts, prompt_name='query', batch_size=32) "
                "(sentence-transformers >= 2.4 takes prompt_name second, older versions batch_size).")
        if st_only.pop("pool", None) is not None or st_only.pop("chunk_size", None) is not None:
            raise _no_pool("encode(pool=..., chunk_size=...)")
        st_only.pop("task", None)  # ST routes on it through a Router module, which postemb_rt never loads: a no-op
        processing = st_only.pop("processing_kwargs", None)
        if processing is not None:  # ST 6: {"text": {"max_length": 256, "truncation": True}}, this call's tokenizer
            found = [d["max_length"] for d in (processing, *getattr(processing, "values", tuple)())
                     if isinstance(d, dict) and "max_length" in d]
            n = found[0] if found else "N"
            raise ValidationError(
                f"`processing_kwargs` (sentence-transformers' tokenizer settings for one call) is not taken: an "
                f"Encoder's tokenizer is set at load, and cuts at max_seq_length ({self.max_length} tokens, special "
                f"tokens included). Given: {processing!r:.120}. Fix: drop it; for a shorter cut, enc.max_seq_length = "
                f"{n} (before the first submit) or Encoder.from_pretrained(..., max_length={n}).")
        named = {k: st_only.pop(k) for k in ("sentences", "inputs") if k in st_only}
        if st_only:
            raise ValidationError(f"`encode` got keyword arguments it does not take: {sorted(st_only)}. Fix: drop "
                                  "them (help(Encoder.encode) lists sentence-transformers' arguments and ours).")
        given = {k: v for k, v in {"texts": texts, **named}.items() if v is not None}
        if len(given) > 1:
            raise ValidationError(f"pass the texts once: as the first argument, or as `sentences` / `inputs` "
                                  f"(sentence-transformers' names). Given: {', '.join(given)}. Fix: keep one.")
        return next(iter(given.values()), None)  # None: refused by _check_texts

    # -- the model's own settings, as sentence-transformers names them -------------------------
    @property
    def prompts(self):
        """The model's prompts, {name: text}, "query" and "document" always among them (as sentence-transformers
        >= 5): read-only, from its postemb.json or config_sentence_transformers.json and from_pretrained(prompts=)."""
        from types import MappingProxyType

        from .prompts import model_prompts

        return MappingProxyType(model_prompts(self.model.config))

    @prompts.setter
    def prompts(self, value) -> None:
        raise ValidationError(f"`prompts` are set at load (the model's config file), part of what its vectors mean. "
                              f"Given: {value!r:.80}. Fix: pass prompt='...' to encode, or load with "
                              "Encoder.from_pretrained(..., prompts={...}) (sentence-transformers' argument).")

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt ``encode`` applies when a call names none (None: none): from_pretrained's, else the model's."""
        return self.model.config.default_prompt_name

    @default_prompt_name.setter
    def default_prompt_name(self, value) -> None:
        raise ValidationError(f"`default_prompt_name` is set at load (the model's config file). Given: {value!r}. "
                              "Fix: pass prompt_name=... to encode (or encode_query / encode_document), or load with "
                              "Encoder.from_pretrained(..., default_prompt_name=...).")

    def get_max_seq_length(self) -> int:
        """sentence-transformers' getter of ``max_seq_length`` (== ``max_length``)."""
        return self.max_length

    @property
    def model_card_data(self) -> ModelCardData:
        """Where sentence-transformers' evaluators store their metrics (see ``ModelCardData``)."""
        if self._model_card_data is None:
            self._model_card_data = ModelCardData()
        return self._model_card_data

    # -- torch's module surface: where it runs, and refusals for what an Encoder does not do ------
    @property
    def device(self):
        """The torch.device this Encoder runs on (``from_pretrained(device=...)``; "cuda" is cuda:0)."""
        import torch

        return torch.device("cuda:0" if self.backend.device == "cuda" else self.backend.device)

    def to(self, *args, **kwargs):
        """torch's ``module.to(device)`` / ``.to(dtype)``: this Encoder when ``device`` is the one it runs on
        and ``dtype`` its compute precision; otherwise ValidationError (an Encoder neither moves nor casts:
        ``from_pretrained(device=..., precision=...)``)."""
        device, dtype = kwargs.get("device"), kwargs.get("dtype")
        for a in args:
            if type(a).__name__ == "dtype":  # a torch.dtype
                dtype = a
            elif a is not None and not isinstance(a, bool):  # bool: torch's non_blocking
                device = a
        if dtype is not None:
            self._cast(f"to({dtype})", str(dtype).replace("torch.", ""))
        from .encode_options import check_device

        check_device(self, device)
        return self

    def cpu(self):
        """``to("cpu")``: this Encoder when it runs on the CPU, else ValidationError."""
        return self.to("cpu")

    def cuda(self, device=None):
        """``to("cuda[:N]")``: this Encoder when it runs on that GPU, else ValidationError."""
        return self.to("cuda:0" if device is None else f"cuda:{device}" if isinstance(device, int) else device)

    def eval(self):
        """This Encoder: it always runs in inference mode."""
        return self

    def train(self, mode: bool = True):
        """``train(False)`` is ``eval()``; ``train()`` is refused: an Encoder only runs a model."""
        if not mode:
            return self
        raise ValidationError("`train()`: an Encoder runs a model, it does not train one. Given: mode=True. Fix: "
                              "fine-tune with `postemb train`, or with sentence-transformers on a folder written by "
                              f"{_EXPORT} --model MODEL --out FOLDER.")

    def _cast(self, call: str, dtype: str):
        want = _TORCH_DTYPES.get(dtype)
        if want != self.backend.precision:
            fix = f"Encoder.from_pretrained(..., precision={want!r})" if want else "keep the compute precision"
            raise ValidationError(f"`{call}`: an Encoder's compute precision is set at load, not cast; this one runs "
                                  f"{self.backend.precision}. Given: {dtype}. Fix: {fix} (fp16 / bf16 on CUDA, "
                                  "bf16 / int8 on CPU; see describe()).")
        return self

    def half(self):
        """This Encoder when it computes in fp16, else ValidationError naming from_pretrained(precision="fp16")."""
        return self._cast("half()", "float16")

    def bfloat16(self):
        """This Encoder when it computes in bf16, else ValidationError naming from_pretrained(precision="bf16")."""
        return self._cast("bfloat16()", "bfloat16")

    def float(self):
        """This Encoder when it computes in fp32, else ValidationError naming from_pretrained(precision="fp32")."""
        return self._cast("float()", "float32")

    # -- sentence-transformers' multi-process pool and save: refused, naming what to use ----------
    def start_multi_process_pool(self, *args, **kwargs):
        """Refused: see ``_no_pool``."""
        raise _no_pool("start_multi_process_pool()")

    def encode_multi_process(self, *args, **kwargs):
        """Refused: see ``_no_pool``."""
        raise _no_pool("encode_multi_process()")

    @staticmethod
    def stop_multi_process_pool(*args, **kwargs):
        """Refused: see ``_no_pool``."""
        raise _no_pool("stop_multi_process_pool()")

    def save(self, path, *args, **kwargs):
        """Refused, naming the export command: the runtime reads models, it never writes them."""
        if self.model.encoder_path is None:  # the export reads the encoder's weights, which this directory lacks
            raise ValidationError(f"`save` / `save_pretrained`: an Encoder does not write models, and "
                                  f"{str(self.model.path)!r} holds only an ONNX model. Given: path={str(path)!r}. Fix: "
                                  f"{_EXPORT} --model <the model directory it was exported from> --out {path}.")
        raise ValidationError(
            f"`save` / `save_pretrained`: an Encoder does not write models (the runtime reads them; writing is the "
            f"export scripts' job). Given: path={str(path)!r}. Fix: {_EXPORT} --model {self.model.path} "
            f"--out {path} (a sentence-transformers folder, checked against this model's vectors).")

    save_pretrained = save

    # -- pickling: the load call travels, and is made again where it lands ----------------------
    def _remember_load(self, name_or_path, **load_args) -> None:
        """What ``__reduce__`` loads again: ``from_pretrained``'s ``load_args`` as given, a registered name as
        given, a directory as its absolute path."""
        from .model_dir import REGISTERED

        registered = isinstance(name_or_path, str) and name_or_path in REGISTERED
        self._loaded_as = dict(load_args, name_or_path=name_or_path if registered else
                               str(Path(self.model.path).resolve()))

    def __reduce__(self):
        """Pickle (multiprocessing, joblib, Ray, Spark) as the load call, not the compiled model, which
        cannot travel: unpickling loads the model again where it lands, with the same backend (as asked),
        device, precision (the one that ran), max_length, long-post mode, ``truncate_dim``, ``similarity_fn_name``
        and from_pretrained's ``prompts`` / ``default_prompt_name``. The model must be there (a registered name,
        or the directory at the same absolute path) with the same contents: a model whose files differ is refused
        (its vectors would not match). Each unpickle is a full load: send an Encoder once per process."""
        loaded = getattr(self, "_loaded_as", None)
        if loaded is None:
            raise TypeError(f"this {type(self).__name__} was not built by from_pretrained, so it cannot be loaded "
                            "again where it is unpickled. Fix: build it with Encoder.from_pretrained.")
        kwargs = dict(loaded, precision=self.backend.precision, max_length=self.max_length,
                      long_posts=self.long_posts, chunk_overlap=self.chunk_overlap, max_chunks=self.max_chunks,
                      truncate_dim=self.truncate_dim)
        return _unpickle, (type(self), kwargs, self.model.fingerprint, self._similarity_fn_name)


def _unpickle(cls, kwargs: dict, fingerprint: str, similarity_fn_name):
    """``__reduce__``'s other half: the same load call, refused when the model's files differ."""
    enc = cls.from_pretrained(**kwargs)
    if enc.model.fingerprint != fingerprint:
        enc.close()
        raise ValidationError(f"unpickling an Encoder of {kwargs['name_or_path']!r}: the model here differs from "
                              f"the one pickled (fingerprint {enc.model.fingerprint}, pickled {fingerprint}), so its "
                              "vectors would not match. Fix: install the same model (the same postemb_rt version, "
                              "or a copy of the directory) where it is unpickled.")
    enc._similarity_fn_name = similarity_fn_name
    return enc
