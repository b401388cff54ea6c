"""Fidelity of a fast precision (bf16, int8) to the float32 model, and the bar it must clear.

Measured on real posts: the cosine of each post's embedding to its float32 embedding (mean
and minimum), and how much nearest-neighbour retrieval changes: for query posts, the overlap
of their 10 nearest neighbours among all the posts in float32 and in the candidate precision
(``overlap_at_10``, 1.0 = the same neighbours).

A precision is offered only when it clears :data:`THRESHOLDS`; ``Encoder.from_pretrained``
refuses one that does not, unless the artefact was written with ``export_onnx.py --force``.
Measurements for precisions made at load time (bf16 on CPU, int8 quantized on first use) are
cached under ``POSTEMB_CACHE``; an exported int8 directory carries its own in ``postemb.json``.
A cache entry is bound to its key and content by a SHA-256 stored with it and checked, with
the entry's shape, on every read: an entry that is damaged, of another shape, moved from
another key or edited by hand (a "passing" forgery) is measured again, never trusted. (The
hash cannot stop someone who can write the cache and recompute it: the cache is trusted as
far as the account that owns it.)
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .durable import one_builder, read_sealed, write_sealed
from .errors import ValidationError
from .logs import dropped
from .tokenization import TRUNCATED_WARNING

log = logging.getLogger("postemb_rt")

THRESHOLDS = {"mean_cos": 0.995, "min_cos": 0.98, "overlap_at_10": 0.9}
# Posts in the check: short tweets plus long concatenated posts (postemb_rt.data), so both
# workloads' length ranges are covered. POSTEMB_FIDELITY_POSTS scales it down for tests.
DEFAULT_POSTS = 1200
QUERY_EVERY = 5  # every 5th post is a query against all posts


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of one precision to float32 on ``posts`` posts from ``source``."""

    mean_cos: float
    min_cos: float
    overlap_at_10: float
    posts: int
    source: str
    forced: bool = False  # written by export_onnx.py --force despite missing THRESHOLDS
    # the candidate backend's numerics it was measured with (``Backend.numerics`` without its "-": onnxruntime
    # int8's MLAS kernel, "u8s8-vnni" or "u8s8-madd16"); "": none, or not recorded (measured before 2026-12-06)
    numerics: str = ""

    def failures(self) -> list[str]:
        """The thresholds this measurement misses, as readable strings (empty: it passes)."""
        # `not >=`: a NaN (a non-finite embedding) misses every threshold
        return [f"{k} {getattr(self, k):.4f} < {v}" for k, v in THRESHOLDS.items() if not getattr(self, k) >= v]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        kernels = f", measured with {self.numerics}" if self.numerics else ""
        return (f"mean cosine {self.mean_cos:.5f}, min {self.min_cos:.5f}, overlap@10 {self.overlap_at_10:.3f} "
                f"on {self.posts} posts ({self.source}{kernels})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fidelity":
        return cls(**d)


def overlap_at_k(ref: np.ndarray, other: np.ndarray, k: int = 10, every: int = QUERY_EVERY) -> float:
    """Mean share of the k nearest neighbours (inner product, the query itself excluded) that
    ``other`` keeps from ``ref``, over every ``every``-th row as a query."""
    n = len(ref)
    if n <= k:
        raise ValueError(f"`ref` must hold more than k = {k} rows for overlap@{k}. Given: {n}.")
    q = np.arange(0, n, every)

    def neighbours(e: np.ndarray) -> np.ndarray:
        s = e[q] @ e.T
        s[np.arange(len(q)), q] = -np.inf
        return np.argpartition(-s, k, axis=1)[:, :k]

    a, b = neighbours(ref), neighbours(other)
    return float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b)]))


def _unit_rows(e: np.ndarray) -> np.ndarray:
    """``e``'s rows scaled to unit length (float64); a zero or non-finite row becomes NaN."""
    e = np.asarray(e, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def cosines(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine (float64) of two (n, d) arrays of one shape, whatever their rows' norms (a model
    with normalize=False); NaN for a row that is zero or not finite, so a ``>=`` threshold fails it."""
    if np.shape(ref) != np.shape(other):
        raise ValueError(f"`other` must have the shape of `ref` {np.shape(ref)}. Given: {np.shape(other)}.")
    return np.sum(_unit_rows(ref) * _unit_rows(other), axis=1)


def measure(ref: np.ndarray, other: np.ndarray, source: str) -> Fidelity:
    """Fidelity of ``other`` to ``ref`` (same posts): :func:`cosines`, and overlap@10 of the rows as unit
    vectors (cosine neighbours)."""
    cos = cosines(ref, other)
    overlap = overlap_at_k(_unit_rows(ref), _unit_rows(other))
    return Fidelity(float(cos.mean()), float(cos.min()), overlap, len(ref), source)


def posts(n: int | None = None) -> tuple[list[str], str]:
    """(texts, source) for the check: 5/6 short posts and 1/6 long ones from the shared data,
    else the built-in sample (too few posts for a meaningful overlap@10: the source says so)."""
    from .data import BUILTIN_POSTS, data_root, long_posts, short_posts

    if n is None:
        value = os.environ.get("POSTEMB_FIDELITY_POSTS", "").strip()
        if value and not (value.isdigit() and int(value) >= 1):
            raise ValidationError(f"`POSTEMB_FIDELITY_POSTS` must be an integer >= 1. Given: {value!r}. "
                                  f"Fix: e.g. {DEFAULT_POSTS} (the default), or unset it.")
        n = int(value) if value else DEFAULT_POSTS
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # a negative n sliced the whole split
        raise ValidationError(f"the fidelity check's number of posts must be an integer >= 1. Given: {n!r}. "
                              f"Fix: e.g. {DEFAULT_POSTS} (the default), or unset POSTEMB_FIDELITY_POSTS.")
    if data_root(required=False) is None:
        return list(BUILTIN_POSTS), f"built-in sample of {len(BUILTIN_POSTS)} posts: no shared data"
    n_long = max(n // 6, 1)
    return short_posts(n - n_long) + long_posts(n_long), "TweetEval emoji test + concatenated long posts"


def numerics_of(backend) -> str:
    """What a Fidelity records of ``backend``'s numerics (``Fidelity.numerics``): its ``numerics`` (a cache key
    part, "-u8s8-vnni") without the leading "-"; "" for none."""
    return backend.numerics.lstrip("-")


def measure_encoders(reference, candidate, texts: list[str], source: str) -> Fidelity:
    """Fidelity of ``candidate`` (an Encoder) to ``reference`` (float32) on ``texts``."""
    start = time.perf_counter()
    # the check's long posts are cut at max_length on purpose (as in use): a user who sent nothing
    # should not read that their texts were truncated (only this thread's warnings are dropped)
    me = threading.get_ident()
    with dropped(log, lambda r: r.msg == TRUNCATED_WARNING and r.thread == me):
        f = measure(reference.encode(texts), candidate.encode(texts), source)
    f = dataclasses.replace(f, numerics=numerics_of(candidate.backend))
    log.info("fidelity of %s to float32: %s (%.1f s)", candidate.backend.precision, f.summary(),
             time.perf_counter() - start)
    return f


def texts_key(texts: list[str]) -> str:
    """Short hash of the posts a measurement used (part of its cache key): each post's length
    and bytes (``model_dir.texts_digest``), so no two lists of posts share it."""
    from .model_dir import texts_digest

    return texts_digest(texts)[:12]


def entry_path(key: str) -> Path:
    """The cache file of the measurement stored under ``key``."""
    from .onnx_export import cache_root

    return Path(cache_root()) / "fidelity" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _number(v, lo: float, hi: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _verified(d) -> tuple[Fidelity | None, str]:
    """(the Fidelity of a verified cache entry's content, "") if it has a measurement's fields and
    ranges and is not ``forced`` (only an exported artefact can be); else (None, why)."""
    names = {f.name for f in dataclasses.fields(Fidelity)}
    # an entry sealed before ``numerics`` existed holds every other field (its key names the numerics already)
    ok = (isinstance(d, dict) and set(d) in (names, names - {"numerics"})
          and isinstance(d.get("numerics", ""), str) and _number(d["mean_cos"], -1.0001, 1.0001)
          and _number(d["min_cos"], -1.0001, 1.0001) and _number(d["overlap_at_10"], 0, 1)
          and isinstance(d["posts"], int) and not isinstance(d["posts"], bool) and d["posts"] > 0
          and isinstance(d["source"], str) and d["forced"] is False)
    if not ok:
        return None, "its fields are not a measurement (shape, ranges, or forced)"
    return Fidelity.from_dict(d), ""


def cached(key: str, compute) -> Fidelity:
    """The Fidelity stored under ``key`` (any string; hashed into the file name) in the cache,
    computing (``compute()``) and storing it (sealed, durably: ``durable.write_sealed``) first if
    absent or if the entry fails verification (see the module docstring); one process measures, others
    that need it meanwhile wait for it (``durable.one_builder``)."""
    path = entry_path(key)
    f, why = _read(path, key)
    if f is not None:
        return f
    with one_builder(path, "a fidelity measurement"):
        f, why = _read(path, key)
        if f is not None:  # another process measured it while this one waited for the lock
            return f
        if path.exists():
            log.warning("fidelity cache entry %s is not trusted (%s); measuring again", path, why)
        f = compute()
        write_sealed(path, key, "fidelity", f.to_dict())
    return f


def _read(path: Path, key: str) -> tuple[Fidelity | None, str]:
    d, why = read_sealed(path, key, "fidelity")
    return _verified(d) if d is not None else (None, why)


def _versions_key() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "none"

    return "-".join(f"{name}{v(pkg)}" for name, pkg in (("postemb", "postemb_rt"), ("torch", "torch"),
                                                          ("ort", "onnxruntime"), ("ov", "openvino")))


def gate(encoder, backend_name: str, load_reference) -> Fidelity:
    """``encoder``'s fidelity to float32: carried by an exported int8 directory, else measured on
    first use against ``load_reference()`` (the same model in float32, a context manager) and
    cached under a key of model, weights, backend, precision (and the backend's ``numerics``),
    artefact, posts and library versions. Raises FidelityError below THRESHOLDS unless the
    artefact was exported with --force."""
    from .errors import FidelityError

    precision = encoder.backend.precision
    onnx_md = getattr(encoder.backend, "onnx_model", None)
    stored = onnx_md.config.fidelity if onnx_md is not None else None
    if stored is not None:
        f = Fidelity.from_dict(stored)
        here = numerics_of(encoder.backend)
        if f.numerics and f.numerics != here:  # onnxruntime int8: VNNI sums exactly, vpmaddubsw saturates
            log.warning("%s: its int8 fidelity was measured with %s, and this CPU runs %s: the stored %s was not "
                        "measured for these numbers. Fix: export it again (export/export_onnx.py --precision int8) "
                        "on this kind of CPU.", onnx_md.path, f.numerics, here or "other numerics", f.summary())
    else:
        texts, source = posts()
        artefact = onnx_md.path.name if onnx_md is not None else ""  # the int8 cache entry names its recipe
        key = (f"{encoder.model_version}-{encoder.model.fingerprint}-{backend_name}-{precision}"
               f"{encoder.backend.numerics}-{artefact}-"
               f"{texts_key(texts)}-{_versions_key()}")

        def measure() -> Fidelity:
            log.warning("measuring the fidelity of %s to fp32 on %d posts on first use (once; cached; posts "
                        "longer than max_length are cut, as in use)", precision, len(texts))
            with load_reference() as ref:
                return measure_encoders(ref, encoder, texts, source)

        f = cached(key, measure)
    if f.ok:
        return f
    if f.forced:
        log.warning("precision %r misses the fidelity bar (%s) but its artefact was exported with --force: "
                    "%s", precision, "; ".join(f.failures()), f.summary())
        return f
    raise FidelityError(
        f"`precision` {precision!r} misses the fidelity bar for {encoder.model_version}: "
        f"{'; '.join(f.failures())} ({f.summary()}). Fix: precision='fp32' (exact) or another "
        f"precision, or export an artefact anyway with export/export_onnx.py --precision int8 --force."
    )
