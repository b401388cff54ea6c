"""Long posts: ``long_posts="truncate"`` (cut at max_length) or ``"chunk"`` (embed the whole post).

Chunk mode cuts a post's token ids into windows of at most ``max_length`` tokens, special
tokens included (the tokenizer's own overflow: every window is ``[CLS] ... [SEP]``, and
starts with the last ``overlap`` content tokens of the window before it), embeds every
window through the normal batched path, and combines them:

    v = sum_k n_k * u_k / sum_k n_k,  then embedding = v / |v|  (when normalising)

where u_k is window k's pooled (and projected) vector before normalisation and n_k its
token count (special tokens included). A post that fits in one window is not combined at
all: it is embedded exactly as in truncate mode. At most ``max_chunks`` windows per post:
past that the post is cut to its first ``max_chunks`` windows when ``truncate`` is true
(counted like a truncation), else a ValidationError names it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import ValidationError

MODES = ("truncate", "chunk")
DEFAULT_OVERLAP = 32  # tokens shared by consecutive windows (at most a quarter of a window's content)
DEFAULT_MAX_CHUNKS = 16


def check_mode(long_posts) -> str:
    if long_posts not in MODES:
        raise ValidationError(f"`long_posts` must be one of {MODES}. Given: {long_posts!r}.")
    return long_posts


def check_chunking(overlap, max_chunks, max_length: int, specials: int) -> int:
    """The overlap to use (None: DEFAULT_OVERLAP, at most a quarter of a window's content tokens, so
    that a short max_length works); ValidationError unless a window holds a content token,
    0 <= overlap < the content tokens of a window and max_chunks >= 1."""
    room = max_length - specials
    if room < 1:
        raise ValidationError(f"`max_length` must leave room for text: at least {specials + 1} ({specials} special "
                              f"tokens and one of text). Given: {max_length}.")
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, room // 4)
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < room:
        raise ValidationError(
            f"`chunk_overlap` must be an int in [0, {room}) (max_length {max_length} minus {specials} special "
            f"tokens). Given: {overlap!r}."
        )
    if not isinstance(max_chunks, int) or isinstance(max_chunks, bool) or max_chunks < 1:
        raise ValidationError(f"`max_chunks` must be an int >= 1. Given: {max_chunks!r}.")
    return overlap


@dataclass
class Chunked:
    """Posts split for chunk mode. ``singles``: indices of posts that fit one window, with
    ``single_ids`` their token ids; ``windows``: the token ids of every window of the other
    posts, ``owner[k]`` the post window k belongs to; ``truncated``: posts cut to max_chunks."""

    singles: list[int]
    single_ids: list[list[int]]
    windows: list[list[int]]
    owner: np.ndarray
    truncated: list[int]

    @property
    def chunked(self) -> int:
        """Posts embedded as several windows."""
        return len(np.unique(self.owner))


def split(windows_per_post: list[list[list[int]]], max_chunks: int, truncate: bool,
          name: Callable[[int], str] = "texts[{}]".format) -> Chunked:
    """windows_per_post[i]: post i's windows (token-id lists, the first one the truncated post);
    ``name(i)``: post i as the caller's error messages call it."""
    singles, single_ids, flat, owner, cut = [], [], [], [], []
    for i, wins in enumerate(windows_per_post):
        if len(wins) > max_chunks:
            if not truncate:
                raise ValidationError(
                    f"`{name(i)}` needs {len(wins)} windows, more than max_chunks ({max_chunks}), and "
                    "truncate=False. Fix: raise max_chunks, shorten the post, or pass truncate=True "
                    f"(keeps its first {max_chunks} windows)."
                )
            wins = wins[:max_chunks]
            cut.append(i)
        if len(wins) == 1:
            singles.append(i)
            single_ids.append(wins[0])
        else:
            flat.extend(wins)
            owner.extend([i] * len(wins))
    return Chunked(singles, single_ids, flat, np.asarray(owner, dtype=np.int64), cut)


def combine(vectors: np.ndarray, chunked: Chunked, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """vectors: float32 (n_windows, D), raw (not normalised), in ``chunked.windows`` order.
    Returns (posts (P,) int64 sorted, float32 (P, D)): each post's token-weighted mean of its
    windows' vectors, L2-normalised when ``normalize`` (see the module docstring)."""
    posts, slot = np.unique(chunked.owner, return_inverse=True)
    weights = np.array([len(w) for w in chunked.windows], dtype=np.float64)
    acc = np.zeros((len(posts), vectors.shape[1]), dtype=np.float64)
    np.add.at(acc, slot, vectors.astype(np.float64) * weights[:, None])
    acc /= np.bincount(slot, weights=weights)[:, None]
    if normalize:
        acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
    return posts, acc.astype(np.float32)
