"""Where the shared data lives, and the standard benchmark workloads built from it.

The data (TweetEval, STS-B) is not part of the repository: it is read from
``POSTEMB_DATA`` if set, else ``../shared/data`` relative to the working directory (the
project root), else ``../shared/data`` relative to the source checkout.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .errors import ModelNotFoundError, ValidationError

_CHECKOUT = Path(__file__).resolve().parent.parent
SHORT_POSTS = "tweeteval/emoji/test_text.txt"
# A few posts for when the shared data is absent (`postemb demo`, the fidelity check, tests).
BUILTIN_POSTS = [
    "Thrilled to announce I've joined a new team as a data engineer!",
    "We are hiring backend engineers in Berlin. DM me for details.",
    "Three lessons I learned from failing my first startup.",
    "Our quarterly results beat expectations thanks to the whole sales team.",
    "Climate change is the defining challenge of our generation.",
    "Renewable energy jobs grew faster than any other sector last year.",
    "Just finished a marathon. Legs hurt, heart is full.",
    "Morning run by the river before a long day of meetings.",
    "New paper out on efficient transformer inference on CPUs.",
    "How we cut our model serving latency in half with better batching.",
    "Happy to share that I passed my cloud architecture certification.",
    "Remote work is here to stay, but culture needs deliberate effort.",
    "Coffee, code, repeat. Shipping the new release today.",
    "Grateful for my mentors who believed in me early on.",
    "The best leaders listen more than they speak.",
    "Our team volunteered at the food bank this weekend.",
]


_SAID: set[tuple[str, str]] = set()  # (POSTEMB_DATA, the folder used instead) already warned about


def data_root(required: bool = True) -> Path | None:
    """The data directory, or None (required=False) / an error (required=True) if absent."""
    candidates = [Path(os.environ["POSTEMB_DATA"])] if os.environ.get("POSTEMB_DATA") else []
    candidates += [Path.cwd().parent / "shared" / "data", _CHECKOUT.parent / "shared" / "data"]
    for i, c in enumerate(candidates):
        if (c / "tweeteval").is_dir():
            said = (os.environ.get("POSTEMB_DATA"), str(c))
            if i and said[0] and said not in _SAID:  # set, but not to the data: say once which folder is used
                _SAID.add(said)
                logging.getLogger("postemb_rt").warning("POSTEMB_DATA=%s holds no tweeteval/; using %s instead", *said)
            return c
    if required:
        raise ModelNotFoundError(
            f"the shared data directory was not found (looked in {', '.join(map(str, candidates))}). "
            "Fix: set POSTEMB_DATA to the folder holding tweeteval/ and stsb/."
        )
    return None


def read_text(path: Path, error: type[Exception] = ValidationError, arg: str = "") -> str:
    """The file as UTF-8 text, a BOM (Windows tools write one) dropped; bytes that are not UTF-8
    are an ``error`` naming the argument ``arg`` (if given), the file and the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = f"`{arg}` {path}" if arg else str(path)
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(f"{where}:{line}: not UTF-8 ({exc.reason}: {raw[exc.start:exc.end]!r}). "
                    "Fix: save it as UTF-8.") from None


def read_lines(path: Path, error: type[Exception] = ValidationError, arg: str = "") -> list[str]:
    r"""The lines of a UTF-8 text file (:func:`read_text`), empty lines kept, cut at "\n" only ("\r\n"
    loses its "\r"): one line per post, even where a post holds another Unicode line break (U+2028,
    U+0085, form feed), which ``str.splitlines`` would cut it at, shifting every later post against
    its label."""
    return split_lines(read_text(path, error, arg))


def split_lines(text: str) -> list[str]:
    r"""``text``'s lines as :func:`read_lines` cuts a file's (one per "\n", a "\r" before it dropped)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":  # the last line's newline
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def short_posts(n: int = 4000) -> list[str]:
    """The standard short-post workload: the first ``n`` tweets of the emoji test split
    (mean about 21 word-piece tokens)."""
    return read_lines(data_root() / SHORT_POSTS)[:n]


def long_posts(n: int = 1000, seed: int = 0, median_tokens: int = 100, max_tokens: int = 512) -> list[str]:
    """The long-post workload: tweets concatenated (in file order, wrapping around) until
    each post reaches a target length drawn from a log-normal distribution with median
    ``median_tokens`` and sigma 0.6, capped at ``max_tokens``. Lengths are counted in
    whitespace words x 1.6 (the measured word-piece/word ratio of these tweets: 1.63), so no
    tokenizer is needed here; measured: median 106 tokens, 5.5% of posts over the model's
    max_length of 256, which the encoder truncates."""
    path = data_root() / SHORT_POSTS
    tweets = read_lines(path)
    if n > 0 and not tweets:
        raise ValidationError(f"{path} holds no posts, so no long posts can be made of them. Fix: restore the "
                              "shared data (copy tweeteval/ again), or set POSTEMB_DATA to a folder holding it.")
    return concatenated_posts(tweets, n, seed, median_tokens, max_tokens)


def concatenated_posts(tweets: list[str], n: int, seed: int = 0, median_tokens: int = 100, max_tokens: int = 512,
                       start: int = 0) -> list[str]:
    """``n`` long posts of consecutive ``tweets`` (from index ``start``, wrapping around), each
    up to a length drawn as :func:`long_posts` describes (words x 1.6 per tweet, plus one)."""
    if n > 0 and not tweets:  # tweets[j % 0]
        raise ValidationError("`tweets` must hold at least one post to concatenate. Given: 0 posts.")
    rng = np.random.default_rng(seed)
    targets = np.minimum(rng.lognormal(np.log(median_tokens), 0.6, n), max_tokens)
    posts, j = [], start
    for target in targets:
        parts, tokens = [], 0.0
        while tokens < target:
            t = tweets[j % len(tweets)]
            j += 1
            parts.append(t)
            tokens += 1.6 * len(t.split()) + 1
        posts.append(" ".join(parts))
    return posts
