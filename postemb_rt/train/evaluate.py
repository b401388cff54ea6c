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
vector ``Encoder.encode(truncate_dim=k)`` serves: checked on a sample, :func:`embed_all`);
``prefixes`` adds rows ``<name>@<k>`` for a model that declares no such k: the control, a model
truncated without nested training (the serving side refuses that truncation, so the evaluation
slices and re-normalises itself, :func:`prefix_table`). Every prefix k also adds the row
``base-pca<k>`` (and ``teacher-pca<k>``): the base's top k principal axes (:func:`pca_tables`;
PCA is nested too, so one fit serves every k).

Noise: every target comparison carries a paired bootstrap 95% interval of the difference
(the same held-out items resampled for both rows, :func:`paired_delta`), from the
per-item outputs kept in ``rows/<name>.npz``. Rows named ``<name>-seed<N>`` are further
training seeds of ``<name>``: the report adds their mean and spread, and the targets
checked on the seed means.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..durable import atomic_write
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

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


BOOTSTRAP = 1000  # resamples behind every interval in the report


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
    def pair_labels(self) -> dict:
        """task -> the held-out pairs' labels as an array (built once; the bootstrap reads it
        thousands of times)."""
        return {t: np.array([p.label for p in ps]) for t, ps in self.pairs.items()}


def _halves(ds: D.Labelled, seed: int) -> tuple[D.Labelled, D.Labelled]:
    idx = np.random.default_rng([seed, 60]).permutation(len(ds))
    part = lambda ix: D.Labelled([ds.texts[j] for j in ix], [ds.labels[j] for j in ix], ds.names)  # noqa: E731
    return part(np.sort(idx[:len(ds) // 2])), part(np.sort(idx[len(ds) // 2:]))


def build_eval_data(root: Path, spec: EvalSpec) -> EvalData:
    if spec.split not in ("test", "val"):
        raise ValueError(f"`split` must be 'test' or 'val'. Given: {spec.split!r}.")
    sd = T.load_split(root, spec.split)
    pairs = {}
    for i, t in enumerate(T.TASKS):
        rng = np.random.default_rng([spec.seed, 10 + i])
        pairs[t] = T.build_task(sd, t).heldout(rng, None if t == "sts" else spec.auc_anchors)
    zs = {}
    for i, t in enumerate(T.ZERO_SHOT):
        has_train = (root / "tweeteval" / t / "train_text.txt").exists()
        if spec.split == "test" or has_train:
            fit = D.read_task(root, t, "train" if has_train else "val", strict=False)
            test = D.read_task(root, t, spec.split, strict=False)
        else:  # val, no train split: one half of val fits, the other scores
            fit, test = _halves(D.read_task(root, t, "val", strict=False), spec.seed)
        rng = np.random.default_rng([spec.seed, 20 + i])
        fi, ti = _sub(rng, len(fit), spec.zs_fit), _sub(rng, len(test), spec.zs_test)
        zs[t] = ([fit.texts[j] for j in fi], np.array(fit.labels)[fi],
                 [test.texts[j] for j in ti], np.array(test.labels)[ti])
    a, b, s = D.read_sts(root / "stsb" / "stsb-en-dev.csv", strict=False)
    rng = np.random.default_rng([spec.seed, 30])
    ei = _sub(rng, len(sd.emoji), spec.retrieval_posts)
    retrieval = {"emoji": ([sd.emoji.texts[j] for j in ei], np.array(sd.emoji.labels)[ei]),
                 "topic": (list(sd.topic.texts), np.array(sd.topic.labels))}
    tr = T.load_split(root, "train")
    pool = tr.emoji.texts + tr.emotion.texts + tr.topic.texts
    rng = np.random.default_rng([spec.seed, 40])
    pca_posts = [pool[j] for j in _sub(rng, len(pool), spec.pca_posts)]
    return EvalData(pairs, zs, (a, b, np.array(s)), retrieval, pca_posts)


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
        folds = StratifiedKFold(5, shuffle=True, random_state=spec.seed)
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


PREFIX_CHECK_TEXTS = 32  # texts on which each declared prefix is checked against the served truncate_dim


def embed_all(model: str, texts: list[str], backend: str, spec: EvalSpec, declared=()) -> tuple[dict, dict]:
    """({text: row}, info) for every text, through the runtime. For each ``declared`` prefix k,
    the first texts are also encoded with ``truncate_dim=k``: the served vectors must be the
    evaluation's :func:`prefix_table` rows (|diff| <= 1e-5), so a prefix row scores what is served."""
    from ..encoder import Encoder

    enc = Encoder.from_pretrained(model, backend=backend, device="cpu")
    t0 = time.perf_counter()
    x = enc.encode(texts, batch_size=spec.batch_size)
    info = {"model_version": enc.model_version, "dim": enc.dim, "backend": enc.backend.name,
            "embed_seconds": round(time.perf_counter() - t0, 1), "texts": len(texts)}
    table = dict(zip(texts, x))
    sample = texts[:PREFIX_CHECK_TEXTS]
    for k in declared:
        served = enc.encode(sample, batch_size=spec.batch_size, truncate_dim=k)
        ours = np.stack([r for r in prefix_table({t: table[t] for t in sample}, k).values()])
        if served.shape != ours.shape or not np.allclose(served, ours, atol=1e-5):
            raise RuntimeError(f"{model}: encode(truncate_dim={k}) differs from the first {k} components "
                               "re-normalised; the prefix rows would not score what is served.")
    enc.close()
    return table, info


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


def pca_dims(spec: "EvalSpec", prefixes) -> list[int]:
    """The base-PCA (and teacher-PCA) rows to make: ``spec.pca_dim`` and every prefix, descending."""
    return sorted({spec.pca_dim, *prefixes}, reverse=True)


def model_prefixes(name: str, model: str, prefixes=()) -> tuple[list[int], list[int]]:
    """(every prefix k to evaluate for ``model``, descending; the ones it declares in its
    ``postemb.json`` ``matryoshka_dims``). ``prefixes`` (``postemb eval --prefixes``) adds the
    control rows: each must be below the model's dim."""
    from ..errors import ValidationError
    from ..model_dir import resolve

    cfg = resolve(model).config
    declared = sorted(cfg.matryoshka_dims or (), reverse=True)
    bad = [k for k in prefixes if not 0 < k < cfg.dim]
    if bad:
        raise ValidationError(f"`--prefixes` must be between 1 and the dim of every --model minus 1; `{name}` is "
                              f"{cfg.dim}-d. Given: {bad}. Fix: drop them, or leave that model out.")
    return sorted({*declared, *prefixes}, reverse=True), declared


def model_meta(model: str) -> dict:
    """Training time, trained parameters and artefact size from the model directory, if trained here."""
    from ..model_dir import resolve
    from .trainer import SUMMARY_FILE

    md = resolve(model)
    p = md.path / SUMMARY_FILE
    if not p.exists():
        return {}
    s = json.loads(p.read_text())
    return {k: s.get(k) for k in ("train_seconds", "trained_parameters", "artefact_bytes", "pairs_seen")}


def throughput(model: str, backend: str, posts: list[str], repeats: int = 2) -> dict:
    """posts/s of ``model`` and of the base through the runtime, same backend, same posts;
    best of ``repeats`` after a warm-up, interleaved so both see the same machine load."""
    from ..encoder import Encoder

    encs = {"model": Encoder.from_pretrained(model, backend=backend, device="cpu"),
            "base": Encoder.from_pretrained("base", backend=backend, device="cpu")}
    best = {k: 0.0 for k in encs}
    for e in encs.values():
        e.encode(posts[:64])
    for _ in range(repeats):
        for k, e in encs.items():
            t0 = time.perf_counter()
            e.encode(posts)
            best[k] = max(best[k], len(posts) / (time.perf_counter() - t0))
    out = {"posts": len(posts), "backend": encs["model"].backend.name,
           "model_posts_per_s": round(best["model"], 1), "base_posts_per_s": round(best["base"], 1),
           "model_dim": encs["model"].dim, "base_dim": encs["base"].dim}
    for e in encs.values():
        e.close()
    return out


def _save_outputs(path: Path, out: dict) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **out))


def _cached_rows(rows_dir: Path, cache: Path, names: list[str], key: str) -> tuple[dict, dict] | None:
    """(rows, per-item outputs of ``names``) from ``cache`` and ``rows_dir/<name>.npz`` if
    all exist and the cache was written under ``key``; else None."""
    if not (cache.exists() and all((rows_dir / f"{n}.npz").exists() for n in names)):
        return None
    cached = json.loads(cache.read_text())
    if cached.get("key") != key:
        return None
    outs = {}
    for n in names:
        with np.load(rows_dir / f"{n}.npz") as z:
            outs[n] = dict(z)
    return cached["rows"], outs


def _teacher_rows(teacher: str, data: EvalData, spec: EvalSpec, rows_dir: Path, progress,
                  dims=None) -> tuple[dict, dict]:
    """Rows ``teacher`` (its own dim) and ``teacher-pca<k>`` for each k of ``dims`` (default
    ``spec.pca_dim``; PCA fitted on the same train posts as base-pca<k>), embedded by the
    teacher's embedder (``teacher.embed_cached``)."""
    from . import teacher as TT

    dims = dims or [spec.pca_dim]
    key = f"{TT.fingerprint(TT.resolve(teacher))}-{spec.key()}-pca{dims}"
    cache = rows_dir / "teacher.json"
    names = ["teacher"] + [f"teacher-pca{k}" for k in dims]
    hit = _cached_rows(rows_dir, cache, names, key)
    if hit is not None:
        progress("teacher: cached")
        return hit
    texts = data.texts_with_pca()
    x, info = TT.embed_cached(teacher, texts, progress=progress)
    table = dict(zip(texts, x))
    outs = {"teacher": outputs(_lookup(table), data, spec)}
    for k, t in pca_tables(table, data.pca_posts, dims).items():
        outs[f"teacher-pca{k}"] = outputs(_lookup(t), data, spec)
    meta = {"model_version": teacher, "backend": "sentence-transformers (bf16 matmuls)",
            "embed_seconds": info["seconds"], "texts": len(texts)}
    rows = {"teacher": {**meta, "dim": info["dim"], **metrics_from(outs["teacher"], data)}}
    rows.update({f"teacher-pca{k}": {**meta, "dim": k, **metrics_from(outs[f"teacher-pca{k}"], data)} for k in dims})
    for n, o in outs.items():
        _save_outputs(rows_dir / f"{n}.npz", o)
    cache.write_text(json.dumps({"key": key, "rows": rows}, indent=2) + "\n")
    return rows, outs


def evaluate_rows(models: list[tuple[str, str]], root: Path, out: Path, spec: EvalSpec, backend: str = "auto",
                  baselines: bool = True, progress=print, teacher: str | None = None,
                  prefixes=()) -> tuple[dict, dict, EvalData]:
    """(rows, per-item outputs, the evaluation data) for base and base-pca<k> (if ``baselines``),
    teacher and teacher-pca<k> (if ``teacher``) and each (name, model), with ``<name>@<k>``
    for every prefix k the model declares or ``prefixes`` asks for (see the module docstring);
    each model's rows are cached in ``out/rows/<name>.json`` (+ ``.npz``, per-item outputs)
    keyed by the model fingerprint, the spec and its prefixes."""
    from ..model_dir import resolve

    plan = {name: model_prefixes(name, model, prefixes) for name, model in models}
    dims = pca_dims(spec, [k for ks, _ in plan.values() for k in ks])
    data = build_eval_data(root, spec)
    texts = data.texts()
    progress(f"evaluation texts: {len(texts)} unique")
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    todo = ([("base", "base")] if baselines else []) + list(models)
    rows, outs = {}, {}
    for name, model in todo:
        with_pca = name == "base" and baselines
        ks, declared = ([], []) if with_pca else plan[name]
        names = [name] + ([f"base-pca{k}" for k in dims] if with_pca else [f"{name}@{k}" for k in ks])
        key = f"{resolve(model).fingerprint}-{spec.key()}-{root}-{names}"
        cache = rows_dir / f"{name}.json"
        hit = _cached_rows(rows_dir, cache, names, key)
        if hit is not None:
            rows.update(hit[0])
            outs.update(hit[1])
            progress(f"{name}: cached")
            continue
        t0 = time.perf_counter()
        need = data.texts_with_pca() if with_pca else texts
        table, info = embed_all(model, need, backend, spec, declared)
        got_out = {name: outputs(_lookup(table), data, spec)}
        got = {name: {**info, **model_meta(model), **metrics_from(got_out[name], data)}}
        derived = pca_tables(table, data.pca_posts, dims) if with_pca else {k: prefix_table(table, k) for k in ks}
        for k, t in derived.items():
            n = f"base-pca{k}" if with_pca else f"{name}@{k}"
            got_out[n] = outputs(_lookup(t), data, spec)
            # prefix rows: "nested" true for a prefix the model was trained for, false for the control
            extra = {} if with_pca else {"prefix_of": name, "nested": k in declared}
            got[n] = {**info, "dim": k, **extra, **metrics_from(got_out[n], data)}
        for n, o in got_out.items():
            _save_outputs(rows_dir / f"{n}.npz", o)
        cache.write_text(json.dumps({"key": key, "rows": got}, indent=2) + "\n")
        rows.update(got)
        outs.update(got_out)
        progress(f"{names}: done in {time.perf_counter() - t0:.0f}s (embed {info['embed_seconds']}s)")
    if teacher:
        got, got_out = _teacher_rows(teacher, data, spec, rows_dir, progress, dims)
        rows.update(got)
        outs.update(got_out)
    return rows, outs, data
