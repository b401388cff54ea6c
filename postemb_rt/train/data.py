"""Reading the labelled data (TweetEval layout, STS-B CSV) with checks that name file and line.

Layout under the data root (see ``../shared/data/README.md``)::

    tweeteval/<task>/{train,val,test}_text.txt + _labels.txt + mapping.txt
    tweeteval/stance/<target>/{split}_text.txt (+ labels; the folder is the topic)
    stsb/stsb-en-{train,dev}.csv   (sentence1,sentence2,score)

``strict=True`` (training data) rejects empty texts; evaluation data keeps them (an empty
post is a valid input, and TweetEval's hate split has a few).
"""
from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..data import read_lines, read_text
from ..errors import ValidationError

# Stance folders -> topic text (the SemEval-2016 task 6 targets, in words).
TOPICS = {
    "abortion": "legalization of abortion",
    "atheism": "atheism",
    "climate": "climate change",
    "feminist": "feminist movement",
    "hillary": "Hillary Clinton",
}
# Every stance tweet ends in this tag (the SemEval collection marker): a label leak, removed.
STANCE_MARKER = re.compile(r"\s*#SemST\b", re.IGNORECASE)
HASHTAG = re.compile(r"#(\w+)")


class DataError(ValidationError):
    """Training or evaluation data that cannot be used; the message names file and line."""


@dataclass
class Labelled:
    texts: list[str]
    labels: list[int]
    names: list[str]  # label id -> name

    def __len__(self) -> int:
        return len(self.texts)


def _exists(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found (training and evaluation read the emoji, emotion and stance posts "
                        "and STS-B, whichever `tasks` a run trains: the hashtag task, the distillation stream and the "
                        "checkpoint read them all). Fix: add it, or point `data` at a folder holding tweeteval/ and "
                        "stsb/ laid out as postemb_rt/train/data.py says.")
    return path


def _read(path: Path) -> list[str]:
    """The lines of a text file, one per post (``data.read_lines``); not UTF-8: a DataError."""
    return read_lines(_exists(path), DataError)


def read_mapping(path: Path) -> list[str]:
    """``id<TAB>name...`` lines -> names indexed by id. Emoji names (``_red_heart_``) become words.
    Each id and each non-empty name (``_same``: the label tasks pair posts with them) once."""
    names: dict[int, str] = {}
    line_of: dict[int, int] = {}
    for lineno, line in enumerate(_read(path), 1):
        if not line.strip():
            continue
        cols = [c for c in line.split("\t") if c.strip()]
        try:
            idx = int(cols[0])
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected `id<TAB>name`. Given: {line[:80]!r}.") from None
        name = (cols[-1].strip() if len(cols) > 1 else str(idx)).strip("_").replace("_", " ")
        if not _same(name):
            raise DataError(f"{path}:{lineno}: label name is empty ({cols[-1]!r}, underscores read as spaces): a "
                            "label task pairs a post with its label's name. Fix: give the label a name.")
        if idx in names:
            raise DataError(f"{path}:{lineno}: label id {idx} is given twice (lines {line_of[idx]} and {lineno}). "
                            "Fix: one line per id.")
        same = [i for i, n in names.items() if _same(n) == _same(name)]
        if same:
            raise DataError(f"{path}:{lineno}: label name {name!r} is also id {same[0]}'s (line {line_of[same[0]]}): "
                            "a post's negative pair would be its positive. Fix: one name per label.")
        names[idx], line_of[idx] = name, lineno
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: label ids must be 0..{len(names) - 1}. Given: {sorted(names)}.")
    return [names[i] for i in range(len(names))]


def _same(name: str) -> str:
    """What the model reads of a label name: case, Unicode form (NFKC) and runs of spaces ignored."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def read_split(folder: Path, split: str, names: list[str], strict: bool = True) -> Labelled:
    """Texts and integer labels of one split, checked: same line count, int labels in the
    mapping, and (strict) no empty text."""
    tpath, lpath = folder / f"{split}_text.txt", folder / f"{split}_labels.txt"
    texts, raw = _read(tpath), _read(lpath)
    if len(texts) != len(raw):
        raise DataError(
            f"{tpath} has {len(texts)} lines but {lpath} has {len(raw)}: line {min(len(texts), len(raw)) + 1} "
            "has no partner. Each text needs exactly one label."
        )
    labels = []
    for lineno, (t, lab) in enumerate(zip(texts, raw), 1):
        if strict and not t.strip():
            raise DataError(f"{tpath}:{lineno}: empty text. Fix: remove the line and its label in {lpath.name}.")
        if not lab.strip().isdecimal():  # int() would also read "1_0" as 10
            named = [i for i, n in enumerate(names) if _same(n) == _same(lab)]
            fix = f"its id, {named[0]}" if named else f"an id 0..{len(names) - 1}"
            raise DataError(f"{lpath}:{lineno}: label must be an integer id. Given: {lab[:40]!r}. Fix: {fix} "
                            f"({folder / 'mapping.txt'}).")
        y = int(lab.strip())
        if not 0 <= y < len(names):
            raise DataError(
                f"{lpath}:{lineno}: unknown label id {y}; {folder / 'mapping.txt'} has ids 0..{len(names) - 1}."
            )
        labels.append(y)
    return Labelled(texts, labels, names)


def read_task(root: Path, task: str, split: str, strict: bool = True) -> Labelled:
    folder = root / "tweeteval" / task
    return read_split(folder, split, read_mapping(folder / "mapping.txt"), strict)


def read_topics(root: Path, split: str, strict: bool = True) -> Labelled:
    """Stance tweets labelled by their target (topic id = position in the folders found),
    with the ``#SemST`` marker removed."""
    base = root / "tweeteval" / "stance"
    stance_names = read_mapping(base / "mapping.txt")
    folders = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))  # .ipynb_checkpoints
    if not folders:
        raise DataError(f"{base}: no stance/<target> folders.")
    texts, labels = [], []
    for i, name in enumerate(folders):
        part = read_split(base / name, split, stance_names, strict)
        texts += [STANCE_MARKER.sub("", t) for t in part.texts]
        labels += [i] * len(part)
    topics = [TOPICS.get(f, f) for f in folders]
    for i, t in enumerate(topics):
        if any(_same(t) == _same(u) for u in topics[:i]):
            first = folders[[_same(u) for u in topics].index(_same(t))]
            raise DataError(f"{base}: the stance folders {first!r} and {folders[i]!r} are both the topic {t!r}: a "
                            "post's negative pair would be its positive. Fix: merge them, or rename one.")
    return Labelled(texts, labels, topics)


def read_sts(path: Path, strict: bool = True) -> tuple[list[str], list[str], list[float]]:
    """STS-B CSV -> (sentences1, sentences2, scores 0..5)."""
    a, b, s = [], [], []
    with io.StringIO(read_text(_exists(path), DataError), newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 columns sentence1,sentence2,score. Given: {len(row)}.")
            try:
                score = float(row[2])
            except ValueError:
                if lineno == 1:
                    continue  # a header line
                raise DataError(f"{path}:{lineno}: score must be a number. Given: {row[2][:20]!r}.") from None
            if not 0.0 <= score <= 5.0:
                raise DataError(f"{path}:{lineno}: score must be in 0..5. Given: {score}.")
            if strict and not (row[0].strip() and row[1].strip()):
                raise DataError(f"{path}:{lineno}: empty sentence.")
            a.append(row[0])
            b.append(row[1])
            s.append(score)
    return a, b, s


def hashtags(text: str) -> list[str]:
    """Distinct hashtags of a post, lower-cased, without '#', in order of appearance."""
    seen: list[str] = []
    for h in HASHTAG.findall(text):
        h = h.lower()
        if h not in seen:
            seen.append(h)
    return seen


def strip_hashtag(text: str, tag: str) -> str:
    """The post with every hashtag that ``hashtags`` reads as ``tag`` removed (any case: ``#İstanbul``,
    whose lower case is longer, too), spaces tidied."""
    out = HASHTAG.sub(lambda m: " " if m.group(1).lower() == tag else m.group(0), text)
    return re.sub(r"\s+", " ", out).strip()


def hashtag_words(tag: str, cased: str | None = None) -> str:
    """Text for a hashtag: its camel-case words when the original spelling has them
    (``PopeFrancis`` -> ``Pope Francis``, ``CaféCrème`` -> ``Café Crème``), else the tag."""
    src = cased or tag
    # each character's class (A: upper case, a: lower case, a caseless letter or a mark, 0: digit), split
    # as r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+" splits ASCII, in any script
    shape = "".join("A" if c.isupper() else "0" if c.isdecimal() else "a" if c.isalpha() or c.islower()
                    or unicodedata.category(c).startswith("M") else " " for c in src)
    words = [src[m.start():m.end()] for m in re.finditer(r"A?a+|A+(?!a)|0+", shape)]
    return " ".join(words) if len(words) > 1 else tag
