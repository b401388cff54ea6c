"""Pair tasks: each yields (text_a, text_b, label) pairs, label 1 = pull together, 0 = push apart.

Built from one split (``train`` for training, ``test`` for held-out evaluation; STS uses
``stsb-en-train.csv`` / ``stsb-en-dev.csv``, as STS-B ships no labelled test set here).

| task | anchor | positive b | negative b (sampled) |
|---|---|---|---|
| topic | stance post (``#SemST`` removed) | its target ("climate change") | another target, uniform |
| emoji | post | its emoji's name ("red heart") | another emoji name, uniform |
| emotion | post | its emotion ("joy") | another emotion, uniform |
| hashtag | (post, tag) occurrence, ``#tag`` removed from the post | half: the tag's words; half: another post with the tag (tag removed) | half: a tag the post lacks (uniform over the vocabulary); half: a post sharing no vocabulary tag, one of its tags removed |
| sts | sentence pair | score >= 4 | score <= 1 (both as given) |

Hashtag vocabulary: tags on at least ``min_tag_posts`` posts of the split's emoji, emotion
and stance posts (train: 5, test: 3), the ``#SemST`` marker excluded. Training samples an
anchor uniformly and makes a positive or a negative with probability 1/2; held-out sets
take up to ``n`` anchors (seeded) and one positive and one negative pair for each. A post that
carries every vocabulary tag has no negative: the task is refused; where no post shares none
of an anchor's tags, its post negative is a tag it lacks.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import data as D

TASKS = ("topic", "emoji", "hashtag", "emotion", "sts")
ZERO_SHOT = ("sentiment", "hate", "offensive")  # never trained on


@dataclass
class Pair:
    a: str
    b: str
    label: float
    key: object  # identity of b for in-batch negatives (same key = same b)


class PairTask:
    name: str

    def __len__(self) -> int:  # anchors, the size used for temperature mixing
        raise NotImplementedError

    def positive(self, rng, i) -> Pair:
        raise NotImplementedError

    def negative(self, rng, i) -> Pair:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int, positives_only: bool = False) -> list[Pair]:
        """n pairs from uniformly drawn anchors; each a positive or negative with p = 1/2."""
        out = []
        for _ in range(n):
            i = int(rng.integers(len(self)))
            out.append(self.positive(rng, i) if positives_only or rng.random() < 0.5 else self.negative(rng, i))
        return out

    def heldout(self, rng: np.random.Generator, n: int) -> list[Pair]:
        """One positive and one negative pair for each of up to n anchors (seeded)."""
        idx = rng.permutation(len(self))[:n]
        out = []
        for i in idx:
            out += [self.positive(rng, int(i)), self.negative(rng, int(i))]
        return out


class LabelTask(PairTask):
    """post <-> name of its label (topic, emoji, emotion)."""

    def __init__(self, name: str, ds: D.Labelled):
        self.name, self.ds = name, ds

    def __len__(self):
        return len(self.ds)

    def positive(self, rng, i):
        y = self.ds.labels[i]
        return Pair(self.ds.texts[i], self.ds.names[y], 1.0, y)

    def negative(self, rng, i):
        y = self.ds.labels[i]
        other = int(rng.integers(len(self.ds.names) - 1))
        other += other >= y
        return Pair(self.ds.texts[i], self.ds.names[other], 0.0, other)


class HashtagTask(PairTask):
    """post (tag removed) <-> the tag, and post <-> post sharing the tag."""

    def __init__(self, posts: list[str], min_tag_posts: int):
        self.name = "hashtag"
        by_tag: dict[str, list[int]] = defaultdict(list)
        cased: dict[str, str] = {}
        for i, t in enumerate(posts):
            for h in D.hashtags(t):
                if h != "semst":
                    by_tag[h].append(i)
            for raw in D.HASHTAG.findall(t):
                cased.setdefault(raw.lower(), raw)
        self.by_tag = {h: v for h, v in by_tag.items() if len(v) >= min_tag_posts}
        self.vocab = sorted(self.by_tag)
        self.words = {h: D.hashtag_words(h, cased.get(h)) for h in self.vocab}
        self.posts = posts
        self.tags_of = defaultdict(set)
        for h, v in self.by_tag.items():
            for i in v:
                self.tags_of[i].add(h)
        self.occ = [(i, h) for h in self.vocab for i in self.by_tag[h]]
        self.tagged = sorted(self.tags_of)
        full = [i for i in self.tagged if len(self.tags_of[i]) == len(self.vocab)]
        if full:  # every other tagged post shares one of its tags, and it lacks none: no negative pair
            raise D.DataError(
                f"the `hashtag` task has no negative pair for {len(full)} post(s) that carry every hashtag of its "
                f"vocabulary {self.vocab} (the tags on >= {min_tag_posts} posts), e.g. {posts[full[0]][:80]!r}: "
                "a negative is a tag the post lacks or a post sharing none of its tags. Fix: add posts with other "
                "hashtags, or drop 'hashtag' from `tasks`.")

    def __len__(self):
        return len(self.occ)

    def positive(self, rng, i):
        p, h = self.occ[i]
        a = D.strip_hashtag(self.posts[p], h)
        if rng.random() < 0.5:
            return Pair(a, self.words[h], 1.0, ("tag", h))
        others = self.by_tag[h]
        q = others[int(rng.integers(len(others)))]
        while q == p:
            q = others[int(rng.integers(len(others)))]
        return Pair(a, D.strip_hashtag(self.posts[q], h), 1.0, ("post", q))

    def negative(self, rng, i):
        p, h = self.occ[i]
        a = D.strip_hashtag(self.posts[p], h)
        mine = self.tags_of[p]  # never all of vocab (refused in __init__): a tag negative always exists
        if rng.random() < 0.5:
            return self._tag_negative(rng, a, mine)
        for _ in range(100):
            q = self.tagged[int(rng.integers(len(self.tagged)))]
            if not (self.tags_of[q] & mine):
                break
        else:  # rare (most posts share a tag of p): draw among the posts apart, or a tag p lacks if none is
            apart = [q for q in self.tagged if not self.tags_of[q] & mine]
            if not apart:
                return self._tag_negative(rng, a, mine)
            q = apart[int(rng.integers(len(apart)))]
        g = sorted(self.tags_of[q])[int(rng.integers(len(self.tags_of[q])))]
        return Pair(a, D.strip_hashtag(self.posts[q], g), 0.0, ("post", q))

    def _tag_negative(self, rng, a, mine):
        g = self.vocab[int(rng.integers(len(self.vocab)))]
        while g in mine:
            g = self.vocab[int(rng.integers(len(self.vocab)))]
        return Pair(a, self.words[g], 0.0, ("tag", g))


class StsTask(PairTask):
    """STS-B sentence pairs: score >= 4 positive, <= 1 negative, as given (no sampling)."""

    def __init__(self, path: Path, strict: bool):
        self.name = "sts"
        a, b, s = D.read_sts(path, strict)
        self.pos = [(x, y) for x, y, z in zip(a, b, s) if z >= 4.0]
        self.neg = [(x, y) for x, y, z in zip(a, b, s) if z <= 1.0]
        if not self.pos or not self.neg:
            raise D.DataError(f"{path}: needs pairs with score >= 4 and pairs with score <= 1.")

    def __len__(self):
        return len(self.pos) + len(self.neg)

    def positive(self, rng, i):
        j = int(rng.integers(len(self.pos)))
        return Pair(*self.pos[j], 1.0, ("sts", j))

    def negative(self, rng, i):
        j = int(rng.integers(len(self.neg)))
        return Pair(*self.neg[j], 0.0, ("neg", j))

    def heldout(self, rng, n):
        pos = [Pair(a, b, 1.0, None) for a, b in self.pos]
        neg = [Pair(a, b, 0.0, None) for a, b in self.neg]
        k = n // 2 if n else None
        return [pos[i] for i in rng.permutation(len(pos))[:k]] + [neg[i] for i in rng.permutation(len(neg))[:k]]


@dataclass
class SplitData:
    """The labelled posts of one split that the pair tasks are made from."""

    topic: D.Labelled
    emoji: D.Labelled
    emotion: D.Labelled
    sts_path: Path
    strict: bool
    cache: dict = field(default_factory=dict)
    split: str = "train"  # for messages: the files read are <split>_text.txt


def load_split(root: Path, split: str) -> SplitData:
    strict = split == "train"
    sts = root / "stsb" / ("stsb-en-train.csv" if split == "train" else "stsb-en-dev.csv")
    return SplitData(D.read_topics(root, split, strict), D.read_task(root, "emoji", split, strict),
                     D.read_task(root, "emotion", split, strict), sts, strict, split=split)


def _label_task(sd: SplitData, name: str) -> LabelTask:
    """A label task, refused without posts or with a single label (its negative pair is another label's name)."""
    ds = getattr(sd, name)
    files = (f"tweeteval/stance/<target>/{sd.split}_text.txt" if name == "topic"
             else f"tweeteval/{name}/{sd.split}_text.txt")
    if not len(ds):
        raise D.DataError(f"the `{name}` task has no posts ({files}). Fix: add labelled posts, or drop "
                          f"{name!r} from `tasks`.")
    if len(ds.names) < 2:
        where = "stance/<target> folders" if name == "topic" else f"tweeteval/{name}/mapping.txt"
        raise D.DataError(f"the `{name}` task has {len(ds.names)} label ({ds.names[0]!r}): a pair task needs at least "
                          f"2 (a post's negative pair is another label's name). Fix: add labels ({where}), or drop "
                          f"{name!r} from `tasks`.")
    return LabelTask(name, ds)


def build_task(sd: SplitData, name: str) -> PairTask:
    if name in ("topic", "emoji", "emotion"):
        return _label_task(sd, name)
    if name == "hashtag":
        posts = sd.emoji.texts + sd.emotion.texts + sd.topic.texts
        task = HashtagTask(posts, min_tag_posts=5 if sd.strict else 3)
        if len(task) == 0:
            raise D.DataError(f"the `hashtag` task has no anchor: no hashtag is on >= {5 if sd.strict else 3} posts of "
                              f"the {sd.split} split (its emoji, emotion and stance posts; train: 5, else 3). Fix: add "
                              "posts with hashtags, or drop 'hashtag' from `tasks`.")
        return task
    if name == "sts":
        return StsTask(sd.sts_path, sd.strict)
    if name in ZERO_SHOT:
        raise D.DataError(f"`tasks` must not include {name!r}: it is a zero-shot evaluation task, never trained on.")
    raise D.DataError(f"`tasks` entries must be among {list(TASKS)}. Given: {name!r}.")


def mixing_probabilities(sizes: dict[str, int], temperature: float) -> dict[str, float]:
    """p_t proportional to n_t ** (1 / temperature): 1 = proportional, large = uniform."""
    w = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    z = sum(w.values())
    return {t: v / z for t, v in w.items()}
