"""Offline evaluation: one row per model, one column per metric, and the model's targets.

Metrics (embeddings always come from the runtime, ``Encoder.encode``, unit rows):

- ``auc_<task>``: ROC-AUC of cos(a, b) on held-out pairs built like the training pairs
  (``tasks.py``) from the *test* splits (STS: STS-B dev, score >= 4 vs <= 1);
- ``f1_<task>`` / ``knn_<task>`` for the zero-shot tasks (sentiment, hate, offensive):
  macro-F1 of a logistic-regression probe (class_weight='balanced'; its L2 strength C
  chosen per row and task by 5-fold cross-validated macro-F1 on the fit set, from
  ``EvalSpec.probe_cs``) fitted on frozen embeddings of the train split (sentiment: val,
  it has no train split), and accuracy of a cosine kNN (k = 10, majority vote) over the
  same fit set, both on test;
- ``sts_spearman``: Spearman (x100) of cosine vs gold score on all of STS-B dev;
- ``p10_emoji`` / ``p10_topic``: precision@10 of same-label neighbours among test posts.

The ``base-pca50`` row is the base's 384-d embeddings reduced by PCA (fitted on train
posts) and re-normalised: the dimension-matched baseline. With a teacher, rows ``teacher``
(its own dimension) and ``teacher-pca50`` are made the same way from the teacher's embeddings. Sizes and seeds: :class:`EvalSpec`.

Nested prefixes (Matryoshka): a model whose ``postemb.json`` declares ``matryoshka_dims`` gets
a row ``<name>@<k>`` for every declared prefix k (its first k components re-normalised, the
vector ``Encoder.encode(truncate_dim=k)`` serves: checked on a sample, ``eval_rows.embed_all``);
``prefixes`` adds rows ``<name>@<k>`` for a model that declares no such k: the control, a model
truncated without nested training (the serving side refuses that truncation, so the evaluation
slices and re-normalises itself, :func:`prefix_table`). Every prefix k also adds the row
``base-pca<k>`` (and ``teacher-pca<k>``): the base's top k principal axes (:func:`pca_tables`;
PCA is nested too, so one fit serves every k).

Held out: ``EvalSpec.drop_seen`` (default) drops every item a row was fitted on, counting them in
the report: test posts whose text (case and spaces ignored) is also in the multi-task train data
(pairs, hashtag posts, retrieval), STS-B dev pairs that are STS-B train pairs, and zero-shot test
posts also in the probe's fit set (TweetEval's hate test split repeats 236 of its train posts,
93 of them with the other label). STS-B has no test split here: ``--split val`` scores STS-B dev too.

Noise: every target comparison carries a paired bootstrap 95% interval of the difference
(the same held-out items resampled for both rows, :func:`paired_delta`), from the
per-item outputs kept in ``rows/<name>.npz`` (the rows and their cache:
:mod:`postemb_rt.train.eval_rows`). Rows named ``<name>-seed<N>`` are further
training seeds of ``<name>``: the report adds their mean and spread, and the targets
checked on the seed means.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import data as D
from . import tasks as T

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    """Subsample sizes (None = all) and the seed; recorded in the report."""

    seed: int = 0
    auc_anchors: int = 2000  # per task (each gives one positive and one negative pair); sts: all dev pairs
    zs_fit: int = 4000  # probe/kNN fit posts per zero-shot task
    zs_test: int = 4000  # test posts per zero-shot task
    retrieval_posts: int = 2000  # emoji test posts (topic: all test posts, 1,249)
    pca_posts: int = 2000  # train posts the base-PCA-50 baseline is fitted on
    pca_dim: int = 50
    knn_k: int = 10
    batch_size: int = 64
    probe_cs: tuple = (0.1, 1.0, 10.0, 100.0)  # the probe's C grid (5-fold CV on the fit set)
    # "test": the report. "val": for choosing a recipe without looking at test: pairs and
    # retrieval from the val splits, zero-shot probes scored on val (sentiment, which has no
    # train split, fits on one half of val and scores on the other); STS-B dev either way.
    split: str = "test"
    # drop held-out items the rows were fitted on (``build_eval_data``): posts (case and spaces
    # ignored) of the multi-task train data, STS-B dev pairs that are train pairs, zero-shot test
    # posts in the probe's fit set. False: every item, as every report committed before it was.
    drop_seen: bool = True

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


BOOTSTRAP = 1000  # resamples behind every interval in the report
PROBE_FOLDS = 5  # the probe's C is chosen by this many stratified folds of its fit set


def _sub(rng, n_total, n):
    idx = rng.permutation(n_total)
    return np.sort(idx[:n]) if n is not None else np.arange(n_total)


@dataclass
class EvalData:
    """Every text set the metrics need, built once (deterministic given the spec)."""

    pairs: dict  # task -> list[Pair]
    zs: dict  # task -> (fit texts, fit labels, test texts, test labels)
    sts: tuple  # (a, b, scores)
    retrieval: dict  # name -> (texts, labels)
    pca_posts: list
    dropped: dict = dataclasses.field(default_factory=dict)  # held-out items dropped as seen (spec.drop_seen)

    def texts(self) -> list[str]:
        out = set()
        for ps in self.pairs.values():
            for p in ps:
                out.update((p.a, p.b))
        for ft, _, tt, _ in self.zs.values():
            out.update(ft)
            out.update(tt)
        out.update(self.sts[0])
        out.update(self.sts[1])
        for t, _ in self.retrieval.values():
            out.update(t)
        return sorted(out)

    def texts_with_pca(self) -> list[str]:
        return sorted(set(self.texts()) | set(self.pca_posts))

    @cached_property
    def digest(self) -> str:
        """16 hex digits of a SHA-256 over every held-out item, label and fit text in order: the rows'
        cache key (``eval_rows``), so rows scored on other data (another root, an edited file) never serve."""
        parts = [{t: [(p.a, p.b, p.label) for p in ps] for t, ps in self.pairs.items()},
                 {t: [ft, fy.tolist(), tt, ty.tolist()] for t, (ft, fy, tt, ty) in self.zs.items()},
                 [self.sts[0], self.sts[1], np.asarray(self.sts[2]).tolist()],
                 {n: [t, np.asarray(y).tolist()] for n, (t, y) in self.retrieval.items()}, self.pca_posts]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def pair_labels(self) -> dict:
        """task -> the held-out pairs' labels as an array (built once; the bootstrap reads it
        thousands of times)."""
        return {t: np.array([p.label for p in ps]) for t, ps in self.pairs.items()}


def _part(ds: D.Labelled, idx) -> D.Labelled:
    return D.Labelled([ds.texts[j] for j in idx], [ds.labels[j] for j in idx], ds.names)


def _halves(ds: D.Labelled, seed: int) -> tuple[D.Labelled, D.Labelled]:
    idx = np.random.default_rng([seed, 60]).permutation(len(ds))
    return _part(ds, np.sort(idx[:len(ds) // 2])), _part(ds, np.sort(idx[len(ds) // 2:]))


def _key(text: str) -> str:
    """What makes two posts the same post: case and runs of spaces ignored."""
    return " ".join(text.casefold().split())


def _unseen(ds: D.Labelled, seen: set, what: str, dropped: dict) -> D.Labelled:
    """``ds`` without the posts whose ``_key`` is in ``seen``; their count goes to ``dropped[what]``."""
    keep = [i for i, t in enumerate(ds.texts) if _key(t) not in seen]
    dropped[what] = len(ds) - len(keep)
    if not keep:
        raise D.DataError(f"{what}: every held-out post is also in the data it is compared with. Fix: other "
                          "held-out data, or `postemb eval --keep-seen`.")
    return _part(ds, keep)


def build_eval_data(root: Path, spec: EvalSpec) -> EvalData:
    if spec.split not in ("test", "val"):
        raise ValueError(f"`split` must be 'test' or 'val'. Given: {spec.split!r}.")
    from .distill import general_posts

    sd, tr = T.load_split(root, spec.split), T.load_split(root, "train")
    dropped, seen_pairs = {}, set()
    if spec.drop_seen:  # what the trained rows were fitted on is not held out
        seen = {_key(t) for t in general_posts(tr)}
        sd.topic, sd.emoji, sd.emotion = (_unseen(getattr(sd, n), seen, n, dropped)
                                          for n in ("topic", "emoji", "emotion"))
        a, b, _ = D.read_sts(tr.sts_path, strict=False)
        seen_pairs = {k for x, y in zip(a, b) for k in ((_key(x), _key(y)), (_key(y), _key(x)))}
    pairs = {}
    for i, t in enumerate(T.TASKS):
        rng = np.random.default_rng([spec.seed, 10 + i])
        pairs[t] = T.build_task(sd, t).heldout(rng, None if t == "sts" else spec.auc_anchors)
    pairs["sts"] = [p for p in pairs["sts"] if (_key(p.a), _key(p.b)) not in seen_pairs]
    if {p.label for p in pairs["sts"]} != {0.0, 1.0}:
        raise D.DataError("stsb-en-dev.csv: no pair with score >= 4 or none with score <= 1 is left that is not also "
                          "an STS-B train pair. Fix: other held-out data, or `postemb eval --keep-seen`.")
    zs = {}
    for i, t in enumerate(T.ZERO_SHOT):
        has_train = (root / "tweeteval" / t / "train_text.txt").exists()
        if spec.split == "test" or has_train:
            fit = D.read_task(root, t, "train" if has_train else "val", strict=False)
            test = D.read_task(root, t, spec.split, strict=False)
        else:  # val, no train split: one half of val fits, the other scores
            fit, test = _halves(D.read_task(root, t, "val", strict=False), spec.seed)
        if spec.drop_seen:  # the probe and kNN are fitted on the fit posts
            test = _unseen(test, {_key(x) for x in fit.texts}, f"zero-shot {t}", dropped)
        rng = np.random.default_rng([spec.seed, 20 + i])
        fi, ti = _sub(rng, len(fit), spec.zs_fit), _sub(rng, len(test), spec.zs_test)
        _check_probe_fit(t, np.array(fit.labels)[fi], spec)
        zs[t] = ([fit.texts[j] for j in fi], np.array(fit.labels)[fi],
                 [test.texts[j] for j in ti], np.array(test.labels)[ti])
    a, b, s = D.read_sts(root / "stsb" / "stsb-en-dev.csv", strict=False)
    keep = [i for i, (x, y) in enumerate(zip(a, b)) if (_key(x), _key(y)) not in seen_pairs]
    if spec.drop_seen:
        dropped["sts pairs"] = len(a) - len(keep)
    a, b, s = [a[i] for i in keep], [b[i] for i in keep], [s[i] for i in keep]
    rng = np.random.default_rng([spec.seed, 30])
    ei = _sub(rng, len(sd.emoji), spec.retrieval_posts)
    retrieval = {"emoji": ([sd.emoji.texts[j] for j in ei], np.array(sd.emoji.labels)[ei]),
                 "topic": (list(sd.topic.texts), np.array(sd.topic.labels))}
    pool = tr.emoji.texts + tr.emotion.texts + tr.topic.texts
    rng = np.random.default_rng([spec.seed, 40])
    pca_posts = [pool[j] for j in _sub(rng, len(pool), spec.pca_posts)]
    return EvalData(pairs, zs, (a, b, np.array(s)), retrieval, pca_posts, dropped)


def _check_probe_fit(task: str, labels: np.ndarray, spec: EvalSpec) -> None:
    """Refuse, before any model is embedded, a probe fit set that its folds cannot split: fewer than 2
    labels, a label with 1 post (a fold would train on one label), or no label with ``PROBE_FOLDS`` posts."""
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2 or present.max() < PROBE_FOLDS:
        raise D.DataError(f"zero-shot `{task}`: the probe's fit set has {dict(enumerate(counts.tolist()))} posts per "
                          f"label ({len(labels)} posts, --zs-posts {spec.zs_fit}); its {PROBE_FOLDS}-fold "
                          f"cross-validation needs 2 labels, 2 posts of each and {PROBE_FOLDS} of one. Fix: a larger "
                          f"--zs-posts (default {EvalSpec.zs_fit}), or more labelled posts of {task}.")


def _auc(scores, labels) -> float:
    """ROC-AUC by the rank-sum (ties averaged): the same value as sklearn's roc_auc_score,
    fast enough to bootstrap."""
    from scipy.stats import rankdata

    labels = np.asarray(labels)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((rankdata(scores)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro_f1(y, pred) -> float:
    """Macro-F1 over the labels present in ``y`` or ``pred`` (sklearn's f1_score(average="macro"))."""
    labels = np.union1d(y, pred)
    tp = np.array([np.sum((y == c) & (pred == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((y != c) & (pred == c)) for c in labels], dtype=float)
    fn = np.array([np.sum((y == c) & (pred != c)) for c in labels], dtype=float)
    den = 2 * tp + fp + fn
    return float(np.mean(np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)))


def outputs(emb, data: EvalData, spec: EvalSpec) -> dict[str, np.ndarray]:
    """Per-item outputs every metric is computed from (and bootstrapped over): pair cosines
    ``pair_<task>``, probe and kNN predictions ``probe_<task>`` / ``knn_<task>`` on the
    test posts, STS-B dev cosines ``sts``, per-query same-label fraction ``p10_<name>``.
    ``emb``: callable list[str] -> float32 (n, d) unit rows (a lookup into precomputed ones)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    got = {}
    for t, ps in data.pairs.items():
        got[f"pair_{t}"] = (emb([p.a for p in ps]) * emb([p.b for p in ps])).sum(1)
    for t, (ft, fy, tt, ty) in data.zs.items():
        xf, xt = emb(ft), emb(tt)
        folds = StratifiedKFold(PROBE_FOLDS, shuffle=True, random_state=spec.seed)
        probe = lambda c: LogisticRegression(C=c, class_weight="balanced", max_iter=2000)  # noqa: E731
        cv = [cross_val_score(probe(c), xf, fy, cv=folds, scoring="f1_macro").mean() for c in spec.probe_cs]
        best = float(spec.probe_cs[int(np.argmax(cv))])
        got[f"probe_{t}"] = probe(best).fit(xf, fy).predict(xt)
        got[f"probe_c_{t}"] = np.array([best])
        nn_idx = np.argsort(-(xt @ xf.T), axis=1)[:, :spec.knn_k]
        got[f"knn_{t}"] = np.array([np.bincount(v, minlength=fy.max() + 1).argmax() for v in fy[nn_idx]])
    a, b, _ = data.sts
    got["sts"] = (emb(a) * emb(b)).sum(1)
    for name, (texts, labels) in data.retrieval.items():
        x = emb(texts)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        top = np.argsort(-sim, axis=1)[:, :10]
        got[f"p10_{name}"] = (labels[top] == labels[:, None]).mean(1)
    return got


def _metric(kind: str, task: str, out: np.ndarray, data: EvalData, idx=None) -> float:
    """One metric from per-item outputs, over items ``idx`` (None: all)."""
    from scipy.stats import spearmanr

    sel = slice(None) if idx is None else idx
    if kind == "auc":
        return _auc(out[sel], data.pair_labels[task][sel])
    if kind == "f1":
        ty = data.zs[task][3]
        return _macro_f1(ty[sel], out[sel])
    if kind == "knn":
        return float((out[sel] == data.zs[task][3][sel]).mean())
    if kind == "sts":
        return float(100 * spearmanr(out[sel], data.sts[2][sel]).statistic)
    if kind == "p10":
        return float(out[sel].mean())
    raise ValueError(kind)


# column prefix -> (metric kind, outputs key prefix)
_KINDS = {"auc": ("auc", "pair"), "f1": ("f1", "probe"), "knn": ("knn", "knn"), "p10": ("p10", "p10")}


def _source(col: str) -> tuple[str, str, str]:
    """column -> (kind, task, outputs key): ``auc_topic`` -> ("auc", "topic", "pair_topic")."""
    if col == "sts_spearman":
        return "sts", "", "sts"
    prefix, task = col.split("_", 1)
    kind, key = _KINDS[prefix]
    return kind, task, f"{key}_{task}"


COLUMNS = (["dim"] + [f"auc_{t}" for t in T.TASKS] + ["auc_mean"] + [f"f1_{t}" for t in T.ZERO_SHOT]
           + ["f1_zero_shot_mean"] + [f"knn_{t}" for t in T.ZERO_SHOT] + ["knn_zero_shot_mean", "sts_spearman",
                                                                          "p10_emoji", "p10_topic"])


def metrics_from(out: dict, data: EvalData) -> dict:
    row = {}
    for col in COLUMNS[1:]:
        if col.endswith("_mean"):
            continue
        kind, task, key = _source(col)
        row[col] = _metric(kind, task, out[key], data)
    row["auc_mean"] = float(np.mean([row[f"auc_{t}"] for t in data.pairs]))
    row["f1_zero_shot_mean"] = float(np.mean([row[f"f1_{t}"] for t in data.zs]))
    row["knn_zero_shot_mean"] = float(np.mean([row[f"knn_{t}"] for t in data.zs]))
    row["probe_c"] = {t: float(out[f"probe_c_{t}"][0]) for t in data.zs}
    return row


def paired_delta(items: list[tuple[str, dict, dict]], data: EvalData, n_boot: int = BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float, float]:
    """For ``items`` = [(column, outputs of x, outputs of y), ...]: the mean over items of
    (metric of x - metric of y), and its paired bootstrap 95% interval. Each column's
    held-out items are resampled with replacement (the same indices for x and y; AUC pairs
    within each label), independently per column, ``n_boot`` times."""
    rng = np.random.default_rng([seed, 50])
    point, reps = [], []
    for col, x, y in items:
        kind, task, key = _source(col)
        point.append(_metric(kind, task, x[key], data) - _metric(kind, task, y[key], data))
        if kind == "auc":
            lab = data.pair_labels[task]
            groups = [np.flatnonzero(lab == v) for v in (0.0, 1.0)]
        else:  # one output per held-out item
            groups = [np.arange(len(x[key]))]
        r = []
        for _ in range(n_boot):
            idx = np.concatenate([g[rng.integers(len(g), size=len(g))] for g in groups])
            r.append(_metric(kind, task, x[key], data, idx) - _metric(kind, task, y[key], data, idx))
        reps.append(r)
    reps = np.mean(np.array(reps), axis=0)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(np.mean(point)), float(lo), float(hi)


def _lookup(table):
    return lambda texts: np.stack([table[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)


def _unit_rows(y: np.ndarray) -> np.ndarray:
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def pca_tables(table: dict, fit_texts: list[str], dims) -> dict[int, dict]:
    """{k: table} for every k of ``dims``: each row projected onto the top k principal axes of
    the fit rows, re-normalised. One SVD for all k (the top k axes are the first k of the top
    max(dims)), so PCA-k is exactly PCA-max's first k coordinates re-normalised."""
    x = np.stack([table[t] for t in fit_texts]).astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    keys = list(table)
    y = (np.stack([table[k] for k in keys]) - mean) @ vt[:max(dims)].T
    return {k: dict(zip(keys, _unit_rows(y[:, :k]))) for k in dims}


def prefix_table(table: dict, k: int) -> dict:
    """Every row's first ``k`` components, re-normalised (float32 (k,) unit rows): a nested
    prefix, or the control's plain truncation of a model not trained for it."""
    keys = list(table)
    return dict(zip(keys, _unit_rows(np.stack([table[t] for t in keys])[:, :k].astype(np.float64))))
