"""``Encoder``: the front door. Texts in, float32 unit vectors out, in input order."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from . import backends, encode_options as eo, fidelity, forks, long_posts as lp, native, prompts
from .batching import DynamicBatcher, padding_ratio, plan_batches
from .errors import BackendUnavailableError, BatcherClosedError, FidelityError, ValidationError
from .fidelity import Fidelity
from .model_dir import ModelDir, resolve, vector_version
from .prompts import overridden as with_prompts
from .st_api import SentenceTransformerAPI, check_similarity_fn_name, unordered_hint
from .submit_api import SubmitAPI
from .tokenization import TRUNCATED_WARNING, PostTokenizer

log = logging.getLogger("postemb_rt")
CLOSED = "this Encoder is closed. Fix: load another with Encoder.from_pretrained."
PRECISIONS = backends.PRECISIONS
CPU_FAST = ("bf16", "int8")  # CPU precisions gated by measured fidelity (postemb_rt.fidelity)


@dataclass
class EncodeStats:
    """What the last ``encode`` call did (``Encoder.last_stats``)."""

    posts: int = 0
    tokens: int = 0
    truncated: list[int] = field(default_factory=list)  # indices of texts cut to max_length
    batches: int = 0
    padding_ratio: float = 0.0
    seconds: float = 0.0
    chunked: int = 0  # long_posts="chunk": posts embedded as several windows
    windows: int = 0  # the windows those posts were cut into


def _progress(show: bool | None, total: int):
    """``encode``'s progress bar, a context manager (closed however the call ends); None: shown when the
    "postemb_rt" logger is at INFO or DEBUG (sentence-transformers' rule). Not shown: ``nullcontext()``."""
    if show is None:
        show = log.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    if not show:
        return nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="post", desc="encode")


class Encoder(SubmitAPI, SentenceTransformerAPI):
    """A loaded model on one backend. Build it with :meth:`from_pretrained`."""

    def __init__(self, model: ModelDir | None = None, backend: backends.base.Backend | None = None,
                 backend_reason: str | None = None, max_length: int | None = None,
                 max_batch_tokens: int | None = None, long_posts: str = "truncate", chunk_overlap: int | None = None,
                 max_chunks: int = lp.DEFAULT_MAX_CHUNKS, **st_kwargs):
        if not isinstance(model, ModelDir) or backend is None or st_kwargs:  # e.g. Encoder("default"), as ST's
            given = model if model is not None else st_kwargs.get("model_name_or_path", "default")
            raise ValidationError(
                f"Encoder(...) is built by Encoder.from_pretrained, which loads the model (SentenceTransformer(name) "
                f"loads it in its constructor). Given: Encoder({given!r}). Fix: Encoder.from_pretrained({given!r}) "
                "(with backend=, device=, precision= as needed).")
        self.model = model
        self.backend = backend
        self.backend_reason = backend_reason
        self.max_length = max_length or model.config.max_length
        self.max_batch_tokens = eo.check_max_batch_tokens(max_batch_tokens, self.max_length) or backend.max_batch_tokens
        self.long_posts, self.max_chunks = lp.check_mode(long_posts), max_chunks
        self._set_max_length(self.max_length, chunk_overlap)
        self._stats = threading.local()  # last_stats: each thread's own last encode call
        self.last_stats = EncodeStats()
        self._batcher: DynamicBatcher | None = None  # started by the first submit()/aencode()
        self._raw_batcher: DynamicBatcher | None = None  # chunk mode's windows: raw vectors, combined after
        self._batcher_lock = threading.Lock()
        self._batcher_closed = False
        self._encoding = 0  # encode calls computing on the backend now: close() waits for them
        self._idle = threading.Condition(self._batcher_lock)
        forks.holds_threads(self)  # a forked child starts without the parent's threads (and their encode calls)
        self._closed_backend: dict | None = None  # backend.describe() as close() found it
        self.fidelity: Fidelity | None = None  # measured fidelity of a fast CPU precision to fp32
        self.precision_reason = "exact" if backend.precision == "fp32" else "asked for"  # "auto": what it tried
        self.truncate_dim: int | None = None  # from_pretrained(truncate_dim=k): encode/submit's default prefix

    def _set_max_length(self, max_length: int, chunk_overlap: int | None) -> None:
        """``max_length`` and what follows from it: the tokenizer, and the chunk overlap (checked)."""
        tok = PostTokenizer(self.model.tokenizer_path, max_length, lowercase=self.model.config.do_lower_case)
        self.chunk_overlap = lp.check_chunking(chunk_overlap, self.max_chunks, max_length, tok.specials)
        self.tokenizer, self.max_length = tok, max_length
        self._overlap_asked = chunk_overlap  # from_pretrained's chunk_overlap (None: the default for max_length)

    @classmethod
    def from_pretrained(cls, name_or_path="default", backend: str = "auto", device: str = "auto",
                        precision: str = "fp32", max_length: int | None = None,
                        max_batch_tokens: int | None = None, warmup: bool = True, long_posts: str = "truncate",
                        chunk_overlap: int | None = None, max_chunks: int = lp.DEFAULT_MAX_CHUNKS,
                        truncate_dim: int | None = None, similarity_fn_name=None, prompts: dict | None = None,
                        default_prompt_name: str | None = None, **unknown) -> "Encoder":
        """Load a model. Another keyword (e.g. sentence-transformers' ``trust_remote_code``) is a TypeError naming
        what to pass instead.

        name_or_path: "default" (the shipped post-embedding model), "base" (the pre-trained
            encoder, all-MiniLM-L6-v2), or a model directory.
        backend: "auto" (fastest exact backend available; logged and in ``describe()``),
            "torch", "onnxruntime", "openvino" or "tensorrt" (a directory built by export/build_engine.py).
        device: "auto", "cpu" or "cuda[:N]".
        precision: "fp32" (exact, the default). On CPU also "bf16" (OpenVINO or torch, native bf16
            CPUs) and "int8" (OpenVINO: static int8 matmuls, calibrated on first use; or
            onnxruntime, quantized on first use), each offered only when its
            fidelity to fp32, measured on real posts on first use and cached, clears
            postemb_rt.fidelity.THRESHOLDS (else FidelityError). On CUDA "fp16" / "bf16" (torch,
            or a tensorrt engine built so). "auto": the first precision that clears the bar on
            this CPU of (backends.precision_candidates) bf16 where the CPU has it natively, else
            int8, else fp32 (bf16 before a faster int8: it is much closer to fp32);
            ``describe()["precision_reason"]`` says which ran and why; ``vector_version`` says it.
        max_length: tokens per post after truncation (default: the model's, 256).
        max_batch_tokens: padded tokens per batch (rows x longest row), at least max_length; default: the backend's.
        long_posts: "truncate" (cut posts at max_length) or "chunk" (embed the whole post as windows
            of max_length tokens sharing ``chunk_overlap`` tokens (default: 32, at most a quarter of a
            window), at most ``max_chunks`` of them, combined by their token-weighted mean; see
            postemb_rt.long_posts). The default of ``encode`` / ``submit`` / ``aencode`` (each can override it).
        truncate_dim: a nested prefix the model declares (ST's ``truncate_dim``; None: the model's own, if it
            sets one): what ``encode`` and ``submit`` return by default, and the vectors' version (``@<k>``).
        similarity_fn_name: what ``similarity`` computes (ST's constructor argument; None: the model's, else
            "cosine"), as setting ``enc.similarity_fn_name``.
        prompts / default_prompt_name: ST's constructor arguments: {name: text} over the model's prompts of
            those names (others added), and the prompt ``encode`` / ``submit`` apply when a call names none
            (None: the model's default, if any); ``enc.prompts`` / ``enc.default_prompt_name`` then say them.
        """
        eo.refuse_load_args(unknown)
        if precision not in PRECISIONS:
            raise ValidationError(f"`precision` must be one of {PRECISIONS}. Given: {precision!r}.")
        max_length, chunk_overlap, max_chunks = (eo.as_int(v) for v in (max_length, chunk_overlap, max_chunks))
        similarity_fn_name = check_similarity_fn_name(similarity_fn_name)
        md = resolve(name_or_path)
        prompt_config = with_prompts(md.config, prompts, default_prompt_name)  # checked before the model loads
        k = eo.check_truncate_dim(md, truncate_dim)  # refused before the model loads; None: the config's default
        device = backends.resolve_device(device)
        if max_length is not None and not (type(max_length) is int and 3 <= max_length <= md.config.max_length):
            raise ValidationError(
                f"`max_length` must be between 3 (2 special tokens and one of text) and the model's max_length "
                f"({md.config.max_length}). Given: {max_length!r}. Fix: pass an int in that range, or None (the "
                "model's)."
            )
        max_batch_tokens = eo.check_max_batch_tokens(max_batch_tokens, max_length or md.config.max_length)
        options = dict(max_length=max_length, max_batch_tokens=max_batch_tokens, warmup=warmup,
                       long_posts=long_posts, chunk_overlap=chunk_overlap, max_chunks=max_chunks)
        if precision == "auto":
            candidates, why = backends.precision_candidates(md, device, backend)
        else:
            candidates, why = [precision], None  # a named precision: its own reason ("exact" / "asked for")
        tried = []
        for p in candidates:
            try:
                enc = cls._load(md, backend, device, p, why and why + (f"; not offered here: {'; '.join(tried)}"
                                                                        if tried else ""), **options)
            except (FidelityError, BackendUnavailableError) as e:
                if p == candidates[-1]:
                    raise
                tried.append(f"{p} ({type(e).__name__}: {e})")
                log.warning("precision='auto': %s is not offered here (%s); trying %s", p, e,
                            candidates[candidates.index(p) + 1])
                continue
            if why:
                log.info("precision='auto' chose %r on backend %r: %s", p, enc.backend.name, enc.precision_reason)
            enc.truncate_dim = k  # after the fidelity check, which compares full vectors
            enc._similarity_fn_name = similarity_fn_name
            if prompt_config is not md.config:  # prompts= / default_prompt_name=: what every prompt reader reads
                enc.model = dataclasses.replace(enc.model, config=prompt_config)
            enc._remember_load(name_or_path, backend=backend, device=device, max_batch_tokens=max_batch_tokens,
                               warmup=warmup, prompts=None if prompts is None else dict(prompts),  # pickling
                               default_prompt_name=default_prompt_name)
            return enc

    @classmethod
    def _load(cls, md: ModelDir, backend: str, device: str, precision: str, precision_reason: str | None, *,
              max_length, max_batch_tokens, warmup, long_posts, chunk_overlap, max_chunks) -> "Encoder":
        """One (backend, precision) on ``device``: build, warm up, gate a fast CPU precision by fidelity."""
        if backend == "auto":
            name, reason = backends.choose(md, device, precision)
            log.info("backend='auto' chose %r: %s", name, reason)
        else:
            name, reason = backend, "asked for by name"
        impl = backends.backend_class(name)(md, device=device, precision=precision)
        try:
            enc = cls(md, impl, reason, max_length=max_length, max_batch_tokens=max_batch_tokens,
                      long_posts=long_posts, chunk_overlap=chunk_overlap, max_chunks=max_chunks)
        except BaseException:
            impl.close()
            raise
        enc.precision_reason = precision_reason or enc.precision_reason
        if warmup:
            impl.warmup(enc.tokenizer(["warm up"]).ids[0])
        if precision in CPU_FAST and device == "cpu":
            try:
                enc.fidelity = enc._check_fidelity(name)
            except BaseException:
                enc.close()
                raise
        return enc

    def _check_fidelity(self, backend_name: str) -> Fidelity:
        """This encoder's fidelity to float32 (``fidelity.gate``; the reference is the same model on
        ``backend_name`` in float32)."""
        return fidelity.gate(self, backend_name, lambda: Encoder.from_pretrained(
            self.model.path, backend=backend_name, device="cpu", max_length=self.max_length))

    @property
    def last_stats(self) -> EncodeStats:
        """What this thread's last ``encode`` call did (a thread that made none: the last call of any thread)."""
        return getattr(self._stats, "value", None) or self._any_stats

    @last_stats.setter
    def last_stats(self, stats: EncodeStats) -> None:
        self._stats.value = self._any_stats = stats

    @property
    def dim(self) -> int:
        return self.model.config.dim

    @property
    def model_version(self) -> str:
        return self.model.config.model_version

    @property
    def vector_version(self) -> str:
        """model_dir.vector_version of this encoder's vectors: what a store, output or server records."""
        return self.vector_version_at(self.truncate_dim)

    def vector_version_at(self, truncate_dim: int | None, long_posts: str | None = None) -> str:
        """:attr:`vector_version` of this encoder's vectors cut to ``truncate_dim`` (a declared nested prefix:
        ``@<k>``; its own dim: the full vector; None: its default, as ``encode``), in ``long_posts`` mode
        (None: the encoder's own). Refuses other dims."""
        return vector_version(self.model_version, self.backend.precision, long_posts or self.long_posts,
                              eo.check_truncate_dim(self, truncate_dim),
                              self.max_length if self.max_length != self.model.config.max_length else None)

    def describe(self) -> dict:
        """What runs: model version, dim, pooling and head, backend (and why), device, precision,
        kernels, long-post mode."""
        cfg = self.model.config
        head = [f"Dense {d['in_features']}->{d['out_features']} ({d['activation']})" for d in cfg.dense or ()]
        if cfg.projection_dim and not cfg.dense:
            head.insert(0, f"projection {cfg.hidden_size}->{cfg.projection_dim}")
        return {
            "model_version": self.model_version,
            "vector_version": self.vector_version,
            "model_path": str(self.model.path),
            "dim": self.dim, "truncate_dim": self.truncate_dim,  # encode's default prefix (None: the full dim)
            "pooling": cfg.pooling,
            "head": ", ".join(head) or "none",
            "normalize": cfg.normalize,
            "prompts": prompts.model_prompts(cfg), "default_prompt_name": cfg.default_prompt_name,
            "matryoshka_dims": eo.allowed_dims(self),  # the truncate_dim values encode accepts
            "max_length": self.max_length,
            "long_posts": (self.long_posts if self.long_posts == "truncate" else
                           f"chunk (overlap {self.chunk_overlap}, max_chunks {self.max_chunks})"),
            "max_batch_tokens": self.max_batch_tokens,
            **(self._closed_backend or self.backend.describe()),  # after close(): what ran
            "backend_reason": self.backend_reason,
            "precision_reason": self.precision_reason,
            "fidelity": (self.fidelity.to_dict() if self.fidelity is not None
                         else "exact (float32)" if self.backend.precision == "fp32"
                         else "not measured at load (GPU precisions: benchmarks/gpu_suite.py)"),
            "packing": "C++ (postemb_rt._C)" if native.NATIVE else "python fallback",
            "batcher": ("closed" if self._batcher_closed else self._batcher.implementation if self._batcher is not None
                        else "not started"),
        }

    def _check_texts(self, texts) -> list[str]:
        if self._batcher_closed:  # the backend is released too
            raise BatcherClosedError(CLOSED)
        hint = unordered_hint(texts)  # a dict or a set: not a list of texts
        if getattr(texts, "ndim", None) == 0:  # a 0-d numpy array: not iterable, though it has __iter__
            hint = " A 0-d array holds one text. Fix: texts.item() for that text, or a 1-d array of texts."
        if hint or isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
            hint = hint or (" Fix: pass the texts: encode(texts), or as `inputs=` / `sentences=`." if texts is None
                            else " Fix: decode them to str first: texts.decode('utf-8')."
                            if isinstance(texts, (bytes, bytearray)) else
                            " Fix: pass a str or a list of str (str(x) for a number).")
            raise ValidationError(f"`texts` must be a str or a list of str. Given: {type(texts).__name__}.{hint}")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                fix = (f"decode it: texts[{i}].decode('utf-8')" if isinstance(t, (bytes, bytearray)) else
                       "pass every text as a str (str(x) for a number; drop or fill missing values: None, NaN)")
                raise ValidationError(f"`texts[{i}]` must be str. Given: {type(t).__name__} ({repr(t)[:40]}). "
                                      f"Fix: {fix}.")
        return texts

    def _warn_truncated(self, cut: int, n: int, mode: str) -> None:
        if cut:  # one warning when `cut` of `n` texts were cut, naming `mode`'s limit
            limit = (f"max_length ({self.max_length} tokens)" if mode == "truncate" else
                     f"max_chunks ({self.max_chunks})")
            log.warning(TRUNCATED_WARNING, cut, n, limit)

    def encode(self, texts=None, *args, batch_size: int = 64, show_progress_bar: bool | None = False,
               normalize: bool | None = None, truncate: bool = True, max_batch_tokens: int | None = None,
               long_posts: str | None = None, prompt_name: str | None = None, prompt: str | None = None, device=None,
               normalize_embeddings: bool | None = None, truncate_dim: int | None = None, precision="float32",
               convert_to_numpy=True, convert_to_tensor=False, output_value="sentence_embedding", **st_only):
        """Embed texts. Accepts ``SentenceTransformer.encode``'s keyword arguments with its meaning;
        where that meets one of ours, one rule (postemb_rt.encode_options, README "Encoding semantics").

        texts: a str, or a list (any ordered iterable: not a dict or set) of str; or as ``sentences=`` /
            ``inputs=`` (sentence-transformers' names). The only positional argument. An empty string
            is embedded as the model sees it: [CLS] [SEP] and nothing else (a valid vector).
        batch_size: at most this many posts (chunk mode: windows) per batch.
        max_batch_tokens: at most this many padded tokens per batch, >= 1 (default: the encoder's); a post
            longer than it runs alone.
        truncate: cut posts longer than max_length tokens (chunk mode: longer than max_chunks windows),
            counted in ``last_stats`` and logged; with False, such a post raises ValidationError instead.
        normalize: unit L2 rows (True) or raw pooled/projected vectors (False); default: the model's (ST: Normalize).
        long_posts: "truncate" or "chunk" for this call (default: the encoder's; see from_pretrained).
        show_progress_bar: default False; None: shown when the "postemb_rt" logger is at INFO or DEBUG.
        prompt_name / prompt: a prompt of the model's (``prompts``), or prompt text, prepended to each
            text; neither: the model's default prompt, if any (postemb_rt.prompts). Not both.
        normalize_embeddings: sentence-transformers' flag: True = normalize=True; False/None = the
            model's own output. Contradicting ``normalize`` raises ValidationError.
        truncate_dim: the first k components (before normalising); k: the model's dim or a ``matryoshka_dims``.
        precision: the OUTPUT quantization, as sentence-transformers: "float32" (or None), "int8", "uint8",
            "binary", "ubinary" (postemb_rt.quantization; ranges calibrated once per model). The compute
            precision is from_pretrained(precision=...).
        convert_to_numpy / convert_to_tensor: numpy (default), one torch tensor, or (both False) a list of
            1-D torch tensors. device: None or the encoder's own. output_value: "sentence_embedding".
        pool / chunk_size (multi-process): None only. Returns float32 (len(texts), dim) in input order
        (quantized: int8/uint8 (n, dim), binary/ubinary (n, ceil(dim / 8))); (dim,) for a str; (0, dim) for [].
        """
        texts = self._st_inputs(texts, args, st_only)  # sentences= / inputs=; refuses pool, unknown keywords
        opts = eo.resolve(self, prompt_name=prompt_name, prompt=prompt, normalize=normalize,
                          normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim, precision=precision,
                          convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor, device=device,
                          output_value=output_value, batch_size=batch_size)
        single = isinstance(texts, str)
        texts = prompts.apply(self._check_texts([texts] if single else texts), opts.prompt)
        mode = lp.check_mode(long_posts or self.long_posts)
        cut_dim = opts.dim < self.dim  # matryoshka prefix: raw vectors, sliced and normalised after
        normalize = opts.normalize and not cut_dim
        start = time.perf_counter()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            self.last_stats = EncodeStats()
            return eo.finish(out[:, :opts.dim], opts, False)
        budget = self.max_batch_tokens if max_batch_tokens is None else eo.check_int("max_batch_tokens",
                                                                                    max_batch_tokens, 1)
        if mode == "truncate":
            tok = self.tokenizer(texts, truncate=truncate, prompt=opts.prompt)
            idx, seqs, cut, chunks = np.arange(len(texts)), tok.ids, tok.truncated, None
        else:
            chunks = lp.split(self.tokenizer.windows(texts, self.chunk_overlap), self.max_chunks, truncate)
            idx, seqs, cut = np.asarray(chunks.singles, dtype=np.int64), chunks.single_ids, chunks.truncated
        self._warn_truncated(len(cut), len(texts), mode)
        lengths = [len(x) for x in seqs]
        plans = []
        with self._computing(), _progress(show_progress_bar, len(texts)) as bar:
            if seqs:
                vecs, plan = self._embed_all(seqs, batch_size, budget, normalize, bar)
                out[idx] = vecs
                plans.append((lengths, plan))
            if chunks is not None and chunks.windows:
                vecs, plan = self._embed_all(chunks.windows, batch_size, budget, False, None)
                posts, combined = lp.combine(vecs, chunks, normalize)
                out[posts] = combined
                if bar is not None:
                    bar.update(len(posts))
                plans.append(([len(w) for w in chunks.windows], plan))
        all_lengths, all_batches = [], []  # both plans as one, for the padding ratio
        for ls, plan in plans:
            all_batches += [b + len(all_lengths) for b in plan]
            all_lengths += ls
        self.last_stats = EncodeStats(
            posts=len(texts), tokens=int(sum(all_lengths)), truncated=list(cut), batches=len(all_batches),
            padding_ratio=padding_ratio(all_lengths, all_batches), seconds=time.perf_counter() - start,
            chunked=chunks.chunked if chunks is not None else 0,
            windows=len(chunks.windows) if chunks is not None else 0,
        )
        if cut_dim:
            out = eo.truncate(out, opts.dim, opts.normalize)
        return eo.finish(out, opts, single)

    @contextmanager
    def _computing(self):
        """One ``encode`` call on the backend: refused once ``close()`` began; ``close()`` waits for it."""
        with self._batcher_lock:
            if self._batcher_closed:
                raise BatcherClosedError(CLOSED)
            self._encoding += 1
        try:
            yield
        finally:
            with self._batcher_lock:
                self._encoding -= 1
                self._idle.notify_all()

    def _after_fork_in_child(self) -> None:
        """postemb_rt.forks: the parent's threads, and the encode calls they were running, are not here."""
        super()._after_fork_in_child()  # a new lock, no batchers
        self._idle, self._encoding = threading.Condition(self._batcher_lock), 0

    def _embed_all(self, seqs: list[list[int]], batch_size: int, max_batch_tokens: int, normalize: bool, bar):
        """Token-id lists -> (float32 (len(seqs), dim) in their order, the batch plan)."""
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        plan = plan_batches([len(x) for x in seqs], batch_size, max_batch_tokens)
        pad_id = self.tokenizer.pad_id
        for idx in plan:
            ids, mask = native.pack_padded([seqs[i] for i in idx], pad_id)
            out[idx] = self.backend.embed(ids, mask, normalize=normalize)
            if bar is not None:
                bar.update(len(idx))
        return out, plan

    def close(self) -> None:
        """Refuse new calls, let ``encode`` calls already running on other threads finish, drain and stop the
        batcher (if started), then release the backend."""
        with self._batcher_lock:
            b, self._batcher = self._batcher, None
            raw, self._raw_batcher = self._raw_batcher, None
            self._batcher_closed = True
            self._idle.wait_for(lambda: not self._encoding)
        for x in (b, raw):
            if x is not None:
                x.close(drain=True)
        if self._closed_backend is None:
            self._closed_backend = self.backend.describe()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Encoder({self.model_version!r}, dim={self.dim}, backend={self.backend.name!r})"
